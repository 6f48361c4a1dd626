"""Blind spots' targets keep the training rows' label mix (labeling/target_mix.py)."""
from __future__ import annotations

from collections import Counter

from labeling.target_mix import keep_label_mix

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "card_payment_fee_charged",
          "cash_withdrawal_charge", "transfer_not_received_by_recipient", "pin_blocked", "refund_not_showing_up",
          "declined_card_payment"]

# what blind spots asked for in the low-data loop's round 1 (runs/loop-low, 79 training rows)
ROUND1 = [("gap", "exchange_rate", 4), ("gap", "refund_not_showing_up", 4),
          ("gap", "transfer_not_received_by_recipient", 5), ("gap", "top_up_failed", 4),
          ("gap", "refund_not_showing_up", 5), ("errors", "transfer_not_received_by_recipient", 11),
          ("errors", "lost_or_stolen_card", 22), ("contrastive", "lost_or_stolen_card", 18),
          ("contrastive", "card_payment_fee_charged", 14), ("contrastive", "card_payment_fee_charged", 12)]


def _targets():
    return [{"kind": k, "label": lab, "keywords": [f"w{i}"], "attributes": {}, "count": n, "why": ""}
            for i, (k, lab, n) in enumerate(ROUND1)]


def _per_label(targets):
    got = Counter()
    for t in targets:
        got[t["label"]] += t["count"]
    return got


def test_a_round_spends_its_rows_in_the_training_label_mix_not_on_the_confused_labels():
    counts = {lab: 8 for lab in LABELS} | {"pin_blocked": 7}
    before = _per_label(_targets())
    assert before["lost_or_stolen_card"] == 40 and before["card_arrival"] == 0  # the skew that cost 11 points
    out, rec = keep_label_mix(_targets(), counts, LABELS, "short")
    after = _per_label(out)
    assert sum(before.values()) == rec["budget"] == 99 and sum(after.values()) == rec["rows"]
    assert set(after) == set(LABELS)  # every label gets rows: its share of 99 (~10), or 4 a target if more
    assert all(abs(after[lab] - 10) <= 1 for lab in LABELS), after
    assert after["pin_blocked"] <= min(v for k, v in after.items() if k != "pin_blocked")  # 7 rows: the smallest share
    assert len([t for t in out if t["kind"] != "balance"]) == len(ROUND1)  # no blind-spot target is dropped
    assert all(t["count"] >= 4 for t in out if t["kind"] != "balance")
    # labels without a target get a plain one for their own description; the others keep their targets
    plain = [t for t in out if t["kind"] == "balance"]
    assert {t["label"] for t in plain} == {"card_arrival", "cash_withdrawal_charge", "pin_blocked", "declined_card_payment"}
    assert all(t["keywords"] == [] and t["attributes"] == {"length": "short"} for t in plain)
    lost = [t for t in out if t["label"] == "lost_or_stolen_card"]
    assert {t["kind"] for t in lost} == {"errors", "contrastive"} and sum(t["count"] for t in lost) == after["lost_or_stolen_card"]
    assert rec["per_label"]["lost_or_stolen_card"] == {"training_rows": 8, "asked": 40, "gets": after["lost_or_stolen_card"]}


def test_an_uneven_mix_stays_uneven_and_a_label_with_no_rows_gets_none():
    counts = {"card_arrival": 30, "exchange_rate": 10, "pin_blocked": 0}
    targets = [{"kind": "errors", "label": "exchange_rate", "keywords": [], "attributes": {}, "count": 20, "why": ""}]
    out, _ = keep_label_mix(targets, counts, ["card_arrival", "exchange_rate", "pin_blocked"])
    assert _per_label(out) == {"card_arrival": 15, "exchange_rate": 5}
    many = [{**targets[0], "keywords": [str(i)], "count": 8} for i in range(3)]  # 3 targets, a share of 6
    out, rec = keep_label_mix(many, {"card_arrival": 30, "exchange_rate": 10}, ["card_arrival", "exchange_rate"])
    assert [t["count"] for t in out if t["label"] == "exchange_rate"] == [4, 4, 4] and rec["rows"] == 18 + 12


def test_targets_without_labels_pass_as_they_are():
    coverage = [{"kind": "gap", "label": "", "keywords": ["x"], "attributes": {}, "count": 7, "why": ""}]
    assert keep_label_mix(coverage, {}, []) == (coverage, {})
    assert keep_label_mix(coverage, {"a": 3}, ["a"]) == (coverage, {})
