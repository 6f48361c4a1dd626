"""Free-text answers for scoring: a local model's greedy replies, and the teacher's through its
endpoint(s). Classification is scored by label likelihood (heldout/evaluate.py) and needs neither;
extraction and instruction are scored on what a model actually writes, so they need both.

Local models decode greedily with no grammar, so JSON validity is measured as the student would
serve it. The teacher is asked one request per row, one thread per server (replicas), answers in
input order; any failure after the client's retries stops the scoring with the row it stopped at.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

from distilforge.errors import RuntimeFailure
from distilforge.secrets import reveal

if TYPE_CHECKING:
    from distilforge.teacher import Endpoint


def json_object_done(text: str) -> bool:
    """True once `text` holds a complete top-level JSON object (braces balanced outside strings):
    what an extraction answer is; anything after it is never read by the scorer."""
    depth, in_str, esc, started = 0, False, False, False
    for ch in text:
        if in_str:
            esc, in_str = (False, in_str) if esc else (ch == "\\", ch != '"')
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth, started = depth + 1, True
        elif ch == "}" and started:
            depth -= 1
            if depth == 0:
                return True
    return False


def generate_local(model_path: str, adapter: str | None, prompts: list[list[dict]], max_new_tokens: int,
                   desc: str = "generating", batch_size: int = 8, done: Callable[[str], bool] | None = None) -> list[str]:
    """Greedy replies of a local HF model (+ optional LoRA adapter, merged) to chat `prompts`.

    Rows are sorted by length and batched with left padding, so a batch wastes little on padding;
    replies come back in input order. fp32 on CPU (bf16 would change greedy choices across devices).
    `done(text so far)`: a row stops as soon as it is true (e.g. `json_object_done`); an untrained
    base model otherwise writes to `max_new_tokens` after its answer, most of an eval's time."""
    import torch
    from transformers import AutoModelForCausalLM

    from distilforge.models import load_tokenizer
    from heldout.progress import progress

    tok = load_tokenizer(adapter or model_path)
    tok.padding_side = "left"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.to(dev).eval()
    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    with torch.inference_mode(), progress(desc, len(texts)) as bar:
        for b0 in range(0, len(order), batch_size):
            idx = order[b0:b0 + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            stop = _Done(tok, enc["input_ids"].shape[1], done) if done else None
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 **({"stopping_criteria": [stop]} if stop else {}))
            for i, row in zip(idx, gen[:, enc["input_ids"].shape[1]:]):
                out[i] = tok.decode(row, skip_special_tokens=True).strip()
            bar.advance(len(idx))
    return out


class _Done:
    """A per-row stopping criterion for `model.generate`: a row is finished once `done` holds for the
    text it has written (checked every few tokens: decoding each step would cost more than it saves)."""

    def __init__(self, tok, prompt_len: int, done: Callable[[str], bool], every: int = 4):
        self.tok, self.prompt_len, self.done, self.every, self.step = tok, prompt_len, done, every, 0
        self.finished = None

    def __call__(self, input_ids, scores, **kw):
        import torch

        self.step += 1
        if self.finished is None:
            self.finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.step % self.every == 0:
            for i, row in enumerate(input_ids[:, self.prompt_len:]):
                if not self.finished[i] and self.done(self.tok.decode(row, skip_special_tokens=True)):
                    self.finished[i] = True
        return self.finished.clone()


Ask = Callable[[object, list[dict]], tuple[str, object]]  # (client, messages) -> (answer text, usage)


def ask_teacher(endpoint: Endpoint, messages: list[list[dict]], *, max_tokens: int, temperature: float = 0.0,
                response_format: dict | None = None, timeout: float = 120, max_retries: int = 4,
                desc: str = "asking the teacher", ask: Callable | None = None) -> tuple[list[str], dict]:
    """The teacher's answer to each message list, in order, and the tokens spent.

    `ask(request, messages) -> (answer, [usage, ...])` may replace the single request per row (e.g.
    to re-ask an unusable answer under a grammar); `request(messages, response_format)` is given to
    it. Server k answers rows k, k+n, ... so each server's prompt cache stays warm."""
    from openai import OpenAI

    from heldout.progress import progress

    urls = list(getattr(endpoint, "base_urls", None) or [endpoint.base_url])
    clients = [OpenAI(base_url=u, api_key=reveal(endpoint.api_key), timeout=timeout, max_retries=max_retries)
               for u in urls]
    answers: list[str] = [""] * len(messages)
    tok, asked = [0, 0], [0]
    lock = threading.Lock()
    t0 = time.time()

    def request_with(client):
        def request(msgs: list[dict], fmt: dict | None = response_format):
            kw = {"extra_body": {"response_format": fmt}} if fmt else {}
            r = client.chat.completions.create(model=endpoint.model, temperature=temperature, max_tokens=max_tokens,
                                               messages=msgs, **kw)
            if not getattr(r, "choices", None):  # an error body behind a 200 (some proxies): say what came back
                raise RuntimeFailure(f"teacher at {endpoint.base_url} answered without choices: {str(r)[:200]}")
            return r.choices[0].message.content or "", r.usage
        return request

    def one(request, msgs: list[dict]) -> tuple[str, list]:
        raw, usage = request(msgs)
        return raw, [usage]

    with progress(desc, len(messages)) as bar:

        def worker(k: int) -> None:
            request = request_with(clients[k])
            for i in range(k, len(messages), len(clients)):
                answers[i], usages = (ask or one)(request, messages[i])
                with lock:
                    for usage in usages:
                        if usage:
                            tok[0] += usage.prompt_tokens
                            tok[1] += usage.completion_tokens
                    asked[0] += len(usages)
                    bar.advance()

        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            for f in [pool.submit(worker, k) for k in range(len(clients))]:
                f.result()
    return answers, {"prompt": tok[0], "completion": tok[1], "calls": len(messages), "requests": asked[0],
                     "servers": len(clients), "seconds": round(time.time() - t0, 2)}
