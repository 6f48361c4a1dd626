"""Three dedup passes — exact, MinHash near-duplicate, semantic — that keep the BEST row of a group.

A teacher asked for many messages per label repeats itself: the same sentence (exact), the same
sentence with a word changed (near-duplicate), or the same request in other words (semantic).
Each copy adds training weight to one phrasing without adding information.

Every pass is greedy in *quality order*, SemDeDup-style: rows are visited best-first (judge
score, then length sanity, then original order) and a row is dropped only when it is similar
to a row already KEPT. So the representative of a group is its best row, not whichever the
teacher happened to write first, and chains (A~B, B~C, A not ~ C) do not wipe out C.

MinHash: signatures follow datasketch's `MinHash` exactly (SHA1 32-bit token hash, MurmurHash3
finalizer, datasketch's own affine permutations; a test checks equality), but are computed for
all texts at once with numpy instead of one Python object per text, and the band count/size
comes from datasketch's `MinHashLSH` optimizer. LSH candidates are confirmed with the exact
Jaccard of the shingle sets, so a reported near-duplicate is never an LSH false positive.

Semantic: normalized embeddings in FAISS, inner product = cosine. Up to `semantic_exact_below`
rows the search is exact; above it an IVF index (sqrt(n) lists, trained on a sample) keeps the
cost near-linear, which the 20k -> 80k benchmark checks. Default threshold 0.92: on a 2,000-row
sample of human-written Banking77 train messages, 28% of rows have a neighbour at cosine >= 0.90
and 20% at >= 0.92 — pairs there are rewordings of one question (two phrasings of "is there a
fee for receiving money?" scored 0.91). Where to cut is a judgment
between phrasing diversity and repetition: 0.92 keeps more variety; lower it to dedup harder.
Decontamination has its own threshold (0.985, measured: docs/decontamination.md).
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import median
from typing import Sequence

import numpy as np

_PUNCT = re.compile(r"[^\w\s]|_")


@lru_cache(maxsize=1 << 17)
def normalize(text: str) -> str:
    """NFKC, case-folded, punctuation to spaces, whitespace collapsed: the exact-dedup key.

    Cached: every filter, dedup pass and the quality order tokenize the same texts again."""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


@dataclass
class DedupResult:
    """`dropped[i] = (kept_row_index, similarity)`; `cluster_size[k]` = 1 + rows dropped for k."""

    dropped: dict[int, tuple[int, float]] = field(default_factory=dict)
    cluster_size: dict[int, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def _drop(self, i: int, keeper: int, score: float) -> None:
        self.dropped[i] = (keeper, score)
        self.cluster_size[keeper] = self.cluster_size.get(keeper, 1) + 1


def quality_order(
    texts: Sequence[str],
    labels: Sequence[str],
    judge: Sequence[float | None] | None,
    min_tokens: int,
    max_tokens: int,
) -> list[int]:
    """Row indices best-first: judge score (missing = worst), then length sanity, then position.

    Length sanity: inside the token bounds first, then closest (in log ratio) to the median length
    of the label's rows — neither a clipped fragment nor a rambling outlier represents a group.
    """
    lengths = [len(tokens(t)) for t in texts]
    by_label: dict[str, list[int]] = {}
    for n, lab in zip(lengths, labels):
        by_label.setdefault(lab, []).append(n)
    med = {lab: max(1.0, median(ns)) for lab, ns in by_label.items()}

    def key(i: int):
        score = judge[i] if judge is not None else None
        n = lengths[i]
        return (
            -(score if score is not None and not math.isnan(score) else -math.inf),
            0 if min_tokens <= n <= max_tokens else 1,
            abs(math.log(max(n, 1) / med[labels[i]])),
            i,
        )

    return sorted(range(len(texts)), key=key)


def exact_dedup(texts: Sequence[str], order: Sequence[int], labels: Sequence[str] | None = None) -> DedupResult:
    """Same normalized text (NFKC, case, punctuation, whitespace) as a kept row; per label if given."""
    res, first = DedupResult(), {}
    for i in order:
        k = (labels[i] if labels is not None else "", normalize(texts[i]))
        if k in first:
            res._drop(i, first[k], 1.0)
        else:
            first[k] = i
    return res


# ---------------------------------------------------------------- MinHash

def shingles(text: str, n: int) -> set[str]:
    """Word n-grams of the normalized text; a text shorter than n is one shingle (itself)."""
    toks = tokens(text)
    if len(toks) <= n:
        return {" ".join(toks)}
    return {" ".join(toks[j : j + n]) for j in range(len(toks) - n + 1)}


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (what datasketch's affine32 scheme pre-mixes with)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def minhash_signatures(shingle_sets: Sequence[set[str]], num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """(n, num_perm) uint32 signatures, equal to datasketch `MinHash(num_perm, seed).update_batch`."""
    from datasketch import MinHash
    from datasketch.hashfunc import sha1_hash32

    a, b = (np.asarray(x, dtype=np.uint32) for x in MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations)
    vocab: dict[str, int] = {}
    ids, offsets = [], []
    for s in shingle_sets:
        offsets.append(len(ids))
        for sh in s or {""}:
            ids.append(vocab.setdefault(sh, len(vocab)))
    if not shingle_sets:
        return np.zeros((0, num_perm), dtype=np.uint32)
    hv = np.fromiter((sha1_hash32(sh.encode("utf-8")) for sh in vocab), dtype=np.uint32, count=len(vocab))
    mixed = _fmix32(hv)[np.asarray(ids, dtype=np.int64)]
    out = np.empty((len(shingle_sets), num_perm), dtype=np.uint32)
    offsets_arr = np.asarray(offsets + [len(ids)], dtype=np.int64)
    step = max(1, (1 << 22) // num_perm)  # ~16 MB of uint32 per block
    d0 = 0
    with np.errstate(over="ignore"):
        while d0 < len(shingle_sets):
            d1 = int(np.searchsorted(offsets_arr, offsets_arr[d0] + step, side="right")) - 1
            d1 = min(max(d1, d0 + 1), len(shingle_sets))
            lo, hi = offsets_arr[d0], offsets_arr[d1]
            # (num_perm, shingles) layout: reduceat along contiguous rows is ~3x faster
            phv = a[:, None] * mixed[None, lo:hi] + b[:, None]
            out[d0:d1] = np.minimum.reduceat(phv, offsets_arr[d0:d1] - lo, axis=1).T
            d0 = d1
    return out


def lsh_params(threshold: float, num_perm: int, margin: float = 0.15) -> tuple[int, int]:
    """(bands, rows per band) from datasketch's MinHashLSH optimizer, tuned for recall.

    Tuned at the threshold itself with balanced weights, LSH finds a pair of Jaccard exactly
    0.7 only ~44% of the time (128 perms: 14 bands x 9). Every candidate is verified with the
    exact Jaccard anyway, so the bands are sized for `threshold - margin` with false negatives
    weighted up: ~99% recall at the threshold, paid for with a few more verifications.
    """
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=max(0.05, threshold - margin), num_perm=num_perm, weights=(0.3, 0.7))
    return lsh.b, lsh.r


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: one 64-bit key per band (random linear mix of the band's values)."""
    rng = np.random.default_rng(0x5EED)
    mult = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    keys = np.zeros((sig.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for bi in range(bands):
            block = sig[:, bi * rows : (bi + 1) * rows].astype(np.uint64)
            keys[:, bi] = (block * mult[None, :]).sum(axis=1, dtype=np.uint64) ^ np.uint64(bi)
    return keys


def minhash_dedup(
    texts: Sequence[str],
    order: Sequence[int],
    *,
    threshold: float = 0.7,
    ngram: int = 2,
    num_perm: int = 128,
    labels: Sequence[str] | None = None,
) -> DedupResult:
    """Drop each row whose shingle Jaccard with an already-kept row is >= threshold.

    Only kept rows enter the LSH buckets, so the work is one query (+ one insert when kept) per
    row, like a datasketch insert/query loop, without a MinHash object per text.
    `labels`: when given, rows only duplicate rows of the same label.
    """
    res = DedupResult()
    sets = [shingles(t, ngram) for t in texts]
    bands, rows = lsh_params(threshold, num_perm)
    keys = band_keys(minhash_signatures(sets, num_perm), bands, rows)
    # A row that shares no band bucket with any other row can neither be dropped nor cause a
    # drop: only rows with at least one collision enter the (Python) greedy loop.
    collides = np.zeros(len(texts), dtype=bool)
    for bi in range(bands):
        _, inv, counts = np.unique(keys[:, bi], return_inverse=True, return_counts=True)
        collides |= counts[inv] > 1
    res.info = {"bands": bands, "rows_per_band": rows, "rows_in_collisions": int(collides.sum())}
    key_rows = keys.tolist()
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    checked = 0
    for i in order:
        if not collides[i]:
            continue
        ki = key_rows[i]
        cands: set[int] = set()
        for d, k in zip(buckets, ki):
            kept_here = d.get(k)
            if kept_here:
                cands.update(kept_here)
        best, best_j = -1, 0.0
        if cands:
            si = sets[i]
            for j in cands:
                if labels is not None and labels[j] != labels[i]:
                    continue
                checked += 1
                sj = sets[j]
                s = len(si & sj) / len(si | sj)
                if s >= threshold and (s > best_j or (s == best_j and j < best)):
                    best, best_j = j, s
        if best >= 0:
            res._drop(i, best, best_j)
        else:
            for d, k in zip(buckets, ki):
                d.setdefault(k, []).append(i)
    res.info["candidates_checked"] = checked
    return res


# ---------------------------------------------------------------- semantic

def neighbour_index(vectors: np.ndarray, *, exact_below: int = 10000, nprobe: int = 8, seed: int = 0):
    """A FAISS inner-product index over normalized vectors: flat when small, IVF when large."""
    import faiss

    n, d = vectors.shape
    if n < exact_below:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = max(1, min(int(math.sqrt(n)), n // 40))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, size=min(n, nlist * 40), replace=False)]
        index.cp.niter = 10
        index.train(sample)
        index.nprobe = nprobe
    index.add(vectors)
    return index


def semantic_dedup(
    vectors: np.ndarray,
    order: Sequence[int],
    *,
    threshold: float = 0.9,
    labels: Sequence[str] | None = None,
    exact_below: int = 10000,
    nprobe: int = 8,
) -> DedupResult:
    """Drop each row whose cosine with an already-kept row is >= threshold (best rows kept)."""
    res = DedupResult()
    n = len(vectors)
    if n == 0:
        return res
    index = neighbour_index(vectors, exact_below=exact_below, nprobe=nprobe)
    lims, sims, nbrs = index.range_search(np.ascontiguousarray(vectors, dtype=np.float32), float(threshold) - 1e-6)
    res.info = {"index": type(index).__name__, "pairs_over_threshold": int(len(nbrs) - n)}
    kept = np.zeros(n, dtype=bool)
    for i in order:
        lo, hi = lims[i], lims[i + 1]
        js, ss = nbrs[lo:hi], sims[lo:hi]
        mask = kept[js] & (js != i)
        if labels is not None and mask.any():
            mask &= np.fromiter((labels[j] == labels[i] for j in js), dtype=bool, count=len(js))
        if mask.any():
            k = int(np.argmax(np.where(mask, ss, -np.inf)))
            res._drop(i, int(js[k]), float(ss[k]))
        else:
            kept[i] = True
    return res
