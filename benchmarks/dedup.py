"""Dedup benchmark (not a test): is semantic dedup close to the encode floor, linear in size,
and is our MinHash pass at least as fast as a plain datasketch insert/query loop?

Texts are built at run time by perturbing/templating Banking77 TRAIN messages read from
`../shared/data/banking77/train.csv` (relative to the repo root); nothing from the test split
is read and no row is stored in the repo. Every run uses a fresh temporary embedding cache, so
all encodes are real.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dedup.py            # 20k + 80k
    ... benchmarks/dedup.py --sizes 2000 8000 --exact-below 1000                        # quick check

Reported, in one run:
  floor        raw model encode of the small set's texts (no cache, no index)
  semantic     Embedder.encode (hash, cache miss, encode, write) + FAISS + greedy keep-best
  ratio        semantic / floor at the small size (goal <= 1.15); at the large size the floor
               is the small set's measured rate times the size (labelled "extrapolated")
  scaling      semantic(large) / semantic(small) (goal <= 4.5 for 4x the rows)
  minhash      our vectorized pass vs datasketch MinHash.generator + MinHashLSH query/insert,
               texts/s (goal ratio >= 1.0)
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import datasketch  # noqa: E402,F401  (imported up front: its import time is no one's throughput)

from curation import dedup  # noqa: E402
from curation.embed import Embedder  # noqa: E402

TRAIN = ROOT / ".." / "shared" / "data" / "banking77" / "train.csv"
PREFIXES = ["", "", "", "Hi, ", "Hello! ", "Hey there, ", "Quick question: ", "Please help: ", "Good morning, ",
            "Sorry to bother you, ", "Urgent: ", "Hi team, "]
SUFFIXES = ["", "", "", " Thanks.", " Thank you!", " Any ideas?", " Please advise.", " Cheers",
            " I need this sorted today.", " Thanks in advance.", " What should I do?", " :("]
FILLERS = ["really", "just", "actually", "still", "now", "please", "again", "honestly"]


def load_train() -> list[str]:
    if not TRAIN.exists():
        sys.exit(f"{TRAIN}: Banking77 train split not found (the benchmark reads it at run time)")
    with open(TRAIN, newline="") as f:
        return [r["text"].strip() for r in csv.DictReader(f) if r.get("text")]


def perturb(text: str, rng: random.Random) -> str:
    """One edit of the kinds a teacher produces: greeting/sign-off, filler word, dropped or
    swapped word, a typo, case change."""
    words = text.split()
    op = rng.randrange(6)
    if op == 0 and len(words) > 3:
        del words[rng.randrange(len(words))]
    elif op == 1 and len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif op == 2:
        words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
    elif op == 3:
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) > 3:
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif op == 4:
        words = [w.lower() for w in words]
    out = " ".join(words)
    return rng.choice(PREFIXES) + out + rng.choice(SUFFIXES)


def build(base: list[str], n: int, seed: int) -> list[str]:
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        t = perturb(rng.choice(base), rng)
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def semantic(texts: list[str], cache_root: Path, args) -> tuple[float, dict, object]:
    t0 = time.perf_counter()
    emb = Embedder(cache_root=cache_root, batch_size=args.batch_size, threads=args.threads)
    vecs = emb.encode(texts)
    t_enc = time.perf_counter() - t0
    order = dedup.quality_order(texts, ["x"] * len(texts), None, 3, 120)
    res = dedup.semantic_dedup(vecs, order, threshold=args.threshold, exact_below=args.exact_below)
    total = time.perf_counter() - t0
    return total, {"embed_s": round(t_enc, 1), "dedup_s": round(total - t_enc, 2), "dropped": len(res.dropped),
                   **res.info}, vecs


def plain_minhash(texts: list[str], threshold: float, ngram: int, num_perm: int) -> int:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    sets = ([s.encode() for s in dedup.shingles(t, ngram)] for t in texts)
    dropped = 0
    for i, m in enumerate(MinHash.generator(sets, num_perm=num_perm)):
        if lsh.query(m):
            dropped += 1
        else:
            lsh.insert(i, m)
    return dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[20000, 80000])
    ap.add_argument("--threshold", type=float, default=0.92)
    ap.add_argument("--exact-below", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    small_n, large_n = args.sizes
    base = load_train()
    small, large = build(base, small_n, args.seed), build(base, large_n, args.seed + 1)
    print(f"{len(base)} train texts -> {small_n} and {large_n} perturbed texts", flush=True)
    out: dict = {"sizes": args.sizes, "threshold": args.threshold}

    with tempfile.TemporaryDirectory() as tmp:
        emb = Embedder(cache=False, batch_size=args.batch_size, threads=args.threads)
        emb.encode_uncached(small[:64])  # load the model outside the timings
        t0 = time.perf_counter()
        emb.encode_uncached(small)
        floor_small = time.perf_counter() - t0
        print(f"floor: encode {small_n} texts {floor_small:.1f}s ({small_n / floor_small:.0f}/s)", flush=True)

        sem_small, info_small, vecs_small = semantic(small, Path(tmp) / "a", args)
        print(f"semantic {small_n}: {sem_small:.1f}s {info_small}", flush=True)
        t0 = time.perf_counter()
        exact = dedup.semantic_dedup(vecs_small, range(small_n), threshold=args.threshold, exact_below=10**9)
        ivf = dedup.semantic_dedup(vecs_small, range(small_n), threshold=args.threshold, exact_below=0)
        agree = len(set(exact.dropped) & set(ivf.dropped)) / max(1, len(exact.dropped))
        print(f"IVF vs exact search at {small_n}: {len(ivf.dropped)} vs {len(exact.dropped)} drops, "
              f"recall {agree:.3f} ({time.perf_counter() - t0:.1f}s)", flush=True)

        sem_large, info_large, _ = semantic(large, Path(tmp) / "b", args)
        print(f"semantic {large_n}: {sem_large:.1f}s {info_large}", flush=True)

    # MinHash: same texts, same shingles, threshold 0.7 on word bigrams
    t0 = time.perf_counter()
    ours = dedup.minhash_dedup(large, range(large_n), threshold=0.7, ngram=2, num_perm=128)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain_dropped = plain_minhash(large, 0.7, 2, 128)
    t_plain = time.perf_counter() - t0

    out.update({
        "floor_small_s": round(floor_small, 1),
        "encode_rate_per_s": round(small_n / floor_small, 1),
        "semantic_small_s": round(sem_small, 1), "semantic_small": info_small,
        "ratio_small": round(sem_small / floor_small, 3),
        "semantic_large_s": round(sem_large, 1), "semantic_large": info_large,
        "ratio_large_extrapolated": round(sem_large / (floor_small * large_n / small_n), 3),
        "scaling_large_over_small": round(sem_large / sem_small, 3),
        "ivf_recall_vs_exact_small": round(agree, 4),
        "ivf_drops_small": len(ivf.dropped), "exact_drops_small": len(exact.dropped),
        "minhash_ours_texts_per_s": round(large_n / t_ours), "minhash_plain_texts_per_s": round(large_n / t_plain),
        "minhash_speedup": round(t_plain / t_ours, 2),
        "minhash_ours_dropped": len(ours.dropped), "minhash_plain_dropped": plain_dropped,
        "minhash_ours_info": ours.info,
    })
    print(json.dumps(out, indent=2))
    goals = [
        ("semantic / encode floor", out["ratio_small"], "<= 1.15", out["ratio_small"] <= 1.15),
        (f"time({large_n}) / time({small_n})", out["scaling_large_over_small"], "<= 4.5", out["scaling_large_over_small"] <= 4.5),
        ("MinHash speed vs plain datasketch", out["minhash_speedup"], ">= 1.0", out["minhash_speedup"] >= 1.0),
    ]
    for name, value, goal, ok in goals:
        print(f"{'PASS' if ok else 'MISS'}  {name}: {value} (goal {goal})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
