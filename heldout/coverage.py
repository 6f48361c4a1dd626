"""Coverage analysis: clusters of real traffic, described without its text.

Blind-spot analysis compares synthetic rows with a split of real rows. That split is the run's
dev split (RUN/traffic/dev, real inputs kept apart from training), never the locked test set:
whatever chooses data must not look at the set the student is scored on. This module embeds the
given texts, clusters them, and hands out only what is safe to show: per-row vectors and cluster
ids (no text), and per cluster its size, label mix and a few keywords (single words that are
frequent in the cluster and rare elsewhere — enough to steer generation, not enough to
reconstruct a row). It knows nothing of where the texts come from.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

STOP = set("""a an the and or but if then so to of in on at for from by with without about as is are was were be been
being am i me my mine we our you your he she it its they them their this that these those there here what which who
whom whose when where why how can could would should will shall may might must do does did done doing have has had
having not no yes please thanks thank hi hello hey just still also any some all very really much many more most
too than get got getting go going gone want need know like one two im ive dont cant didnt isnt wont ill id youre
its whats hasnt havent wasnt arent my me up out again why yet""".split())


@dataclass
class Clusters:
    """Real rows in embedding space: vectors, ids and labels in the order given, and the clusters."""

    vectors: np.ndarray  # (n, d) normalized, row order = the order the texts were given in
    row_ids: list[str]
    labels: list[str]
    assign: np.ndarray  # (n,) cluster id per row
    centroids: np.ndarray  # (k, d) normalized
    clusters: list[dict] = field(default_factory=list)  # id, size, labels, keywords


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in STOP]


def keywords(texts_in: list[str], texts_all: list[str], top: int = 6) -> list[str]:
    """Words over-represented in a cluster (document frequency ratio vs the whole set)."""
    df_in = Counter(w for t in texts_in for w in set(_words(t)))
    df_all = Counter(w for t in texts_all for w in set(_words(t)))
    n_in, n_all = max(len(texts_in), 1), max(len(texts_all), 1)
    score = {w: (c / n_in) * np.log((n_all + 1) / (df_all[w] + 1)) for w, c in df_in.items() if c >= 2}
    return [w for w, _ in sorted(score.items(), key=lambda x: (-x[1], x[0]))[:top]]


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (FAISS), deterministic for a seed; returns (assign, centroids)."""
    import faiss

    k = max(1, min(k, len(x)))
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    _, a = km.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    c = km.centroids / np.linalg.norm(km.centroids, axis=1, keepdims=True).clip(1e-9)
    return a[:, 0], c


def cluster_texts(texts: list[str], labels: list[str], row_ids: list[str], embedder, k: int | None = None,
                  seed: int = 0) -> Clusters:
    """Embed and cluster real rows (k defaults to about two clusters per label, ~10 rows each)."""
    texts, labels = list(texts), list(labels)
    vecs = np.asarray(embedder.encode(texts), dtype=np.float32)
    k = k or max(2, min(len(texts) // 10, 2 * len(set(labels))))
    assign, cents = kmeans(vecs, k, seed)
    clusters = []
    for c in range(len(cents)):
        idx = np.flatnonzero(assign == c)
        if len(idx) == 0:
            continue
        clusters.append({"cluster": int(c), "size": int(len(idx)),
                         "labels": dict(Counter(labels[i] for i in idx).most_common()),
                         "keywords": keywords([texts[i] for i in idx], texts),
                         "mean_words": round(float(np.mean([len(texts[i].split()) for i in idx])), 1)})
    return Clusters(vecs, list(row_ids), labels, assign, cents, clusters)


HeldoutClusters = Clusters  # the name before blind spots moved to the dev split (tests build it by hand)
