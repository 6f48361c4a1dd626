"""What the human review says about the data and about the teacher.

- Inter-annotator agreement on rows with >= 2 reviewers: Cohen's kappa when exactly two people
  reviewed, Fleiss' kappa (the variable-raters form: each item's pairwise agreement, chance from
  the pooled category shares) when more did. Without it, a majority or unanimity policy is a
  guess about how consistent the curators are.
- Rejection hot spots: reviewer reject rate and reasons by label, strategy and held-out cluster.
  A group is *hot* when its rate is above the overall rate even at the low end of its 95 % Wilson
  interval, so three rejects out of three count and one out of one does not.
- Judge vs human: the teacher-judge's suggestions (decision, rating, label) against what reviewers
  answered — confusion, agreement and kappa per question. Low kappa means the teacher's
  self-assessment (and the curation threshold built on it) cannot be trusted on this task.

Input is the pulled `RUN/review/reviews` rows (one per record and user); only submitted responses
count as judgements (drafts are unfinished, discards are "skip").
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Iterable, Optional

DIMENSIONS = ("label", "strategy", "cluster")


def cohen_kappa(a: list, b: list) -> Optional[float]:
    """Cohen's kappa of two raters over the same items; None when chance agreement is 1 (one category)."""
    if len(a) != len(b) or not a:
        raise ValueError("cohen_kappa needs two equally long, non-empty rating lists")
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return None if pe >= 1 else (po - pe) / (1 - pe)


def fleiss_kappa(items: Iterable[list]) -> Optional[float]:
    """Fleiss' kappa; `items` = the categories each rater gave one item (>= 2 raters, may vary)."""
    items = [list(x) for x in items if len(x) >= 2]
    if not items:
        return None
    pairs_agree, totals = [], Counter()
    for ratings in items:
        n, c = len(ratings), Counter(ratings)
        pairs_agree.append(sum(v * (v - 1) for v in c.values()) / (n * (n - 1)))
        totals.update(c)
    p_bar = sum(pairs_agree) / len(items)
    all_n = sum(totals.values())
    pe = sum((v / all_n) ** 2 for v in totals.values())
    return None if pe >= 1 else (p_bar - pe) / (1 - pe)


def _r(x: Optional[float], d: int = 4) -> Optional[float]:
    return None if x is None else round(x, d)


def submitted(rows: Iterable[dict], fmt: str = "sft") -> list[dict]:
    return [r for r in rows if r.get("status") == "submitted" and r.get("format", "sft") == fmt]


def rater_agreement(rows: Iterable[dict], question: str = "decision", fmt: str = "sft") -> dict:
    """Agreement between reviewers on one question over items answered by >= 2 of them."""
    by_item: dict[str, dict[str, object]] = defaultdict(dict)
    for r in submitted(rows, fmt):
        v = r.get(question)
        if v is not None:
            by_item[r.get("record_id") or r["id"]][r["user_id"]] = v
    multi = {k: v for k, v in by_item.items() if len(v) >= 2}
    raters = sorted({u for v in multi.values() for u in v})
    out = {"question": question, "items": len(multi), "raters": len(raters), "method": None, "kappa": None,
           "observed": None}
    if not multi:
        return out
    if len(raters) == 2:
        a = [v[raters[0]] for v in multi.values()]
        b = [v[raters[1]] for v in multi.values()]
        out.update(method="cohen", kappa=_r(cohen_kappa(a, b)),
                   observed=_r(sum(x == y for x, y in zip(a, b)) / len(a)))
    else:
        ratings = [list(v.values()) for v in multi.values()]
        out.update(method="fleiss", kappa=_r(fleiss_kappa(ratings)),
                   observed=_r(sum(len(set(x)) == 1 for x in ratings) / len(ratings)))
    return out


def human_label(r: dict) -> Optional[str]:
    """The label a reviewer stands behind: the label answer, else a typed correction, else — for an
    accept — the teacher's label (accepting unchanged means agreeing with it)."""
    if r.get("label_answer"):
        return r["label_answer"]
    if r.get("corrected"):
        return r["corrected"]
    return r.get("suggested_label") if r.get("decision") == "accept" else None


def _compare(pairs: list[tuple]) -> dict:
    if not pairs:
        return {"pairs": 0, "agreement": None, "kappa": None, "confusion": {}}
    conf: dict[str, Counter] = defaultdict(Counter)
    for s, h in pairs:
        conf[str(s)][str(h)] += 1
    js, hs = [str(s) for s, _ in pairs], [str(h) for _, h in pairs]
    return {"pairs": len(pairs), "agreement": _r(sum(a == b for a, b in zip(js, hs)) / len(pairs)),
            "kappa": _r(cohen_kappa(js, hs)), "confusion": {k: dict(v) for k, v in sorted(conf.items())}}


def judge_vs_human(rows: Iterable[dict], fmt: str = "sft") -> dict:
    """Per question, the teacher-judge's suggestion (rater 1) against each reviewer's answer (rater 2)."""
    sub = submitted(rows, fmt)
    dec = [(r["suggested_decision"], r["decision"]) for r in sub if r.get("suggested_decision") and r.get("decision")]
    rat = [(r["suggested_rating"], r["rating"]) for r in sub
           if r.get("suggested_rating") is not None and r.get("rating") is not None]
    lab = [(r["suggested_label"], human_label(r)) for r in sub if r.get("suggested_label") and human_label(r)]
    out = {"decision": _compare(dec), "rating": _compare(rat), "label": _compare(lab)}
    if rat:
        out["rating"]["mean_abs_diff"] = _r(sum(abs(s - h) for s, h in rat) / len(rat), 3)
    out["agent"] = sorted({r["suggestion_agent"] for r in sub if r.get("suggestion_agent")})
    return out


def wilson_lower(k: int, n: int, z: float = 1.96) -> float:
    if n == 0:
        return 0.0
    p = k / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def hot_spots(rows: Iterable[dict], clusters: Optional[dict] = None, fmt: str = "sft", min_n: int = 3) -> dict:
    """Reject rate and reasons per label / strategy / cluster; `clusters`: row id -> cluster id
    (fresher than the metadata pushed to Argilla, when blindspots has just recomputed it)."""
    sub = [r for r in submitted(rows, fmt) if r.get("decision") in ("accept", "reject")]
    overall = sum(r["decision"] == "reject" for r in sub) / len(sub) if sub else 0.0
    out: dict = {"overall_reject_rate": _r(overall, 3), "judgements": len(sub)}
    for dim in DIMENSIONS:
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in sub:
            if dim == "cluster":
                key = (clusters or {}).get(r["id"], r.get("meta_cluster"))
            else:
                key = r.get(f"meta_{dim}")
            if key is not None:
                groups[str(key)].append(r)
        table = []
        for key, rs in groups.items():
            rej = [r for r in rs if r["decision"] == "reject"]
            reasons = Counter(x for r in rej for x in (r.get("reject_reasons") or []))
            table.append({dim: key, "reviewed": len(rs), "rejected": len(rej), "reject_rate": _r(len(rej) / len(rs), 3),
                          "reasons": dict(reasons.most_common()),
                          "hot": len(rs) >= min_n and wilson_lower(len(rej), len(rs)) > overall})
        table.sort(key=lambda t: (-t["hot"], -t["reject_rate"], -t["reviewed"], t[dim]))
        out[f"by_{dim}"] = table
    return out


def analyse(rows: Iterable[dict], clusters: Optional[dict] = None) -> dict:
    """The review section of blindspots.json, over the training rows' reviews."""
    rows = [r for r in rows if r.get("format", "sft") == "sft"]  # preference pairs are judged differently
    status = Counter(r["status"] for r in rows)
    sub = submitted(rows)
    return {"responses": len(rows), "by_status": dict(status), "reviewers": len({r["user_id"] for r in rows}),
            "reviewed_records": len({r.get("record_id") or r["id"] for r in sub}),
            "agreement": {q: rater_agreement(rows, q) for q in ("decision", "label_answer", "rating")},
            "hot_spots": hot_spots(rows, clusters), "judge_vs_human": judge_vs_human(rows)}


def summary_line(review: dict) -> str:
    jv = review["judge_vs_human"]["decision"]
    ag = review["agreement"]["decision"]
    hot = [f"{d}={t[d]}" for d in DIMENSIONS for t in review["hot_spots"][f"by_{d}"] if t["hot"]]
    parts = [f"review: {review['reviewed_records']} records reviewed by {review['reviewers']} user(s)"]
    if ag["kappa"] is not None:
        parts.append(f"reviewer {ag['method']} kappa {ag['kappa']:.2f} on {ag['items']} rows")
    if jv["pairs"]:
        k = "n/a" if jv["kappa"] is None else f"{jv['kappa']:.2f}"
        parts.append(f"judge vs human: {jv['agreement']:.0%} agree, kappa {k} ({jv['pairs']} pairs)")
    parts.append("hot spots: " + (", ".join(hot[:5]) if hot else "none"))
    return "; ".join(parts)
