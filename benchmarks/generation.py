"""Benchmark (not a test): completion tokens/s of `distilforge generate` vs a raw async openai loop.

Same server, same prompts (rendered by curation.formats exactly as distilabel sends them), same
request kwargs, same concurrency, in one process: raw → distilforge → raw, and the ratio is taken
against the mean of the two raw runs so drift in machine load is shared. Temperature 0 by
default so both sides produce the same answers (same work). distilforge's time includes its
pipeline start-up (~3 s): that is the real overhead a user pays, amortized over the requests.

    python benchmarks/generation.py [--requests 16] [--concurrency 1] [--max-tokens 64] [--model M]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_spec(n: int, concurrency: int, max_tokens: int, temperature: float, model: str):
    from distilforge.spec import load_spec

    spec = load_spec(REPO / "examples" / "banking77" / "task.yaml")
    per_label = max(1, -(-n // len(spec.labels)))
    upd = {"teacher": spec.teacher.model_copy(update={"model": model, "max_tokens": max_tokens,
                                                       "temperature": temperature}),
           "generation": spec.generation.model_copy(update={"per_label": per_label, "concurrency": concurrency,
                                                             "shard_size": max(concurrency, 4), "invalid_retries": 0})}
    return spec.model_copy(update=upd)


async def raw_loop(spec, endpoint, reqs: list[dict], concurrency: int) -> tuple[int, float]:
    from openai import AsyncOpenAI

    from curation import formats

    tname = formats.template_name(spec)
    kw = formats.extra_body(formats.structured_mode(spec.teacher, endpoint.kind), formats.response_schema(spec))
    client = AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key.reveal(), max_retries=spec.teacher.max_retries,
                         timeout=spec.teacher.timeout_s)
    sem = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(r):
        nonlocal tokens
        async with sem:
            resp = await client.chat.completions.create(model=endpoint.model, messages=formats.messages(tname, r),
                                                        temperature=spec.teacher.temperature,
                                                        max_tokens=spec.teacher.max_tokens, **kw)
            tokens += resp.usage.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(one(r) for r in reqs))
    return tokens, time.perf_counter() - t0


def distilforge_run(spec, endpoint) -> tuple[int, float]:
    from curation.generation import budget
    from curation.generation.generate import generate

    out = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    t0 = time.perf_counter()
    stats = generate(spec, endpoint, out)
    dt = time.perf_counter() - t0
    assert stats["pending_shards"] == 0, stats
    return budget.spent(out)["completion_tokens"], dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    a = ap.parse_args()

    from curation.generation.generate import plan_all
    from distilforge.teacher import Endpoint, serve, stop
    from distilforge.secrets import Secret

    st = serve(a.model)
    ep = Endpoint(st["base_url"], a.model, Secret("embedded"), "embedded")
    try:
        spec = make_spec(a.requests, a.concurrency, a.max_tokens, a.temperature, a.model)
        reqs = plan_all(spec, Path(tempfile.mkdtemp()))[0]
        asyncio.run(raw_loop(spec, ep, reqs[:1], 1))  # warm the server (model load, caches)
        runs = []
        for name in ("raw", "distilforge", "raw"):
            tok, dt = asyncio.run(raw_loop(spec, ep, reqs, a.concurrency)) if name == "raw" else distilforge_run(spec, ep)
            runs.append((name, tok, dt))
            print(f"{name:12s} {len(reqs)} requests  {tok:6d} completion tokens  {dt:7.1f} s  {tok / dt:6.2f} tok/s",
                  flush=True)
        raw = sum(t / d for n, t, d in runs if n == "raw") / 2
        df = runs[1][1] / runs[1][2]
        print(f"ratio distilforge / raw = {df / raw:.3f} (goal >= 0.90); distilforge rows/s = "
              f"{len(reqs) / runs[1][2]:.3f}; concurrency {a.concurrency}, max_tokens {a.max_tokens}, "
              f"temperature {a.temperature}, model {a.model}")
    finally:
        if not st.get("reused"):
            stop(a.model)


if __name__ == "__main__":
    main()
