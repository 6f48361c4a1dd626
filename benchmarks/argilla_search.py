"""Latency of the embedded Argilla search engine at 10k records with 384-dim vectors.

Starts the embedded server in a temporary data dir (or uses --url/--api-key), logs synthetic
records through the SDK, then times REST searches the UI and SDK make:
  filter     POST /datasets/{id}/records/search  terms + range metadata filter, 50 per page
  me_filter  POST /me/datasets/{id}/records/search  same filter + per-user random order (UI queue)
  text       full-text query (FTS5 + bm25) over all fields
  similarity nearest 50 by a record's vector (cosine on the cached matrix)
Reports p50/p95 of the client round trip and of the server's own Server-Timing.
Goals on a 2-core box: p95 < 100 ms for searches, < 200 ms for similarity.

    .venv/bin/python benchmarks/argilla_search.py [--records 10000] [--dim 384] [--queries 60]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from labeling.server import control  # noqa: E402

GOALS_MS = {"filter": 100, "me_filter": 100, "text": 100, "similarity": 200}


def build_dataset(url: str, api_key: str, n: int, dim: int, seed: int):
    import argilla as rg

    client = rg.Argilla(api_url=url, api_key=api_key, timeout=300)
    settings = rg.Settings(
        fields=[rg.TextField(name="text")],
        questions=[rg.LabelQuestion(name="label", labels=["pos", "neg"])],
        metadata=[rg.TermsMetadataProperty(name="src"), rg.FloatMetadataProperty(name="score")],
        vectors=[rg.VectorField(name="emb", dimensions=dim)],
    )
    name = f"bench-{n}-{dim}-{seed}"
    existing = client.datasets(name=name)
    if existing is not None and len(list(existing.records(limit=n))) == n:  # --data-dir rerun
        print(f"reusing dataset {name}", flush=True)
        return existing
    if existing is not None:
        existing.delete()
    dataset = rg.Dataset(name=name, settings=settings, client=client).create()
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(3000)]
    started = time.perf_counter()
    for start in range(0, n, 500):
        batch = []
        for i in range(start, min(n, start + 500)):
            words = rng.choice(len(vocab), size=int(rng.integers(15, 40)))
            batch.append(rg.Record(
                id=f"b{i}", fields={"text": " ".join(vocab[w] for w in words)},
                metadata={"src": f"s{i % 5}", "score": float(rng.random())},
                vectors={"emb": rng.normal(size=dim).astype(np.float32).round(5).tolist()},
                suggestions=[rg.Suggestion("label", "pos" if i % 2 else "neg", score=float(rng.random()))]))
        dataset.records.log(batch, batch_size=500)
    print(f"logged {n} records in {time.perf_counter() - started:.0f}s", flush=True)
    return dataset


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def run(url: str, api_key: str, n: int, dim: int, queries: int, seed: int) -> dict:
    dataset = build_dataset(url, api_key, n, dim, seed)
    server_ids = []
    http = httpx.Client(base_url=f"{url}/api/v1", headers={"X-Argilla-Api-Key": api_key}, timeout=120)
    for offset in range(0, n, 1000):
        page = http.get(f"/datasets/{dataset.id}/records", params={"offset": offset, "limit": 1000}).json()
        server_ids += [item["id"] for item in page["items"]]
    rnd = random.Random(seed)

    def body(kind: str) -> dict:
        flt = {"and": [{"type": "terms", "scope": {"entity": "metadata", "metadata_property": "src"},
                        "values": [f"s{rnd.randrange(5)}"]},
                       {"type": "range", "scope": {"entity": "metadata", "metadata_property": "score"},
                        "ge": rnd.random() * 0.5}]}
        if kind in ("filter", "me_filter"):
            return {"filters": flt}
        if kind == "text":
            return {"query": {"text": {"q": f"w{rnd.randrange(3000)}"}}}
        return {"query": {"vector": {"name": "emb", "record_id": rnd.choice(server_ids)}}}

    results = {}
    for kind in ("filter", "me_filter", "text", "similarity"):
        path = ("/me" if kind == "me_filter" else "") + f"/datasets/{dataset.id}/records/search"
        client_ms, server_ms, totals = [], [], []
        for i in range(queries + 3):  # 3 warm-up queries (first similarity builds the matrix)
            started = time.perf_counter()
            response = http.post(path, json=body(kind), params={"limit": 50})
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if i >= 3:
                client_ms.append(elapsed)
                server_ms.append(float(response.headers["server-timing"].split("dur=")[1]))
                totals.append(response.json()["total"])
        results[kind] = {"p50_ms": round(percentile(client_ms, 50), 1), "p95_ms": round(percentile(client_ms, 95), 1),
                         "server_p50_ms": round(percentile(server_ms, 50), 1),
                         "server_p95_ms": round(percentile(server_ms, 95), 1),
                         "median_hits": int(np.median(totals)), "goal_p95_ms": GOALS_MS[kind]}
        print(kind, json.dumps(results[kind]), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="benchmark this server instead of a fresh embedded one")
    parser.add_argument("--api-key", default=os.environ.get("ARGILLA_API_KEY"))
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    parser.add_argument("--data-dir", type=Path, help="keep the embedded server's data here (reruns reuse it)")
    args = parser.parse_args()
    tmp = None
    if args.url:
        url, api_key = args.url.rstrip("/"), args.api_key
    else:
        if args.data_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="argilla-bench-")
        data_dir = args.data_dir or Path(tmp.name) / "data"
        info = control.start(data_dir, port=int(os.environ.get("BENCH_PORT", "6931")))
        url, api_key = info["url"], control.read_credentials(data_dir)["api_key"]
    try:
        results = run(url, api_key, args.records, args.dim, args.queries, args.seed)
    finally:
        if not args.url:
            control.stop(data_dir)
        if tmp is not None:
            tmp.cleanup()
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    missed = [k for k, v in results.items() if v["p95_ms"] > v["goal_p95_ms"]]
    print("goals met" if not missed else f"goals missed: {', '.join(missed)}")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
