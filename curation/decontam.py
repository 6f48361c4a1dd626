"""Held-out decontamination: no training row may copy or closely paraphrase a locked held-out row.

The held-out score is the project's one honest number; it stops being honest the moment a
held-out message (or a near copy) is in the training data. Two independent checks:

* n-gram overlap on normalized tokens, the GPT-3 / lm-eval-harness recipe: a shared run of
  `decontam_ngram` tokens (default 13, down to 8). Banking-style messages are often shorter than
  13 tokens, where a pure 13-gram rule could never fire; so a text shorter than n matches when
  ALL of it appears inside a held-out row, and a held-out row shorter than n matches when ALL of
  it appears inside a text — as long as the shared run has at least `decontam_min_tokens` tokens
  (below that, "my card is lost" is a coincidence, not a copy).
* embedding cosine >= `decontam_cosine` (default 0.985) against every held-out row: catches the
  lightly edited copies that break every long n-gram. The default was measured on Banking77
  (docs/decontamination.md): 0.90 flagged 33 % of independent real train rows, 0.985 flags 1.9 %;
  no threshold that keeps real data separates real rows from paraphrased test rows, so this is a
  near-copy check, not a paraphrase detector.

Only held-out ids ever leave this module: the texts stay in the locked dataset.
`find_contamination` is the same check the trainer runs as a gate before it trains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from curation.dedup import tokens
from distilforge.errors import UserError


def _cfg(cfg):
    """Accept the `Curation` section or the whole task spec."""
    return getattr(cfg, "curation", cfg)


@dataclass
class NgramIndex:
    """Held-out n-grams keyed by token tuple -> held-out row index."""

    n: int
    floor: int
    long: dict  # n-grams of held-out rows with >= n tokens
    whole_short: dict  # whole held-out rows with floor..n-1 tokens
    inner: dict  # every k-gram (floor <= k < n) of every held-out row
    short_lengths: list[int]

    @classmethod
    def build(cls, heldout_texts: Sequence[str], n: int = 13, floor: int = 6) -> "NgramIndex":
        idx = cls(n, min(floor, n), {}, {}, {}, [])
        lengths = set()
        for h, text in enumerate(heldout_texts):
            toks = tuple(tokens(text))
            L = len(toks)
            if L >= n:
                for j in range(L - n + 1):
                    idx.long.setdefault(toks[j : j + n], h)
            elif L >= idx.floor:
                idx.whole_short.setdefault(toks, h)
                lengths.add(L)
            for k in range(idx.floor, min(n, L + 1)):
                for j in range(L - k + 1):
                    idx.inner.setdefault(toks[j : j + k], h)
        idx.short_lengths = sorted(lengths)
        return idx

    def match(self, text: str) -> tuple[int, float] | None:
        """(held-out row index, share of the text's tokens inside matched runs) or None."""
        toks = tuple(tokens(text))
        L = len(toks)
        if L < self.floor:
            return None
        covered = np.zeros(L, dtype=bool)
        votes: dict[int, int] = {}

        def hit(h: int, j: int, k: int) -> None:
            covered[j : j + k] = True
            votes[h] = votes.get(h, 0) + 1

        if L >= self.n:
            for j in range(L - self.n + 1):
                h = self.long.get(toks[j : j + self.n])
                if h is not None:
                    hit(h, j, self.n)
        else:
            h = self.inner.get(toks)
            if h is not None:
                hit(h, 0, L)
        for k in self.short_lengths:
            if k > L:
                break
            for j in range(L - k + 1):
                h = self.whole_short.get(toks[j : j + k])
                if h is not None:
                    hit(h, j, k)
        if not votes:
            return None
        best = max(votes, key=lambda h: (votes[h], -h))
        return best, float(covered.mean())


def heldout_vectors(heldout, embedder) -> np.ndarray:
    return embedder.encode(list(heldout["text"]))


def embedding_matches(vectors: np.ndarray, held_vectors: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(text index, held-out index, cosine) for every text whose nearest held-out row is >= threshold."""
    import faiss

    if len(vectors) == 0 or len(held_vectors) == 0:
        return []
    index = faiss.IndexFlatIP(held_vectors.shape[1])
    index.add(np.ascontiguousarray(held_vectors, dtype=np.float32))
    sims, nn = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return [(i, int(nn[i, 0]), float(sims[i, 0])) for i in range(len(vectors)) if sims[i, 0] >= threshold - 1e-6]


def find_contamination(
    texts: list[str],
    ids: list[str],
    heldout,
    cfg,
    embedder=None,
    *,
    vectors: np.ndarray | None = None,
) -> list[dict]:
    """Every (row, held-out row) leak: dicts {row_id, heldout_id, kind: 'ngram'|'embedding', score}.

    `cfg`: the task's `Curation` section (or the whole spec). `score` is the share of the row's
    tokens covered by shared n-grams, or the cosine. A row may appear once per kind.
    `vectors`: the rows' embeddings when the caller already has them (else computed, cached).
    The embedding check is skipped when `decontam_cosine` is None.
    """
    c = _cfg(cfg)
    if len(texts) != len(ids):
        raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
    out: list[dict] = []
    if heldout is None or len(heldout) == 0 or not texts:
        return out
    held_ids = list(heldout["id"])
    ngrams = NgramIndex.build(heldout["text"], c.decontamination.ngram, c.decontamination.min_tokens)
    for i, t in enumerate(texts):
        m = ngrams.match(t)
        if m:
            out.append({"row_id": ids[i], "heldout_id": held_ids[m[0]], "kind": "ngram", "score": round(m[1], 4)})
    if c.decontamination.cosine is not None:
        if embedder is None:
            from curation.embed import Embedder

            embedder = Embedder(c.embeddings.model, batch_size=c.embeddings.batch_size, threads=c.embeddings.threads)
        vecs = vectors if vectors is not None else embedder.encode(texts)
        for i, h, s in embedding_matches(vecs, heldout_vectors(heldout, embedder), c.decontamination.cosine):
            out.append({"row_id": ids[i], "heldout_id": held_ids[h], "kind": "embedding", "score": round(s, 4)})
    order = {rid: k for k, rid in enumerate(ids)}
    out.sort(key=lambda d: (order[d["row_id"]], d["kind"] != "ngram"))
    return out


class ContaminationError(UserError, RuntimeError):
    """Training data overlaps the locked held-out set."""


# Every column a trainer reads (SFT: prompt/completion or messages; DPO: prompt/chosen/rejected),
# plus `text`, the row's message as curation saw it. A column holds a string or a conversation.
TRAINED_COLUMNS = ("prompt", "completion", "chosen", "rejected", "messages", "text")


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return _strings(value.get("content"))
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def trained_strings(ds, id_prefix: str = "row") -> tuple[list[str], list[str], list[str]]:
    """(texts, row ids, columns): every string of every trained column, message contents included.

    This is what the gate checks, not one chosen column: held-out text in `prompt`, `completion`,
    `chosen` or `rejected` is trained on just the same as in `text`.
    """
    cols = [c for c in TRAINED_COLUMNS if c in ds.column_names]
    ids = [str(i) for i in ds["id"]] if "id" in ds.column_names else [f"{id_prefix}-{i}" for i in range(len(ds))]
    texts, row_ids, where = [], [], []
    for col in cols:
        for rid, value in zip(ids, ds[col]):
            for t in _strings(value):
                if t.strip():
                    texts.append(t), row_ids.append(rid), where.append(col)
    return texts, row_ids, where


def assert_clean(texts: list[str], ids: list[str], heldout, cfg, embedder=None, *,
                 columns: list[str] | None = None, what: str = "training") -> None:
    """The trainer's gate: raise naming the first leaking rows (ids, columns; never the text).

    Identical strings (the system prompt every row shares, label answers) are checked once.
    """
    if len(texts) != len(ids) or (columns is not None and len(columns) != len(ids)):
        raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
    unique = list(dict.fromkeys(texts))
    pos = {t: k for k, t in enumerate(unique)}
    found: dict[int, list[dict]] = {}
    for d in find_contamination(unique, [str(k) for k in range(len(unique))], heldout, cfg, embedder):
        found.setdefault(int(d["row_id"]), []).append(d)
    leaks = [(ids[i], columns[i] if columns else None, d) for i, t in enumerate(texts) for d in found.get(pos[t], [])]
    if leaks:
        rows = sorted({rid for rid, _, _ in leaks})
        first = ", ".join(f"{rid}{f' [{col}]' if col else ''}~{d['heldout_id']} ({d['kind']} {d['score']})"
                          for rid, col, d in leaks[:5])
        raise ContaminationError(f"{len(rows)} {what} row(s) overlap the locked held-out set: {first}"
                                 f"{f' (+{len(leaks) - 5} more)' if len(leaks) > 5 else ''}")
