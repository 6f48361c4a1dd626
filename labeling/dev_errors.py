"""Where the student is wrong on the dev split: per cluster, and which labels it confuses.

Eval scores the student on the traffic stage's dev split (real inputs, never the locked test
set) and records its prediction per dev row id (metrics.json `dev`). Coverage alone says where
the synthetic data is thin; this says where the student actually fails on real inputs, which is
what the next round of generation should aim at. Everything here works on ids, labels and
numbers; the only text it touches is the dev split's, to pick steering keywords.

Contrastive targets: for the label pairs the student confuses most (gold `a`, predicted `b`), a
target asks the teacher for rows that are clearly `a` and could be mistaken for `b` — the label
(and so its description in the prompt) is `a`, the keywords are the words that pull real `a`
messages towards `b`. That is exactly the boundary the student has not learned, and it goes
through the plain targets format (`label`, `keywords`, `attributes`, `count`) that
`distilforge generate --targets` reads; `contrast` reaches the teacher too (the request's
situation says what the message must not read like: plan.py `_situation`), `instruction` says
the intent for a reader.
"""
from __future__ import annotations

from collections import Counter

from heldout.coverage import Clusters, keywords


def dev_predictions(metrics: dict | None, dev_sha256: str, who: str = "student") -> dict[str, str]:
    """{dev row id: prediction} from eval's metrics.json, only when eval scored this very dev split."""
    dev = (metrics or {}).get("dev") or {}
    if dev.get("dev_sha256") != dev_sha256:
        return {}
    ids, preds = dev.get("row_ids"), (dev.get(who) or {}).get("predictions")
    return dict(zip(ids, preds)) if ids and preds and len(ids) == len(preds) else {}


def accuracy_by_cluster(hc: Clusters, predicted: dict[str, str]) -> dict[int, dict]:
    """Per cluster: rows with a prediction, how many match the row's label, accuracy."""
    out: dict[int, dict] = {}
    for rid, label, c in zip(hc.row_ids, hc.labels, hc.assign):
        if rid in predicted:
            o = out.setdefault(int(c), {"n": 0, "correct": 0})
            o["n"] += 1
            o["correct"] += int(predicted[rid] == label)
    for o in out.values():
        o["accuracy"] = round(o["correct"] / o["n"], 3)
    return out


def rank_errors(clusters: list[dict], by_cluster: dict[int, dict], min_wrong: int = 2) -> float | None:
    """Add the student's dev accuracy per cluster and an error ranking (worst first) to `clusters`
    in place; returns the overall dev error rate (None without predictions).

    A cluster is an error hot spot (`errors_hot`) when the student gets at least `min_wrong` of its
    rows wrong and its error rate is at least 1.5× the overall one: covered or not, real inputs
    there are where the student fails."""
    if not by_cluster:
        return None
    n = sum(o["n"] for o in by_cluster.values())
    overall = 1 - sum(o["correct"] for o in by_cluster.values()) / max(n, 1)
    scored = [g for g in clusters if g["cluster"] in by_cluster]
    for g in scored:
        o = by_cluster[g["cluster"]]
        g["student_accuracy"] = o["accuracy"]
        g["student_errors"] = o["n"] - o["correct"]
        g["error_rate"] = round(1 - o["accuracy"], 3)
        g["errors_hot"] = bool(g["student_errors"] >= min_wrong and g["error_rate"] >= 1.5 * overall > 0)
    for rank, g in enumerate(sorted(scored, key=lambda g: (-g["error_rate"], -g["student_errors"], g["cluster"])), 1):
        g["error_rank"] = rank
    return round(overall, 4)


def confusions(hc: Clusters, predicted: dict[str, str], labels: list[str], top: int = 3,
               min_count: int = 2) -> list[dict]:
    """The student's most frequent (gold, predicted) mistakes on dev, between two task labels."""
    gold_n = Counter(lab for rid, lab in zip(hc.row_ids, hc.labels) if rid in predicted)
    pairs = Counter((lab, predicted[rid]) for rid, lab in zip(hc.row_ids, hc.labels)
                    if rid in predicted and predicted[rid] != lab and predicted[rid] in labels)
    return [{"label": a, "mistaken_for": b, "count": n, "of": gold_n[a]}
            for (a, b), n in sorted(pairs.items(), key=lambda x: (-x[1], x[0])) if n >= min_count][:top]


def contrastive_targets(confused: list[dict], hc: Clusters, texts: list[str], predicted: dict[str, str],
                        length: str) -> list[dict]:
    """One target per confused pair: label `a`, steered by the words of the `a` rows the student
    took for `b` and of the real `b` rows (what makes an `a` message look like `b`)."""
    out = []
    for c in confused:
        a, b = c["label"], c["mistaken_for"]
        wrong = [t for t, rid, lab in zip(texts, hc.row_ids, hc.labels) if lab == a and predicted.get(rid) == b]
        other = [t for t, lab in zip(texts, hc.labels) if lab == b]
        kw = list(dict.fromkeys(keywords(wrong, texts, top=4) + keywords(other, texts, top=4)))[:6]
        out.append({"kind": "contrastive", "label": a, "contrast": b, "keywords": kw,
                    "attributes": {"length": length}, "count": int(max(4, min(2 * c["count"], 20))),
                    "instruction": f"write a message that is clearly {a} and could be mistaken for {b}",
                    "why": f"on the dev split the student labelled {c['count']} of {c['of']} {a} rows as {b}"})
    return out
