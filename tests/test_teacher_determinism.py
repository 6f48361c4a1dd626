"""The embedded teacher's answer depends on the request alone, not on what it served before.

llama-cpp-python reuses the KV cache of the longest prefix shared with the previous request and
reads the rest as one batch; a different batch split rounds differently and can flip a greedy
token. distilforge/llama_server.py reads prompts in fixed blocks instead. Here each generation-style
prompt is asked twice at temperature 0 on the same server: once right after its neighbour (which
shares the system prompt and the start of the user turn, so most of it is reused) and once after
an unrelated request (nothing reused, read from position 0). Unpatched, 2 of these 8 answers differ
between the two (measured on the 0.5B teacher); block-aligned reuse makes them identical.
"""
from __future__ import annotations

from openai import OpenAI

SYSTEM = ("You write realistic customer messages for a bank's support chat. Intents: activate_my_card, "
          "lost_or_stolen_card, card_arrival, declined_card_payment, card_payment_fee_charged, exchange_rate, "
          "transfer_not_received_by_recipient, top_up_failed, pin_blocked, balance_not_updated_after_bank_transfer. "
          "Write one message only, in the customer's voice, no greeting line.")
INTENTS = ["activate_my_card", "lost_or_stolen_card", "card_arrival", "declined_card_payment", "exchange_rate",
           "top_up_failed", "pin_blocked", "card_payment_fee_charged"]


def test_an_answer_does_not_depend_on_the_previous_request(fast_teacher):
    client = OpenAI(base_url=fast_teacher["base_url"], api_key="-")

    def ask(messages, max_tokens=48):
        r = client.chat.completions.create(model=fast_teacher["model"], messages=messages, temperature=0,
                                           max_tokens=max_tokens, seed=0)
        return r.choices[0].message.content

    prompts = [[{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Write message number {i} whose intent is {t}. Vary the wording and length."}]
               for i, t in enumerate(INTENTS)]
    after_neighbour = [ask(p) for p in prompts]
    read_whole = []
    for p in prompts:
        ask([{"role": "user", "content": "Say ok."}], max_tokens=1)  # shares no block with p
        read_whole.append(ask(p))
    assert all(a.strip() for a in after_neighbour)
    assert after_neighbour == read_whole
