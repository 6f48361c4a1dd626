"""Score extraction answers (one JSON object per row, shaped by the task's JSON Schema).

Why these rules:
- A model's raw text is parsed leniently (`parse_prediction`): small models wrap JSON in code
  fences or add a sentence around it. That is a formatting habit, not an extraction error, so it
  is forgiven; what is not forgiven is an answer that is no object or breaks the schema.
- A row is *valid* when its text holds a JSON object that validates against the schema: only
  such an answer can be handed to the code that consumes the extraction. The raw view counts an
  invalid row as predicting nothing (every gold field missed); the valid-only view scores the
  valid rows alone, so "it extracts well when it answers in shape" and "it answers in shape"
  can be told apart.
- Null and absent mean the same ("not mentioned"): schemas differ on whether a field is required
  with a null or left out, and a model should not be punished for choosing the other one.
- Values are compared after canonicalization (strip, casefold, one space between words; 100.0 ==
  100): "Lidl" vs "lidl " is the same extraction. Anything else is a wrong value.
- Per field: predicted = present and non-null; true positive = present in both and equal; a wrong
  value is a false positive AND a false negative; a field absent/null in both is neither. A key
  the schema does not name (a hallucinated field) is a false positive in the micro F1 and shows
  in `per_field` marked `extra`; macro F1 averages the schema's fields only (a fixed set, so two
  models' macro F1 are comparable), skipping fields with neither gold nor predictions.
- Every headline number has a bootstrap 95 % CI over rows; all metrics share the same resamples
  (same seed as heldout.evaluate.bootstrap_ci), so their CIs are paired.
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from distilforge.errors import DataError

from heldout.evaluate import bootstrap_ci

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.S)


# ---------------------------------------------------------------- canonical form
def canonical_value(v: Any) -> Any:
    """The comparison form of one value: strings stripped, casefolded, inner whitespace collapsed;
    integral floats as ints (100.0 == 100); lists and objects canonicalized inside (nulls dropped)."""
    if isinstance(v, str):
        return " ".join(v.split()).casefold()
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return int(v) if float(v).is_integer() else float(v)
    if isinstance(v, list):
        return [canonical_value(x) for x in v]
    if isinstance(v, dict):
        return {k: canonical_value(x) for k, x in v.items() if x is not None}
    return v


def _ordered(obj: dict, schema: dict | None, fold: bool) -> dict:
    """Keys in the schema's `properties` order, then any others sorted; nulls dropped; recursive."""
    props = (schema or {}).get("properties") or {}
    keys = [k for k in props if k in obj] + sorted(k for k in obj if k not in props)
    out = {}
    for k in keys:
        v = obj[k]
        if v is None:
            continue
        sub = props.get(k) if isinstance(props.get(k), dict) else None
        if isinstance(v, dict):
            out[k] = _ordered(v, sub, fold)
        elif isinstance(v, list):
            item = (sub or {}).get("items") if isinstance((sub or {}).get("items"), dict) else None
            out[k] = [_ordered(x, item, fold) if isinstance(x, dict) else (canonical_value(x) if fold else x)
                      for x in v]
        else:
            out[k] = canonical_value(v) if fold else v
    return out


def canonical(obj: dict, schema: dict | None = None, fold: bool = False) -> str:
    """Canonical JSON of an answer: keys in schema order (unknown keys after, sorted), nulls dropped
    (null == absent), no whitespace variation. `fold=True` also canonicalizes every value (see
    `canonical_value`) — the form two answers are compared in; `fold=False` keeps values as written
    (the form to store or train on)."""
    return json.dumps(_ordered(obj, schema, fold), ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------- parsing
def parse_prediction(raw: str | None) -> tuple[dict | None, str | None]:
    """The JSON object in a model's raw text, or (None, why not).

    Tried in order: the whole text; the inside of each ``` code fence; then the first `{` from
    which a JSON value decodes (so leading or trailing prose is ignored). A decoded value that is
    not an object (a list, a string) is an error, not an answer."""
    text = (raw or "").strip()
    if not text:
        return None, "empty answer"
    candidates = [text] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    other = None
    for c in candidates:
        try:
            v = json.loads(c)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(v, dict):
            return v, None
        other = other or type(v).__name__
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            v, _ = dec.raw_decode(text, m.start())
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(v, dict):
            return v, None
    if other:
        return None, f"JSON is a {other}, not an object"
    return None, "no JSON object in the answer"


def _validator(schema: dict):
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def check(raw: str | None, validator) -> tuple[dict | None, str | None]:
    """Parse and validate one answer: (object, None) when valid, else (object or None, reason)."""
    obj, err = parse_prediction(raw)
    if obj is None:
        return None, err
    bad = next(iter(validator.iter_errors(obj)), None)
    if bad is not None:
        where = "/".join(map(str, bad.absolute_path)) or "(root)"
        return obj, f"schema: {where}: {bad.message}"
    return obj, None


# ---------------------------------------------------------------- scoring
def _f1(tp, fp, fn):
    """P, R, F1 from counts (arrays or scalars); 0 where undefined (nothing predicted / no gold)."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return p, r, f


def _counts(pred: dict | None, gold: dict, fields: list[str]) -> np.ndarray:
    """[fields, 3] tp/fp/fn of one row (a None prediction predicts nothing)."""
    out = np.zeros((len(fields), 3))
    pred = pred or {}
    for j, f in enumerate(fields):
        g, p = gold.get(f), pred.get(f)
        if p is not None and g is not None and canonical_value(p) == canonical_value(g):
            out[j, 0] = 1
        else:
            out[j, 1] = p is not None
            out[j, 2] = g is not None
    return out


def _weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] how often each row is drawn — the same draws bootstrap_ci makes with this seed."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return np.bincount((idx + np.arange(n_boot)[:, None] * n).ravel(), minlength=n_boot * n).reshape(n_boot, n)


def _ci(values: np.ndarray) -> list[float] | None:
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    return [round(float(np.percentile(values, 2.5)), 4), round(float(np.percentile(values, 97.5)), 4)]


def _macro(tp, fp, fn, schema_mask):
    """Mean F1 over schema fields that have gold or predictions (last axis = fields)."""
    f = _f1(tp, fp, fn)[2]
    used = ((tp + fp + fn) > 0) & schema_mask
    with np.errstate(invalid="ignore"):
        return np.where(used.sum(-1) > 0, (f * used).sum(-1) / np.maximum(used.sum(-1), 1), np.nan)


def _view(counts: np.ndarray, exact: list[int], fields: list[str], n_schema: int, n_boot: int, seed: int) -> dict:
    """Metrics of one set of rows: counts [rows, fields, 3]."""
    n = len(counts)
    mask = np.arange(len(fields)) < n_schema
    if n == 0:  # no valid row: nothing to measure (None, not NaN, so the dict stays strict JSON)
        return {"n": 0, "exact_match": None, "exact_match_ci": None, "micro_precision": None,
                "micro_recall": None, "micro_f1": None, "micro_f1_ci": None, "macro_f1": None,
                "macro_f1_ci": None, "per_field": {}}
    tot = counts.sum(axis=0)  # [fields, 3]
    p, r, f = _f1(tot[:, 0], tot[:, 1], tot[:, 2])
    per_field = {}
    for j, name in enumerate(fields):
        per_field[name] = {"precision": round(float(p[j]), 4), "recall": round(float(r[j]), 4),
                           "f1": round(float(f[j]), 4), "tp": int(tot[j, 0]), "fp": int(tot[j, 1]),
                           "fn": int(tot[j, 2]), "support": int(tot[j, 0] + tot[j, 2]),
                           "predicted": int(tot[j, 0] + tot[j, 1]), **({"extra": True} if j >= n_schema else {})}
    mp, mr, mf = _f1(*tot.sum(axis=0))
    macro = _macro(tot[:, 0], tot[:, 1], tot[:, 2], mask)
    w = _weights(n, n_boot, seed)
    boot = np.einsum("bn,nfk->bfk", w, counts)  # [n_boot, fields, 3]
    micro_b = _f1(*boot.sum(axis=1).T)[2]
    macro_b = _macro(boot[..., 0], boot[..., 1], boot[..., 2], mask)
    return {"n": n, "exact_match": round(float(np.mean(exact)), 4), "exact_match_ci": bootstrap_ci(exact, n_boot, seed),
            "micro_precision": round(float(mp), 4), "micro_recall": round(float(mr), 4),
            "micro_f1": round(float(mf), 4), "micro_f1_ci": _ci(micro_b),
            "macro_f1": None if np.isnan(macro) else round(float(macro), 4), "macro_f1_ci": _ci(macro_b),
            "per_field": per_field}


def score(preds_raw: list[str], gold: list[dict], schema: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """Score raw model answers against gold answer objects.

    Returns a JSON-ready dict: `n`; `json_validity` (+ `_ci`): share of rows whose text holds an
    object that validates against `schema`; `raw`: metrics over all rows, an invalid row
    predicting nothing; `valid_only`: the same metrics over the valid rows alone (its `n` says how
    many). Each view has `exact_match`, `micro_precision/recall/f1`, `macro_f1` (headline ones with
    `_ci`) and `per_field` {field: precision, recall, f1, tp, fp, fn, support, predicted}. `rows`
    lists per row `valid`, `error` (why invalid, else None), `exact` and its field counts `tp`,
    `fp`, `fn` (all fields; an invalid row predicts nothing). A number that cannot be
    measured (the valid-only view with no valid row, a macro F1 with no field in play) is None."""
    if not gold:
        raise DataError("extraction scoring: no gold rows to score")
    if len(preds_raw) != len(gold):
        raise DataError(f"extraction scoring: {len(preds_raw)} predictions for {len(gold)} gold rows")
    for i, g in enumerate(gold):
        if not isinstance(g, dict):
            raise DataError(f"extraction scoring: gold row {i}: expected a JSON object, got {type(g).__name__}")
    validator = _validator(schema)
    checked = [check(raw, validator) for raw in preds_raw]
    valid = [int(err is None) for _, err in checked]
    preds = [obj if err is None else None for obj, err in checked]
    fields = list((schema.get("properties") or {}))
    n_schema = len(fields)
    fields += sorted({k for p in preds if p for k, v in p.items() if v is not None and k not in fields}
                     | {k for g in gold for k, v in g.items() if v is not None and k not in fields})
    counts = np.array([_counts(p, g, fields) for p, g in zip(preds, gold)]).reshape(len(gold), len(fields), 3)
    exact = [int(p is not None and canonical(p, schema, fold=True) == canonical(g, schema, fold=True))
             for p, g in zip(preds, gold)]
    keep = [i for i, v in enumerate(valid) if v]
    return {"n": len(gold),
            "json_validity": round(float(np.mean(valid)), 4),
            "json_validity_ci": bootstrap_ci(valid, n_boot, seed),
            "raw": _view(counts, exact, fields, n_schema, n_boot, seed),
            "valid_only": _view(counts[keep], [exact[i] for i in keep], fields, n_schema, n_boot, seed),
            "rows": [{"valid": bool(v), "error": err, "exact": bool(e), "tp": int(c[:, 0].sum()),
                      "fp": int(c[:, 1].sum()), "fn": int(c[:, 2].sum())}
                     for v, (_, err), e, c in zip(valid, checked, exact, counts)]}


def micro_f1_rows(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> tuple[float, list[float] | None]:
    """Micro field-F1 of some rows of a `score()["rows"]` list, with its bootstrap 95 % CI: one
    model's score on another model's subset (the teacher's), for a same-rows comparison."""
    if not rows:
        raise DataError("extraction score: no rows")
    c = np.array([[r["tp"], r["fp"], r["fn"]] for r in rows], dtype=float)
    w = _weights(len(rows), n_boot, seed).astype(float)
    return round(float(_f1(*c.sum(0))[2]), 4), _ci(_f1(*(w @ c).T)[2])


def paired_bootstrap_f1(a: list[dict], b: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Micro field-F1 of model a minus model b on the same rows (each model's `score()["rows"]`,
    same order), with a 95 % CI and a two-sided p-value from one set of row resamples shared by
    both: the headline metric itself is compared, not a per-row average of it."""
    if len(a) != len(b) or not a:
        raise DataError(f"extraction comparison: {len(a)} rows vs {len(b)} rows")
    ca, cb = (np.array([[r["tp"], r["fp"], r["fn"]] for r in x], dtype=float) for x in (a, b))
    w = _weights(len(a), n_boot, seed).astype(float)
    d = _f1(*(w @ ca).T)[2] - _f1(*(w @ cb).T)[2]
    diff = float(_f1(*ca.sum(0))[2] - _f1(*cb.sum(0))[2])
    p = 2 * min((d <= 0).mean(), (d >= 0).mean())
    return {"metric": "micro_f1", "diff": round(diff, 4), "ci": [round(float(np.percentile(d, 2.5)), 4),
            round(float(np.percentile(d, 97.5)), 4)], "p_value": round(float(min(1.0, p)), 4)}
