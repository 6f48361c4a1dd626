"""Partition-level dedup work for the Ray backend, plus the two small driver-side steps.

Every dedup pass is a groupby: the driver sorts on the key (or `repartition(P, keys=[key])`
under a hash shuffle: the shuffle Ray Data's `groupby(key).map_groups` itself runs) and
`map_batches(batch_size=None)` hands each function below one WHOLE partition, so every group is
complete; the function then handles all its groups at once instead of paying Ray's per-group
call (~0.3 ms a group here, which would dominate for 300k mostly-singleton groups).

The decision is made by the local function itself (`dedup.exact_dedup`, `dedup.minhash_dedup`,
`dedup.semantic_dedup`) on the rows in row-key order with the global quality order, so "which
row wins" and the scores are the local ones by construction. The groups:

* exact    group = same 64-bit hash of (label when per-label, normalized text);
* MinHash  group = connected component of "shares an LSH bucket" (buckets found by a shuffle on
           (band, band key); a row only ever compares with rows sharing a bucket, so a
           component holds every candidate the local greedy loop could see);
* semantic group = connected component of "cosine >= threshold", pairs found SemDeDup-style:
           k-means on a sample, each row searched against the rows owned by its nearest cluster
           and by every cluster almost as near (`assign_clusters`): no global index, nothing
           quadratic in n.
"""
from __future__ import annotations

import numpy as np

from curation import dedup
from curation.raybackend.rows import quality_order

DROP_COLS = ("_k", "keeper", "score", "keeper_id", "keeper_label", "label", "ntok")


def _empty_drops() -> dict:
    return {"_k": np.zeros(0, np.int64), "keeper": np.zeros(0, np.int64), "score": np.zeros(0, float),
            "keeper_id": np.zeros(0, object), "keeper_label": np.zeros(0, object),
            "label": np.zeros(0, object), "ntok": np.zeros(0, np.int64)}


def _groups(keys: np.ndarray, ks: np.ndarray, min_size: int = 2):
    """Yield index arrays of rows sharing a key, each in row-key order, groups >= min_size only."""
    if len(keys) == 0:
        return
    o = np.lexsort((ks, keys))
    sk = keys[o]
    cuts = np.flatnonzero(sk[1:] != sk[:-1]) + 1
    for idx in np.split(o, cuts):
        if len(idx) >= min_size:
            yield idx


def _run_groups(batch: dict, key: str | None, decide, med: dict, cfg) -> dict:
    """Apply `decide(rows, order) -> DedupResult` to every group of `key`, or (key None) once to
    the whole partition: right for exact and MinHash, whose local functions never let rows of
    different groups meet (different normalized text / no shared bucket), and much cheaper than a
    Python call per group. Drop records out."""
    out = {c: [] for c in DROP_COLS}
    ks = batch["_k"]
    if key is None:
        whole = np.argsort(ks, kind="stable")
        parts = [whole] if len(whole) > 1 else []
    else:
        parts = _groups(batch[key], ks)
    for idx in parts:
        g = {c: v[idx] for c, v in batch.items()}
        order = quality_order(g["judge"], g["ntok"], g["label"], g["_k"], med, cfg.filters.min_tokens, cfg.filters.max_tokens)
        res = decide(g, [int(i) for i in order])
        for i, (keeper, score) in res.dropped.items():
            rec = {"_k": g["_k"][i], "keeper": g["_k"][keeper], "score": score, "keeper_id": g["id"][keeper],
                   "keeper_label": g["label"][keeper], "label": g["label"][i], "ntok": g["ntok"][i]}
            for c in DROP_COLS:
                out[c].append(rec[c])
    if not out["_k"]:
        return _empty_drops()
    return {c: np.array(v, dtype=_empty_drops()[c].dtype) for c, v in out.items()}


def exact_partition(batch: dict, med: dict, cfg) -> dict:
    per_label = not cfg.dedup.across_labels

    def decide(g, order):
        return dedup.exact_dedup(list(g["text"]), order, labels=list(g["label"]) if per_label else None)

    return _run_groups(batch, None, decide, med, cfg)


def minhash_partition(batch: dict, med: dict, cfg) -> dict:
    per_label = not cfg.dedup.across_labels

    def decide(g, order):
        return dedup.minhash_dedup(list(g["text"]), order, threshold=cfg.dedup.minhash_threshold, ngram=cfg.dedup.minhash_ngram,
                                   num_perm=cfg.dedup.minhash_num_perm, labels=list(g["label"]) if per_label else None)

    return _run_groups(batch, None, decide, med, cfg)


def semantic_partition(batch: dict, med: dict, cfg) -> dict:
    per_label = not cfg.dedup.across_labels

    def decide(g, order):
        return dedup.semantic_dedup(np.ascontiguousarray(g["vec"], dtype=np.float32), order,
                                    threshold=cfg.dedup.semantic_threshold, labels=list(g["label"]) if per_label else None,
                                    exact_below=cfg.dedup.semantic_exact_below, nprobe=cfg.dedup.semantic_nprobe)

    return _run_groups(batch, "comp", decide, med, cfg)


def balance_partition(batch: dict, med: dict, cfg, nearest=None) -> dict:
    """Per label, the rows after the best `max_per_label` in quality order, or (`nearest`: a list
    holding the ObjectRef of each row's nearest-traffic cosine, indexed by `_k`) after the
    `max_per_label` nearest real traffic, the quality order breaking ties, as the local funnel."""
    near = None
    if nearest is not None:
        import ray

        near = ray.get(nearest[0])
    n = cfg.filters.max_per_label
    ks, details = [], []
    for idx in _groups(batch["label"], batch["_k"], min_size=n + 1):
        g = {c: batch[c][idx] for c in ("judge", "ntok", "label", "_k")}
        order = quality_order(g["judge"], g["ntok"], g["label"], g["_k"], med, cfg.filters.min_tokens, cfg.filters.max_tokens)
        if near is not None:
            order = sorted(order, key=lambda i: -near[g["_k"][i]])
        lab = g["label"][0]
        for i in order[n:]:
            ks.append(g["_k"][i])
            details.append(f"label {lab} already has {n} rows nearer real traffic (this one's nearest cosine "
                           f"{near[g['_k'][i]]:.2f})" if near is not None else f"label {lab} already has {n} better rows")
    return {"_k": np.array(ks, dtype=np.int64), "detail": np.array(details, dtype=object)}


# ---------------------------------------------------------------- MinHash buckets

def explode_bands(batch: dict) -> dict:
    """One record per (row, band): the shuffle key is (band, band key); only ints travel."""
    keys = batch["bands"]
    m, b = keys.shape if len(keys) else (0, 0)
    return {"band": np.tile(np.arange(b, dtype=np.int16), m), "bk": np.ascontiguousarray(keys).reshape(-1).view(np.int64),
            "_k": np.repeat(batch["_k"], b)}


def bucket_edges(batch: dict) -> dict:
    """Rows sharing a (band, key) bucket, chained (a-b, b-c, ...): enough for the components."""
    band, bk, ks = batch["band"], batch["bk"], batch["_k"]
    if len(ks) < 2:
        return {"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64)}
    o = np.lexsort((ks, bk, band))
    band, bk, ks = band[o], bk[o], ks[o]
    same = (band[1:] == band[:-1]) & (bk[1:] == bk[:-1])
    return {"a": ks[:-1][same], "b": ks[1:][same]}


# ---------------------------------------------------------------- semantic clusters

def sample_mask(ks: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic sample by row key (same rows whatever the block layout)."""
    with np.errstate(over="ignore"):
        h = (ks.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return h < np.uint64(int(fraction * 2**32))


def train_centroids(sample: np.ndarray, k: int, seed: int = 1234) -> np.ndarray:
    """Spherical k-means (FAISS) on the sample: the driver's only look at vectors."""
    import faiss

    km = faiss.Kmeans(sample.shape[1], k, niter=20, spherical=True, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=256)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign_clusters(batch: dict, centroids: np.ndarray, probes: int, margin: float) -> dict:
    """Each row: owner of its nearest centroid's cluster, and a query in every cluster whose
    centroid is within `margin` (cosine) of the nearest one, at most `probes` clusters.

    Why a margin: for unit vectors |cos(x, c) - cos(y, c)| <= |x - y| = sqrt(2(1 - t)), so a pair
    over the threshold t sits at similar cosines to every centroid; a row deep inside its cluster
    needs one probe, a row on a boundary several. Measured on Banking77 vectors (docs/scaling.md):
    margin 0.1 found every pair over 0.92 with 1.5-2 probes a row; the two nearest clusters missed
    ~0.05 % of them."""
    vec = batch["vec"]
    n = len(batch["_k"])
    p = min(probes, len(centroids))
    if n == 0:
        return {"cluster": np.zeros(0, np.int64), "owner": np.zeros(0, bool), "_k": batch["_k"],
                "label": batch["label"], "vec": vec}
    sims = vec @ centroids.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :p]
    top_sims = np.take_along_axis(sims, top, axis=1)
    use = top_sims >= top_sims[:, :1] - margin
    rows_, cols_ = np.nonzero(use)  # row-major: each row's owner (column 0) first
    return {"cluster": top[rows_, cols_].astype(np.int64), "owner": cols_ == 0,
            "_k": batch["_k"][rows_], "label": batch["label"][rows_], "vec": vec[rows_]}


def cluster_pairs(batch: dict, threshold: float, per_label: bool) -> dict:
    """Pairs with cosine >= threshold between each cluster's queries and its owners (exact search)."""
    import faiss

    a_out, b_out = [], []
    for idx in _groups(batch["cluster"], batch["_k"], min_size=1):
        own = idx[batch["owner"][idx]]
        if len(own) == 0 or len(idx) < 2:
            continue
        index = faiss.IndexFlatIP(batch["vec"].shape[1])
        index.add(np.ascontiguousarray(batch["vec"][own], dtype=np.float32))
        lims, _, nbrs = index.range_search(np.ascontiguousarray(batch["vec"][idx], dtype=np.float32),
                                           float(threshold) - 1e-6)
        q = np.repeat(idx, np.diff(lims).astype(np.int64))
        o = own[nbrs]
        a, b = batch["_k"][q], batch["_k"][o]
        keep = a != b
        if per_label:
            keep &= batch["label"][q] == batch["label"][o]
        a_out.append(np.minimum(a, b)[keep])
        b_out.append(np.maximum(a, b)[keep])
    if not a_out:
        return {"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64)}
    return {"a": np.concatenate(a_out), "b": np.concatenate(b_out)}


# ---------------------------------------------------------------- components (driver)

def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted row keys that have an edge, their component id). Runs on the driver over the
    deduplicated edge list only (16 bytes an edge, O(duplicate pairs), never O(rows^2))."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(a) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = inv[: len(a)], inv[len(a):]
    g = coo_matrix((np.ones(len(a), dtype=np.int8), (ia, ib)), shape=(len(nodes), len(nodes)))
    _, comp = connected_components(g, directed=False)
    return nodes.astype(np.int64), comp.astype(np.int64)


def attach_component(batch: dict, nodes: np.ndarray, comp: np.ndarray) -> dict:
    """Keep rows that belong to a component (broadcast arrays), with its id in `comp`."""
    ks = batch["_k"]
    if len(nodes) == 0 or len(ks) == 0:
        return {**{c: v[:0] for c, v in batch.items()}, "comp": np.zeros(0, np.int64)}
    pos = np.minimum(np.searchsorted(nodes, ks), len(nodes) - 1)
    hit = nodes[pos] == ks
    out = {c: v[hit] for c, v in batch.items()}
    out["comp"] = comp[pos[hit]]
    return out
