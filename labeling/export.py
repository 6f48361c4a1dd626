"""`distilforge review export RUN`: the approved rows — what `train` consumes — and the rejected ones.

A row's submitted decisions (drafts and discards are not votes) are weighed by a policy:
  one        approved when at least one reviewer accepted (the default: one pair of eyes suffices);
  majority   approved when more than half of its reviewers accepted (a tie is not a majority);
  unanimous  approved when every reviewer accepted.
`--min-reviewers N` leaves rows with fewer submitted decisions undecided (neither exported nor
rejected). Approved rows take their accepting reviewers' correction (typed answer, or a changed
label), validated like the teacher's answers were (label in the label set, JSON against the schema);
an invalid correction sends the row to `rejected` instead of silently training on the answer the
reviewer said was wrong. Reviews of an older version of a row (its text or answer changed since)
are ignored as stale.

Outputs: RUN/review/export/{approved,rejected} (+ prefs_approved when preference pairs were
reviewed) and its manifest — the trainer switches to `approved` once that manifest exists
(distilforge/sources.py::training_source) — and approved/rejected counts in RUN/review/manifest.json.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import datasets

from distilforge.layout import Run
from distilforge.manifest import Stage, load_dataset_dir, output_hash, read_manifest
from heldout.formats import task_format
from labeling.push import ReviewInputError, _content, record_id, row_fields, update_review_manifest
from labeling.review_analysis import judge_vs_human, rater_agreement

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec

POLICIES = ("one", "majority", "unanimous")
PROVENANCE = {"reviewers": datasets.Value("int64"), "accepts": datasets.Value("int64"),
              "rejects": datasets.Value("int64"), "agreement": datasets.Value("float64")}


def decide(votes: list[str], policy: str = "one", min_reviewers: int = 1) -> Optional[bool]:
    """True approved, False rejected, None undecided (fewer than `min_reviewers` decisions)."""
    if policy not in POLICIES:
        raise ReviewInputError(f"unknown policy '{policy}' (one of: {', '.join(POLICIES)})")
    n, acc = len(votes), votes.count("accept")
    if n == 0 or n < min_reviewers:
        return None
    if policy == "one":
        return acc >= 1
    if policy == "majority":
        return 2 * acc > n
    return acc == n


def validate_answer(spec: TaskSpec, raw: str) -> tuple[Optional[str], str]:
    """A reviewer's answer → (canonical answer, "") or (None, why it cannot be trained on): the
    task format's check, the one the teacher's answers passed (label in the label set, JSON
    against the schema)."""
    raw = (raw or "").strip()
    if not raw:
        return None, "empty correction"
    return task_format(spec).validate_correction(raw)


def correction(spec: TaskSpec, accepting: list[dict], current_label: Optional[str]) -> Optional[str]:
    """The raw correction of the accepting reviewers: typed answers first, then a changed label;
    the most common one wins, ties go to the latest response."""
    cands = []
    for r in accepting:
        if r.get("corrected"):
            cands.append((r["corrected"].strip(), r.get("updated_at") or ""))
        elif spec.label_names and r.get("label_answer"):  # a label question (classification)
            norm = lambda s: ", ".join(sorted(x.strip() for x in s.split(",")))  # noqa: E731
            if norm(r["label_answer"]) != norm(current_label or ""):
                cands.append((r["label_answer"], r.get("updated_at") or ""))
    if not cands:
        return None
    counts = Counter(c for c, _ in cands)
    return max(cands, key=lambda c: (counts[c[0]], c[1]))[0]


def _features(src: datasets.Features, extra: dict) -> datasets.Features:
    f = src.copy()
    f.update(extra)
    return f


def _dataset(rows: list[dict], feats: datasets.Features) -> datasets.Dataset:
    if not rows:
        return datasets.Dataset.from_dict({k: [] for k in feats}, features=feats)
    return datasets.Dataset.from_list(rows, features=feats)


def export_rows(spec: TaskSpec, fmt: str, rows: list[dict], reviews: list[dict], policy: str = "one",
                min_reviewers: int = 1) -> dict:
    """Split one format's rows into approved (corrected) / rejected / undecided / stale."""
    votes: dict[str, list[dict]] = defaultdict(list)
    for r in reviews:
        if r["format"] == fmt and r["status"] == "submitted" and r.get("decision") in ("accept", "reject"):
            votes[r["id"]].append(r)
    approved, rejected = [], []
    counts = Counter()
    answer_key = "chosen" if fmt == "prefs" else "completion"
    for row in rows:
        current = record_id(row, row_fields(fmt, row))
        rv = [r for r in votes.get(row["id"], []) if r["record_id"] == current]
        if votes.get(row["id"]) and not rv:
            counts["stale"] += 1
        verdict = decide([r["decision"] for r in rv], policy, min_reviewers)
        if verdict is None:
            counts["undecided"] += 1
            continue
        acc = [r for r in rv if r["decision"] == "accept"]
        prov = {"reviewers": len(rv), "accepts": len(acc), "rejects": len(rv) - len(acc),
                "agreement": round((len(acc) if verdict else len(rv) - len(acc)) / len(rv), 4)}
        users = sorted({r["user"] for r in rv})
        if verdict:
            raw = correction(spec, acc, row.get("label") if fmt == "sft" else None)
            out = {**row, **prov, "corrected": False, "original_completion": _content(row[answer_key]),
                   "reviewed_by": users}
            if raw is not None:
                value, err = validate_answer(spec, raw)
                if value is None:
                    counts["invalid_correction"] += 1
                    rejected.append({**row, **prov, "reasons": ["invalid_correction"], "reason": "invalid_correction",
                                     "detail": f"accepted with a correction that cannot be used: {err}"})
                    continue
                if fmt == "sft" and task_format(spec).has_labels:
                    out["label"] = value
                out[answer_key] = [{"role": "assistant", "content": value}]
                out["corrected"] = value != out["original_completion"]
                counts["corrected"] += int(out["corrected"])
            approved.append(out)
        else:
            reasons = Counter(x for r in rv if r["decision"] == "reject" for x in (r.get("reject_reasons") or []))
            names = [k for k, _ in reasons.most_common()]
            rejected.append({**row, **prov, "reasons": names, "reason": "rejected_by_review",
                             "detail": f"{prov['rejects']}/{prov['reviewers']} reviewer(s) rejected"
                                       + (f": {', '.join(names)}" if names else "")})
    counts.update(approved=len(approved), rejected=len(rejected))
    return {"approved": approved, "rejected": rejected, "counts": dict(counts)}


def export_run(run: Path, spec: TaskSpec, policy: str = "one", min_reviewers: int = 1) -> dict:
    """Write RUN/review/export (approved / rejected [/ prefs_approved]) and its manifest."""
    run = Path(run)
    r = Run(run)
    if min_reviewers < 1:
        raise ReviewInputError(f"--min-reviewers must be >= 1 (got {min_reviewers})")
    decide([], policy)  # validates the policy name before any work
    rev_m = read_manifest(r.review) or {}
    if "reviews" not in rev_m.get("outputs", {}) or not r.reviews.exists():
        raise ReviewInputError(f"no pulled reviews in {r.review}: run `distilforge review pull {run}` first")
    reviews = list(load_dataset_dir(r.reviews))
    curated = load_dataset_dir(r.curated)
    res = export_rows(spec, "sft", list(curated), reviews, policy, min_reviewers)
    if not res["approved"]:
        raise ReviewInputError(f"no row is approved under policy '{policy}' (min reviewers {min_reviewers}): nothing "
                          f"exported, training keeps using the curated set ({res['counts']})")
    inputs = {"reviews": rev_m["outputs"]["reviews"]["sha256"], "curate": output_hash(r.curate, "curated")}
    prefs = None
    if any(x["format"] == "prefs" for x in reviews) and r.generated_prefs.exists():
        prefs_ds = load_dataset_dir(r.generated_prefs)
        prefs = (prefs_ds, export_rows(spec, "prefs", list(prefs_ds), reviews, policy, min_reviewers))
    st = Stage(r.review_export, "review_export", inputs, {"policy": policy, "min_reviewers": min_reviewers})
    st.begin()
    approved_f = _features(curated.features, {**PROVENANCE, "corrected": datasets.Value("bool"),
                                              "original_completion": datasets.Value("string"),
                                              "reviewed_by": datasets.Sequence(datasets.Value("string"))})
    rejected_f = _features(curated.features, {**PROVENANCE, "reasons": datasets.Sequence(datasets.Value("string")),
                                              "reason": datasets.Value("string"), "detail": datasets.Value("string")})
    st.save("approved", _dataset(res["approved"], approved_f))
    st.save("rejected", _dataset(res["rejected"], rejected_f))
    extra = {}
    if prefs is not None:
        pf = _features(prefs[0].features, {**PROVENANCE, "corrected": datasets.Value("bool"),
                                           "original_completion": datasets.Value("string"),
                                           "reviewed_by": datasets.Sequence(datasets.Value("string"))})
        st.save("prefs_approved", _dataset(prefs[1]["approved"], pf))
        extra["prefs"] = prefs[1]["counts"]
    agreement = rater_agreement(reviews, "decision")
    jvh = judge_vs_human(reviews)
    m = st.finish(policy=policy, min_reviewers=min_reviewers, **res["counts"], **extra,
                  agreement=agreement, judge_vs_human={q: {k: jvh[q][k] for k in ("pairs", "agreement", "kappa")}
                                                       for q in ("decision", "rating", "label")})
    update_review_manifest(run, approved=res["counts"]["approved"], rejected=res["counts"]["rejected"],
                           export={"policy": policy, "min_reviewers": min_reviewers, **res["counts"]})
    return m
