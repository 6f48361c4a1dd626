"""Money and tokens: the price table, the spend ledger, the budget caps and the dry-run forecast.

The ledger (`RUN/generate/ledger.jsonl`, one line per finished shard, committed or not) is what
caps are checked against: it counts tokens spent on shards that were NOT committed too (a shard
with a transport failure still paid for its other requests), so `--max-cost` bounds real money,
cumulatively over reruns of the same run dir. A rerun with a higher cap continues where the last
one stopped because committed shards are skipped. Tokens in flight when a run is killed are the
only spend the ledger cannot see.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from distilforge.secrets import reveal
from heldout.formats import task_format

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec
    from distilforge.teacher import Endpoint

console = Console(stderr=True)

# USD per 1M tokens (input, output), list prices as published by the providers (2025); override
# per spec with teacher.price_in_per_m / price_out_per_m. Local servers cost nothing per token.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60), "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40), "o4-mini": (1.10, 4.40), "gpt-3.5-turbo": (0.50, 1.50),
    "claude-3-5-haiku": (0.80, 4.00), "claude-3-5-sonnet": (3.00, 15.00),
    "qwen2.5-coder-1.5b": (0.0, 0.0), "qwen2.5-coder-0.5b": (0.0, 0.0), "smollm2-135m": (0.0, 0.0),
}


def prices(spec: TaskSpec, warn: bool = False) -> tuple[float, float]:
    """(input, output) USD per 1M tokens: the spec's override, else the table, else 0."""
    t = spec.teacher
    base = PRICES.get(t.model)
    if base is None:  # "gpt-4o-mini-2024-07-18" → "gpt-4o-mini"
        base = next((v for k, v in sorted(PRICES.items(), key=lambda kv: -len(kv[0])) if t.model.startswith(k)), None)
    if base is None and t.endpoint == "embedded":
        base = (0.0, 0.0)
    if base is None and (t.price_in_per_m is None or t.price_out_per_m is None) and warn:
        console.print(f"[yellow]no price known for model '{t.model}': cost counted as 0 "
                      "(set teacher.price_in_per_m / price_out_per_m)[/]")
    base = base or (0.0, 0.0)
    return (t.price_in_per_m if t.price_in_per_m is not None else base[0],
            t.price_out_per_m if t.price_out_per_m is not None else base[1])


def cost(prompt_tokens: float, completion_tokens: float, price: tuple[float, float]) -> float:
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


def ledger_path(out_dir: Path) -> Path:
    return Path(out_dir) / "ledger.jsonl"


def record(out_dir: Path, entry: dict) -> None:
    """Append one finished shard to the ledger (one write of one line, fsynced)."""
    p = ledger_path(out_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
        f.write(json.dumps({**entry, "t": round(time.time(), 3)}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_ledger(out_dir: Path) -> list[dict]:
    p = ledger_path(out_dir)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by kill -9
            continue
    return out


def spent(out_dir: Path) -> dict:
    led = read_ledger(out_dir)
    p = sum(e.get("prompt_tokens", 0) for e in led)
    c = sum(e.get("completion_tokens", 0) for e in led)
    return {"prompt_tokens": p, "completion_tokens": c, "tokens": p + c,
            "cost_usd": round(sum(e.get("cost_usd", 0.0) for e in led), 6),
            "requests": sum(e.get("requests", 0) for e in led)}


def cap_reached(out_dir: Path, max_cost: float | None, max_tokens: int | None, next_cost: float = 0.0,
                next_tokens: float = 0.0) -> str | None:
    """Which cap (if any) the spend so far plus the next shard's estimate would pass."""
    if max_cost is None and max_tokens is None:
        return None
    s = spent(out_dir)
    if max_tokens is not None and s["tokens"] + next_tokens > max_tokens:
        return "max_tokens"
    if max_cost is not None and s["cost_usd"] + next_cost > max_cost:
        return "max_cost"
    return None


# --- forecast -----------------------------------------------------------------------------

CHARS_PER_TOKEN = 3.6
PER_MESSAGE_TOKENS = 6  # chat template overhead per message


def _chars(msgs: list[dict]) -> int:
    return sum(len(m["content"]) for m in msgs)


def calibrate(spec: TaskSpec, endpoint: Endpoint, reqs: list[dict], k: int) -> dict | None:
    """Send `k` of the planned requests for real (same messages and kwargs) and measure tokens."""
    if k <= 0 or not reqs:
        return None
    from openai import OpenAI

    from curation import formats

    batched = "n_messages" in reqs[0]  # batch requests (generation.inputs_per_request > 1)
    tname = formats.batch_template_name(spec) if batched else formats.template_name(spec)
    kw = formats.batch_extra_body(spec, endpoint.kind) if batched else formats.generation_extra_body(spec, endpoint.kind)
    max_tokens = spec.teacher.max_tokens * (spec.generation.inputs_per_request if batched else 1) + (16 if batched else 0)
    client = OpenAI(base_url=endpoint.base_url, api_key=reveal(endpoint.api_key), max_retries=spec.teacher.max_retries,
                    timeout=spec.teacher.timeout_s)
    p_tok = c_tok = chars = fails = 0
    t0 = time.time()
    picked = reqs[:: max(1, len(reqs) // k)][:k]
    for r in picked:
        msgs = formats.messages(tname, r)
        resp = client.chat.completions.create(model=endpoint.model, messages=msgs, temperature=spec.teacher.temperature,
                                              max_tokens=max_tokens, **kw)
        p_tok += resp.usage.prompt_tokens
        c_tok += resp.usage.completion_tokens
        chars += _chars(msgs)
        args = (resp.choices[0].message.content, resp.choices[0].finish_reason)
        if batched:  # the share of asked messages that did not come back usable
            got = formats.parse_batch(spec, args[0], r["n_messages"], args[1], resp.usage.completion_tokens)
            fails += sum(f is None for f, _ in got) / len(got)
        else:
            ok, _ = formats.parse(spec, *args, resp.usage.completion_tokens)
            fails += ok is None
    n = len(picked)
    return {"requests": n, "tokens_per_char": p_tok / max(chars, 1), "completion_mean": c_tok / n,
            "fail_rate": fails / n, "prompt_tokens": p_tok, "completion_tokens": c_tok,
            "seconds": round(time.time() - t0, 2)}


def forecast(spec: TaskSpec, endpoint: Endpoint, base: list[dict], evolve: list[dict], done: set[str], k: int = 3) -> dict:
    """Requests, tokens and cost still to spend (uncommitted shards), per phase and in total."""
    from curation import formats

    tname = formats.template_name(spec)
    todo = [r for r in base if r["shard_id"] not in done]
    rows = len(todo)
    btname = formats.batch_template_name(spec)
    if btname and todo:  # one request per batch of inputs_per_request rows
        from curation.generation.plan import batch_requests

        todo = batch_requests(spec, todo)
    per = rows / len(todo) if todo else 1.0  # rows per base request
    cal = calibrate(spec, endpoint, todo, k)
    ratio = cal["tokens_per_char"] if cal else 1 / CHARS_PER_TOKEN
    comp1 = (cal["completion_mean"] / per) if cal else task_format(spec).completion_guess * spec.teacher.max_tokens  # per row
    comp = comp1 * per  # per base request
    retry = 1 + (cal["fail_rate"] if cal else 0.05) * spec.generation.invalid_retries
    over = 0 if cal else PER_MESSAGE_TOKENS

    def est(msgs_chars: float, n_msgs: int = 2) -> float:
        return msgs_chars * ratio + over * n_msgs

    phases = {"base": {"requests": round(len(todo) * retry),
                       "prompt_tokens": retry * sum(est(_chars(formats.messages(btname or tname, r))) for r in todo),
                       "completion_tokens": retry * comp * len(todo)}}
    comp = comp1  # per row: evolve rows are asked one by one, preference candidates are per row
    ev_todo = [r for r in evolve if r["shard_id"] not in done]
    if ev_todo:
        text_chars = comp * 0.8 / ratio  # a parent message is most of its JSON answer
        sample = formats.messages(tname, {**ev_todo[0], "parent_text": "x" * int(text_chars)})
        phases["evolve"] = {"requests": round(len(ev_todo) * retry), "prompt_tokens": retry * len(ev_todo) * est(_chars(sample)),
                            "completion_tokens": retry * comp * len(ev_todo)}
    pr = spec.generation.preferences
    if pr.enabled:
        rows = rows + len(ev_todo)
        rows = min(rows, pr.max_rows) if pr.max_rows else rows
        text_tok = comp * 0.8
        ans_tok = task_format(spec).answer_tokens_guess(comp)
        judge = "yesno" if pr.judge == "yesno" or (pr.judge == "auto" and endpoint.kind == "embedded") else "rubric"
        n = rows * pr.candidates
        sys_tok = len(spec.system_prompt()) * ratio
        jt = formats.template_text(f"judge_{judge}_v1")
        phases["preferences"] = {
            "requests": 2 * n,
            "prompt_tokens": n * (sys_tok + text_tok + over * 2) + n * (len(jt) * ratio + len(spec.instruction) * ratio
                                                                         + text_tok + ans_tok + over * 2),
            "completion_tokens": n * ans_tok + n * (2 if judge == "yesno" else 60)}
    price = prices(spec)
    total = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for ph in phases.values():
        for key in ("prompt_tokens", "completion_tokens"):
            ph[key] = int(round(ph[key]))
        ph["cost_usd"] = round(cost(ph["prompt_tokens"], ph["completion_tokens"], price), 6)
        for key in total:
            total[key] += ph[key]
    total["tokens"] = total["prompt_tokens"] + total["completion_tokens"]
    total["cost_usd"] = round(cost(total["prompt_tokens"], total["completion_tokens"], price), 6)
    return {"method": f"calibrated on {cal['requests']} real request(s)" if cal else "estimated from prompt length",
            "calibration": cal, "price_per_m": {"input": price[0], "output": price[1]}, "phases": phases,
            "total": total, "planned_requests": len(base) + len(evolve), "committed_shards": len(done)}
