"""Worker-side, row-at-a-time work for the Ray backend: checks, encode, decontamination, order.

Everything here runs inside Ray tasks/actors on one batch of rows and calls the SAME functions
the local funnel calls (curation.filters, curation.dedup, curation.decontam, curation.embed), so
a row gets the same verdict, the same vector and the same detail string on either backend.
Nothing here imports `ray`; the driver (curation/raybackend/__init__.py) wires it up.

Batch columns used across passes: `_k` (row position in the raw dataset: the row key, since ids
may repeat), `step` (index of the funnel step that rejected the row, -1 = still in play),
`detail`, `id`, `label`, `text`, `judge` (NaN = no score), `ntok`, `ekey` (exact-dedup hash),
`bands` (MinHash LSH band keys), `vec` (normalized embedding).
"""
from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from curation import agreement, dedup, filters

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec

Check = tuple[str, str, Callable[[dict], "str | None"]]  # (funnel step, reason, row -> detail|None)


def _judge(r: dict) -> float | None:
    s = r.get("judge_score")
    return None if s is None or (isinstance(s, float) and math.isnan(s)) else float(s)


def row_checks(spec: TaskSpec, has_judge_column: bool) -> list[Check]:
    """The per-row funnel steps in the order `curation.curate.curate` runs them.

    A row's verdict is its FIRST failing check: exactly what the local funnel computes by running
    each step over the rows that passed the steps before it."""
    cfg = spec.curation
    label_set = set(spec.label_names)
    out: list[Check] = [
        ("generation_ok", "generation_failed", filters.generation_failed),
        ("schema_valid", "schema_invalid", filters.schema_problem),
        ("label_in_set", "label_not_in_set", lambda r: filters.label_problem(r, label_set)),
    ]
    out += [(reason, reason, check) for reason, check in filters.heuristic_checks(spec)]
    if cfg.filters.judge_min_score is not None and has_judge_column:
        def judged(r: dict) -> str | None:
            s = _judge(r)
            if s is None:
                return "no judge score" if cfg.filters.judge_missing == "drop" else None
            return f"judge score {s:g} < {cfg.filters.judge_min_score:g}" if s < cfg.filters.judge_min_score else None

        out.append(("judge_score", "low_judge_score", judged))
    out += agreement.checks(spec)  # teacher_disagrees: the local funnel's step, same function
    return out


_CHECKS: dict[str, list[Check]] = {}  # per worker process: spec json -> built checks (regexes, echo index)


def exact_key(text: str, label: str | None) -> int:
    """64-bit hash of what exact dedup compares: (label when per-label) + normalized text.
    Only the shuffle key: inside a partition `dedup.exact_dedup` compares the real strings."""
    h = hashlib.blake2b(f"{label or ''}\x1f{dedup.normalize(text)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little", signed=True)


def check_batch(batch, spec: TaskSpec, has_judge_column: bool, lsh: tuple[int, int] | None) -> dict:
    """Phase A: verdict of every row, plus the per-row keys later passes shuffle on (survivors only).

    `batch`: a pyarrow Table of raw rows (with `_k`), turned into the same Python dicts that
    iterating an HF dataset yields, so the checks see identical values. `lsh`: (bands, rows per
    band) when MinHash dedup is on."""
    key = spec.model_dump_json()
    if key not in _CHECKS:
        _CHECKS[key] = row_checks(spec, has_judge_column)
    checks = _CHECKS[key]
    cfg = spec.curation
    rows = batch.to_pylist()
    n = len(rows)
    step = np.full(n, -1, dtype=np.int16)
    detail: list[str | None] = [None] * n
    for i, r in enumerate(rows):
        for s, (_, _, check) in enumerate(checks):
            d = check(r)
            if d is not None:
                step[i], detail[i] = s, d
                break
    ok = step < 0
    text = np.array([r["text"] if ok[i] else "" for i, r in enumerate(rows)], dtype=object)
    label = np.array([r["label"] if ok[i] else "" for i, r in enumerate(rows)], dtype=object)
    judge = np.array([(_judge(r) if ok[i] else None) for i, r in enumerate(rows)], dtype=float)  # None -> nan
    per_label = not cfg.dedup.across_labels
    out = {
        "_k": np.array([r["_k"] for r in rows], dtype=np.int64), "step": step,
        "detail": np.array(detail, dtype=object),
        "id": np.array([str(r["id"]) if ok[i] else "" for i, r in enumerate(rows)], dtype=object),
        "label": label, "text": text, "judge": judge,
        # a real traffic row (traffic.STRATEGY): the likeness filter passes it, the ranking puts it first
        "real": np.array([r.get("strategy") == "traffic" for r in rows], dtype=bool),
        "ntok": np.array([len(dedup.tokens(t)) if ok[i] else 0 for i, t in enumerate(text)], dtype=np.int64),
        "ekey": np.array([exact_key(t, lab if per_label else None) if ok[i] else 0
                          for i, (t, lab) in enumerate(zip(text, label))], dtype=np.int64),
    }
    if lsh is not None:
        bands, per_band = lsh
        keys = np.zeros((n, bands), dtype=np.uint64)
        if ok.any():
            sets = [dedup.shingles(t, cfg.dedup.minhash_ngram) for t in text[ok]]
            sig = dedup.minhash_signatures(sets, cfg.dedup.minhash_num_perm)
            keys[ok] = dedup.band_keys(sig, bands, per_band)
        out["bands"] = keys
    return out


def select_rows(batch: dict, *, failed: bool) -> dict:
    """Rows a check rejected (`failed=True`) or the ones still in play."""
    mask = batch["step"] >= 0 if failed else batch["step"] < 0
    return {k: v[mask] for k, v in batch.items()}


def drop_keys(batch: dict, dropped: np.ndarray) -> dict:
    """Rows still in play: `dropped` is the sorted array of row keys rejected so far (broadcast)."""
    if len(dropped) == 0:
        return batch
    keep = ~np.isin(batch["_k"], dropped, assume_unique=False)
    return {k: v[keep] for k, v in batch.items()}


def quality_order(judge, ntok, label, ks, med: dict, min_tokens: int, max_tokens: int) -> np.ndarray:
    """Positions best-first, the key of `curation.dedup.quality_order` with the row key as the
    last tie-break (local rows are in row-key order, so that is the same order).

    `med`: median token count per label over the rows in play, computed over the whole dataset
    by the driver (a per-partition median would change which row a group keeps)."""
    j = np.where(np.isnan(judge), np.inf, -np.asarray(judge, dtype=float))
    ntok = np.asarray(ntok)
    out_of_bounds = np.where((ntok >= min_tokens) & (ntok <= max_tokens), 0, 1)
    # math.log, element by element, exactly as the local key computes it (no ulp differences)
    dev = np.array([abs(math.log(max(int(n), 1) / med[lab])) for n, lab in zip(ntok, label)], dtype=float)
    return np.lexsort((np.asarray(ks), dev, out_of_bounds, j))


class Encoder:
    """Ray Data actor: `Embedder.encode` per batch (the same class, cache and normalization the
    local path uses). The model is loaded once per actor, on its first cache miss: a rerun whose
    vectors are all cached never pays the ~10 s torch import + load per actor."""

    def __init__(self, model: str, batch_size: int, threads: int, cache_root: str | None):
        from curation.embed import Embedder

        self.emb = Embedder(model, batch_size=batch_size, threads=threads, cache_root=cache_root)

    def __call__(self, batch: dict) -> dict:
        batch["vec"] = self.emb.encode([str(t) for t in batch["text"]])
        return batch


_HELD: dict[str, tuple] = {}  # per worker process: held-out object ref -> (ids, vectors, n-gram index)


def _held_index(held, cfg) -> tuple:
    """The broadcast held-out set, fetched and indexed once per worker process."""
    from curation.decontam import NgramIndex

    ref = held[0]  # an ObjectRef inside a list, so Ray passes it through unresolved
    key = f"{ref.hex()}:{cfg.decontamination.ngram}:{cfg.decontamination.min_tokens}"
    if key not in _HELD:
        import ray

        h = ray.get(ref)
        _HELD.clear()
        _HELD[key] = (h["ids"], h["vecs"], NgramIndex.build(h["texts"], cfg.decontamination.ngram, cfg.decontamination.min_tokens))
    return _HELD[key]


def leak_details(batch: dict, held, cfg) -> dict[int, tuple[str, list[str]]]:
    """Position -> (detail, kinds) for every row that copies a held-out row: the checks and the
    detail text of `decontam.find_contamination` + the local funnel (n-gram first, then cosine)."""
    from curation.decontam import embedding_matches

    ids, vecs, ngrams = _held_index(held, cfg)
    found: dict[int, list[tuple[str, str, float]]] = {}
    for i, t in enumerate(batch["text"]):
        m = ngrams.match(str(t))
        if m:
            found.setdefault(i, []).append(("ngram", ids[m[0]], round(m[1], 4)))
    if cfg.decontamination.cosine is not None and vecs is not None and "vec" in batch and len(batch["_k"]):
        for i, h, s in embedding_matches(batch["vec"], vecs, cfg.decontamination.cosine):
            found.setdefault(i, []).append(("embedding", ids[h], round(s, 4)))
    out = {}
    for i, hits in found.items():
        parts = [f"held-out row {hid} ({'n-gram overlap' if kind == 'ngram' else 'cosine'} {score:.2f})"
                 for kind, hid, score in hits]
        out[i] = ("; ".join(parts), [kind for kind, _, _ in hits])
    return out


def nearest_traffic(batch: dict, ref) -> dict:
    """Each row's cosine to its nearest real traffic message (the broadcast reference vectors),
    as `curate._unlike_traffic` computes it."""
    import ray

    from curation.embed import nearest_similarity

    r = ray.get(ref[0])  # an ObjectRef inside a list, so Ray passes it through unresolved
    near = nearest_similarity(batch["vec"].astype(np.float32) if len(batch["_k"]) else np.zeros((0, r.shape[1])), r)
    return {"_k": batch["_k"], "near": near, "real": batch["real"], "label": batch["label"], "ntok": batch["ntok"]}


def scan_batch(batch: dict, held, cfg) -> dict:
    """Decontamination verdicts (when `held` is given) plus the (label, token count) histogram of
    the rows that stay, in one pass: leak records have `_k` >= 0, histogram records `_k` = -1."""
    leaks = leak_details(batch, held, cfg) if held is not None else {}
    hist: dict[tuple[str, int], int] = {}
    for i, (lab, n) in enumerate(zip(batch["label"], batch["ntok"])):
        if i not in leaks:
            hist[(lab, int(n))] = hist.get((lab, int(n)), 0) + 1
    idx = sorted(leaks)
    m, h = len(idx), len(hist)
    return {
        "_k": np.concatenate([batch["_k"][idx].astype(np.int64), np.full(h, -1, np.int64)]),
        "detail": np.array([leaks[i][0] for i in idx] + [None] * h, dtype=object),
        "kinds": np.array([",".join(leaks[i][1]) for i in idx] + [None] * h, dtype=object),
        "label": np.array([None] * m + [k[0] for k in hist], dtype=object),
        "ntok": np.array([0] * m + [k[1] for k in hist], dtype=np.int64),
        "count": np.array([0] * m + list(hist.values()), dtype=np.int64),
    }
