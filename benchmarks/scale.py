"""Ray backend scaling benchmark (not a test): does curation's time per row stay flat from 20k to
320k rows on one local Ray (num_cpus=2), and what does a worker do per second?

Texts are built at run time by perturbing Banking77 TRAIN messages read from
`../shared/data/banking77/train.csv` (benchmarks/dedup.py's perturbations: greetings, sign-offs,
filler words, dropped/swapped words, typos, case); nothing is stored in the repo.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scale.py --out /tmp/scale.json
    ... benchmarks/scale.py --sizes 2000 8000 --out /tmp/quick.json                    # quick check

What is measured and what is not (docs/scaling.md quotes the figures):
  encode    REAL all-MiniLM-L6-v2 encodes through the Ray encode actors (fresh cache): the ~10k
            distinct train texts the rows are built from, plus a calibration sample of perturbed
            rows -> rows/s per actor (actor start and model load included).
  vectors   encoding 420k synthetic rows for real would take ~30 min of this shared box, so the
            synthetic rows get STAND-IN vectors: their base text's real vector plus noise whose
            cosine to it is drawn from the cosines measured between the calibration sample's real
            vectors and their base texts' real vectors. They go into a fresh embedding cache, so
            the pipeline's embed step reads them through the production code path (cache hits).
  pipeline  `curate_ray` at every size, after a warm-up run: checks, embed (cache reads), exact,
            MinHash, semantic; seconds per phase from the result's info.
  ratios    per-row time (largest) / per-row time (smallest): dedup passes, whole pipeline, and
            the pipeline + the measured encode rate (encode is one model call per row, so its
            per-row cost is the measured constant; that column is PROJECTED). Goal <= 1.3.
  parity    at the smallest size, the Ray result vs the local funnel with exact semantic search
            on the same cached vectors: rows whose verdict differs (kept ids and rejected
            (id, reason)).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on 127.0.0.1 only
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from curation.embed import EmbeddingCache, resolve_model, text_key  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_dedup", ROOT / "benchmarks" / "dedup.py")
bench_dedup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_dedup)  # its perturbations and train-file reader, not its main()


def load_train() -> list[tuple[str, str]]:
    import csv

    if not bench_dedup.TRAIN.exists():
        sys.exit(f"{bench_dedup.TRAIN}: Banking77 train split not found (the benchmark reads it at run time)")
    with open(bench_dedup.TRAIN, newline="") as f:
        rows = [(r["category"], r["text"].strip()) for r in csv.DictReader(f) if r.get("text")]
    seen, out = set(), []
    for lab, t in rows:  # distinct texts: each base gets exactly one real vector
        if t not in seen:
            seen.add(t)
            out.append((lab, t))
    return out


def build(base: list[tuple[str, str]], n: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """n distinct perturbed texts: (labels, texts, index of the base text of each)."""
    rng, seen = random.Random(seed), set()
    labels, texts, src = [], [], []
    while len(texts) < n:
        b = rng.randrange(len(base))
        t = bench_dedup.perturb(base[b][1], rng)
        if t not in seen:
            seen.add(t)
            labels.append(base[b][0])
            texts.append(t)
            src.append(b)
    return labels, texts, np.asarray(src)


def make_spec(label_names: list[str], cluster_rows: int, probes: int, margin: float, **curation):
    from distilforge.spec import parse_spec

    return parse_spec({
        "name": "scale-bench", "instruction": "Route the customer's banking message to its intent.",
        "labels": [{"name": lab, "description": f"Banking77 intent {lab}"} for lab in label_names],
        "heldout": {"source": "unused.csv"}, "curation": curation,
        "backend": {"kind": "ray", "cluster_rows": cluster_rows, "probes": probes, "probe_margin": margin},
    })


def dataset(labels: list[str], texts: list[str], tag: str):
    import datasets

    return datasets.Dataset.from_dict({
        "id": [f"{tag}-{i}" for i in range(len(texts))], "label": labels, "text": texts,
        "prompt": [[{"role": "user", "content": t}] for t in texts],
        "completion": [[{"role": "assistant", "content": lab}] for lab in labels],
        "status": ["ok"] * len(texts), "error": [""] * len(texts),
    })


def ray_encode(texts: list[str], cache_root: str, actors: int) -> tuple[np.ndarray, float]:
    """Real encodes through the backend's encode actors (fresh cache): vectors, wall seconds."""
    import pyarrow as pa
    import ray.data as rd

    from curation.raybackend import rows

    t0 = time.perf_counter()
    step = max(1, len(texts) // (4 * actors))
    blocks = [pa.table({"_k": np.arange(i, min(i + step, len(texts))), "text": texts[i : i + step]})
              for i in range(0, len(texts), step)]
    out = rd.from_arrow(blocks).map_batches(
        rows.Encoder, batch_format="numpy", batch_size=512, compute=rd.ActorPoolStrategy(size=actors), num_cpus=1,
        fn_constructor_kwargs={"model": None, "batch_size": 64, "threads": 1, "cache_root": cache_root},
    ).select_columns(["_k", "vec"]).take_all()
    dt = time.perf_counter() - t0
    vecs = np.zeros((len(texts), len(out[0]["vec"])), dtype=np.float32)
    for r in out:
        vecs[r["_k"]] = r["vec"]
    return vecs, dt


def stand_ins(base_vecs: np.ndarray, src: np.ndarray, cosines: np.ndarray, seed: int) -> np.ndarray:
    """base vector + isotropic noise with cos(result, base) drawn from the measured cosines."""
    rng = np.random.default_rng(seed)
    c = np.clip(rng.choice(cosines, size=len(src)), 0.3, 0.9999)
    sigma = np.sqrt(1.0 / c**2 - 1.0)
    d = base_vecs.shape[1]
    noise = rng.standard_normal((len(src), d)).astype(np.float32) / np.sqrt(d)
    v = base_vecs[src] + sigma[:, None].astype(np.float32) * noise
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 80000, 320000])
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--cluster-rows", type=int, default=2000)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--probe-margin", type=float, default=0.1)
    ap.add_argument("--calibration", type=int, default=1500, help="perturbed rows encoded for real")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()

    import ray

    from curation.curate import curate
    from curation.embed import Embedder
    from curation.raybackend import WORKER_ENV, curate_ray

    base = load_train()
    label_names = sorted({lab for lab, _ in base})
    spec = make_spec(label_names, args.cluster_rows, args.probes, args.probe_margin)
    out: dict = {"sizes": args.sizes, "num_cpus": args.num_cpus, "cluster_rows": args.cluster_rows,
                 "probes": args.probes, "probe_margin": args.probe_margin, "threshold": spec.curation.dedup.semantic_threshold}
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": WORKER_ENV})
    import logging

    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cache_root = str(Path(tmp) / "emb")
            # 1. real encodes: the base texts, then a calibration sample of perturbed rows
            base_vecs, t_base = ray_encode([t for _, t in base], cache_root, args.num_cpus)
            cal_labels, cal_texts, cal_src = build(base, args.calibration, args.seed + 99)
            cal_vecs, t_cal = ray_encode(cal_texts, cache_root, args.num_cpus)
            cosines = (cal_vecs * base_vecs[cal_src]).sum(axis=1)
            rate = (len(base) + len(cal_texts)) / (t_base + t_cal)
            out["encode"] = {"rows": len(base) + len(cal_texts), "seconds": round(t_base + t_cal, 1),
                             "rows_per_s": round(rate, 1), "rows_per_s_per_actor": round(rate / args.num_cpus, 1),
                             "calibration_cosine": {"mean": round(float(cosines.mean()), 4),
                                                    "p10": round(float(np.quantile(cosines, 0.1)), 4),
                                                    "p90": round(float(np.quantile(cosines, 0.9)), 4)}}
            print(f"encode (real, Ray actors): {out['encode']}", flush=True)

            cache = EmbeddingCache(Path(cache_root) / resolve_model(None)[1] / "vectors.sqlite")
            runs = []
            for i, n in enumerate([2000, *args.sizes]):  # the first: warm-up, not reported
                labels, texts, src = build(base, n, args.seed + i)
                vecs = stand_ins(base_vecs, src, cosines, args.seed + i)
                for j in range(0, n, 20000):
                    cache.put_many([text_key(t) for t in texts[j : j + 20000]], vecs[j : j + 20000])
                ds = dataset(labels, texts, f"s{n}")
                t0 = time.perf_counter()
                res = curate_ray(ds, spec, None, cache_root=cache_root)
                wall = time.perf_counter() - t0
                ph = res.info["ray"]["phases"]
                dedup_s = ph.get("exact_dedup", 0) + ph.get("minhash_dedup", 0) + ph.get("semantic_dedup", 0)
                run = {"rows": n, "seconds": round(wall, 2), "dedup_seconds": round(dedup_s, 2), "phases": ph,
                       "kept": len(res.kept), "reasons": res.reasons(), "semantic": res.info.get("semantic"),
                       "minhash": res.info.get("minhash"),
                       "us_per_row": round(1e6 * wall / n, 1), "dedup_us_per_row": round(1e6 * dedup_s / n, 1),
                       "with_encode_us_per_row_projected": round(1e6 * (wall / n + 1 / rate), 1)}
                if i == 0:
                    print(f"warm-up {n}: {wall:.1f}s", flush=True)
                    continue
                if i == 1:  # parity at the smallest size: the local funnel, exact and default search
                    run["parity"] = {}
                    for name, below in (("local_exact_search", 10**9), ("local_default_ivf", None)):
                        extra = {} if below is None else {"semantic_exact_below": below}
                        local_spec = make_spec(label_names, args.cluster_rows, args.probes, args.probe_margin, **extra)
                        t1 = time.perf_counter()
                        loc = curate(ds, local_spec, None, embedder=Embedder(cache_root=cache_root, threads=1))
                        a = set(zip(loc.rejected["id"], loc.rejected["reason"]))
                        b = set(zip(res.rejected["id"], res.rejected["reason"]))
                        run["parity"][name] = {
                            "local_seconds": round(time.perf_counter() - t1, 1), "local_kept": len(loc.kept),
                            "rows_differing": len({i for i, _ in a ^ b}), "same_kept_ids": loc.kept["id"] == res.kept["id"],
                            "semantic_pairs_local": loc.info["semantic"]["pairs_over_threshold"] // 2,
                            "same_funnel": [(s["step"], s["out"]) for s in loc.funnel] == [(s["step"], s["out"]) for s in res.funnel]}
                runs.append(run)
                print(f"{n:>7} rows: {wall:7.1f}s  {run['us_per_row']:7.1f} us/row  dedup {dedup_s:6.1f}s "
                      f"({run['dedup_us_per_row']} us/row)  kept {len(res.kept)}  {ph}", flush=True)
                for name, p in run.get("parity", {}).items():
                    print(f"         ray vs {name}: {p}", flush=True)
            cache.close()
    finally:
        ray.shutdown()

    out["runs"] = runs
    first, last = runs[0], runs[-1]
    ratio = {k: round(last[k] / first[k], 3) for k in ("us_per_row", "dedup_us_per_row", "with_encode_us_per_row_projected")}
    out["per_row_ratio_largest_over_smallest"] = ratio
    phases = sorted({p for r in runs for p in r["phases"]})
    out["rows_per_s_per_worker_largest"] = {p: round(last["rows"] / max(last["phases"][p], 1e-9) / args.num_cpus, 1)
                                            for p in phases if last["phases"].get(p)}
    print("\nphase seconds per size")
    print(f"{'phase':<18}" + "".join(f"{r['rows']:>10}" for r in runs))
    for p in phases:
        print(f"{p:<18}" + "".join(f"{r['phases'].get(p, 0):>10.2f}" for r in runs))
    print(f"{'total':<18}" + "".join(f"{r['seconds']:>10.2f}" for r in runs))
    print(f"\nencode, real: {out['encode']['rows_per_s_per_actor']} rows/s per actor "
          f"({args.num_cpus} actors; projected into the last ratio)")
    for k, v in ratio.items():
        print(f"{'PASS' if v <= 1.3 else 'MISS'}  per-row {k} ({last['rows']} / {first['rows']}): {v} (goal <= 1.3)")
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
