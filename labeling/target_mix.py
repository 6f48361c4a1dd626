"""Keep the training data's label mix when blind spots add targeted rows.

Why: blind spots size each target by what it saw on the dev split (a cluster's size, twice a
confusion's count), so a round's new rows pile onto the few labels where the student erred. In
the low-data loop (`loop-low` profile: 79 generated rows, 8 a label) round 1 asked for 99 rows,
65 of them for two labels (lost_or_stolen_card 40, card_payment_fee_charged 26). The retrained
student learned the new prior, not the new content: it answered lost_or_stolen_card for 30 of
40 card_arrival and 26 of 40 declined_card_payment test rows, and fell from 0.708 to 0.595.

So a round keeps the round's row budget (the targets' total count) but spends it in proportion
to the labels' current share of the training rows: each label's quota goes to its own targets
(in proportion to their counts, each keeping at least 4), and a label without a target gets
a plain `balance` target (its own description, no keywords) so its share does not shrink. What a
round changes is what the rows of each label look like, not how often each label is the answer.
Tasks without labels (extraction, instruction) have nothing to balance; their targets pass as
they are.
"""
from __future__ import annotations

from collections import Counter

# ties in a label's split go to where the student erred on real rows first, then coverage gaps
PRIORITY = {"contrastive": 0, "errors": 1, "gap": 2}
MIN_ROWS = 4  # no blind-spot target is cut below what blind spots ask at least (targets_from_gaps)


def _split(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainder; ties to the earlier one)."""
    if total <= 0 or not weights or sum(weights) <= 0:
        return [0] * len(weights)
    raw = [total * w / sum(weights) for w in weights]
    got = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: (-(raw[i] - got[i]), i))[:total - sum(got)]:
        got[i] += 1
    return got


def keep_label_mix(targets: list[dict], label_counts: dict[str, int], labels: list[str],
                   length: str = "") -> tuple[list[dict], dict]:
    """(targets, record): the targets' total count re-spent so that every label gets rows in
    proportion to `label_counts` (its training rows now). `record` has, per label, the rows the
    targets asked for and the rows they get, for blindspots.json and the reader."""
    labelled = [t for t in targets if t.get("label")]
    if not labelled or not labels or sum(label_counts.get(x, 0) for x in labels) == 0:
        return targets, {}
    budget = sum(int(t["count"]) for t in labelled)
    quota = dict(zip(labels, _split(budget, [label_counts.get(x, 0) for x in labels])))
    asked = Counter()
    for t in labelled:
        asked[t["label"]] += int(t["count"])
    out = [t for t in targets if not t.get("label")]  # coverage-only targets (no label) as they are
    for lab in labels:
        mine = sorted((t for t in labelled if t["label"] == lab), key=lambda t: PRIORITY.get(t.get("kind"), 3))
        if not quota[lab]:
            continue
        if not mine:
            out.append({"kind": "balance", "label": lab, "keywords": [],
                        "attributes": {"length": length} if length else {}, "count": quota[lab],
                        "why": f"keeps {lab}'s share of the training rows ({label_counts.get(lab, 0)} of "
                               f"{sum(label_counts.values())}) while other labels get targeted rows"})
            continue
        # every target stays (one per gap cluster, error cluster, confused pair), with at least
        # MIN_ROWS: a label with many targets can go a few rows over its share
        for t, n in zip(mine, _split(quota[lab], [int(t["count"]) for t in mine])):
            out.append({**t, "count": max(n, MIN_ROWS)})
    gets = Counter()
    for t in out:
        gets[t["label"]] += int(t["count"])
    record = {lab: {"training_rows": label_counts.get(lab, 0), "asked": asked.get(lab, 0), "gets": gets.get(lab, 0)}
              for lab in labels}
    return out, {"budget": budget, "rows": sum(gets.values()), "per_label": record}
