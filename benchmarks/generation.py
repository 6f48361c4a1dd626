"""Benchmark (not a test): completion tokens/s of `distilforge generate` vs a raw async openai loop.

Same server, same prompts (rendered by curation.formats exactly as distilabel sends them), same
request kwargs, same concurrency, in one process: raw → distilforge → raw, and the ratio is taken
against the mean of the two raw runs so drift in machine load is shared. Temperature 0 by
default so both sides produce the same answers (same work). distilforge's time includes its
pipeline start-up (~3 s): that is the real overhead a user pays, amortized over the requests.

    python benchmarks/generation.py [--requests 16] [--concurrency 1] [--max-tokens 64] [--model M]

`--compare-k 1,4,8` measures `generation.inputs_per_request` instead: the banking77 spec cut to
`--labels` labels x `--per-label` rows, generated once per k (fresh run dir each, the spec's own
temperature), and reports per k: ok rows, the valid-row rate, teacher seconds (the sum of request
latencies: what the server spent, whatever else the box runs), ok rows that are not a near-duplicate
(word-bigram Jaccard >= 0.7) of an earlier row of the same label, those per teacher second, and the
within-batch near-duplicate share. Results: benchmarks/results/generation_batch.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
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


def batch_spec(k: int, labels: int, per_label: int, model: str):
    from distilforge.spec import load_spec

    spec = load_spec(REPO / "examples" / "banking77" / "task.yaml")
    upd = {"labels": spec.labels[:labels], "teacher": spec.teacher.model_copy(update={"model": model, "replicas": 1}),
           "generation": spec.generation.model_copy(update={"per_label": per_label, "inputs_per_request": k,
                                                             "shard_size": max(k, 8), "concurrency": 1})}
    return spec.model_copy(update=upd)


def measure_k(k: int, labels: int, per_label: int, model: str, endpoint) -> dict:
    import datasets

    from curation.generation.batched import near_duplicates
    from curation.generation.generate import collect, generate

    spec = batch_spec(k, labels, per_label, model)
    out = Path(tempfile.mkdtemp(prefix=f"bench-k{k}-"))
    t0 = time.perf_counter()
    stats = generate(spec, endpoint, out)
    wall = time.perf_counter() - t0
    ds: datasets.Dataset = collect(spec, out)
    ok = [r for r in ds if r["status"] == "ok"]
    kept: dict[str, list[str]] = {}
    distinct = 0
    for r in ok:  # greedy: a row counts when no earlier row of its label is a near-duplicate of it
        have = kept.setdefault(r["label"], [])
        if near_duplicates(have + [r["text"]]) == near_duplicates(have):
            distinct += 1
            have.append(r["text"])
    teacher_s = sum(ds["latency_s"])
    b = stats.get("batches") or {}
    return {"k": k, "rows": len(ds), "ok": len(ok), "valid_rate": round(len(ok) / max(len(ds), 1), 3),
            "requests": stats["planned_requests"], "wall_s": round(wall, 1), "teacher_s": round(teacher_s, 1),
            "ok_per_teacher_s": round(len(ok) / teacher_s, 3) if teacher_s else None,
            "distinct_ok": distinct, "distinct_ok_per_teacher_s": round(distinct / teacher_s, 3) if teacher_s else None,
            "within_batch_near_duplicate_share": b.get("near_duplicate_share", 0.0),
            "prompt_tokens": sum(ds["prompt_tokens"]), "completion_tokens": sum(ds["completion_tokens"]),
            "failures": sorted({e.split(":")[0] for e in ds["error"] if e})}


def compare_k(a) -> None:
    from distilforge.secrets import Secret
    from distilforge.teacher import Endpoint, serve

    st = serve(a.model)
    ep = Endpoint(st["base_url"], a.model, Secret("embedded"), "embedded")
    ks = [int(x) for x in a.compare_k.split(",")]
    res = []
    for k in ks:
        r = measure_k(k, a.labels, a.per_label, a.model, ep)
        print(json.dumps(r), flush=True)
        res.append(r)
    out = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generation.py " + " ".join(sys.argv[1:]),
           "spec": "examples/banking77/task.yaml (first labels, attributes strategy, constrained: false, "
                   "temperature 0.9, max_tokens 96 per message)",
           "model": a.model, "labels": a.labels, "per_label": a.per_label, "near_duplicate_threshold": 0.7,
           "note": "teacher_s sums request latencies on a shared 2-core box (other jobs ran at the same time); "
                   "compare the ratios between k, not the absolute seconds", "results": res}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--compare-k", default="", help="e.g. 1,4,8: compare generation.inputs_per_request values")
    ap.add_argument("--labels", type=int, default=3)
    ap.add_argument("--per-label", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "generation_batch.json"))
    a = ap.parse_args()
    if a.compare_k:
        compare_k(a)
        return

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
