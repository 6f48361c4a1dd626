"""Extraction scoring on hand-built answers whose every number was worked out by hand below, and on
the real NLU++ banking held-out rows (read from ../shared at test time, never copied)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from distilforge.errors import DataError

from heldout.extraction_score import canonical, parse_prediction, score

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {"type": "object",
          "properties": {"name": {"type": ["string", "null"]}, "amount": {"type": ["number", "null"]},
                         "city": {"type": ["string", "null"]}}}
GOLD = [{"name": "Alice Smith", "amount": 10, "city": "Paris"},
        {"name": "Bob", "amount": 5, "city": None},
        {"name": "Carol", "amount": 7},
        {"name": "Dan", "amount": 3, "city": "Rome"},
        {"name": "Eve", "amount": 2, "city": "Oslo"}]
PREDS = [
    # 0: fenced, other case/spacing, 10.0 for 10 -> all 3 fields TP, exact
    '```json\n{"name": " alice  smith", "amount": 10.0, "city": "Paris"}\n```',
    # 1: prose around it; city left out where gold has null -> name, amount TP; city neither; exact
    'Sure! {"name": "Bob", "amount": 5} hope it helps',
    # 2: wrong name (FP + FN), amount TP, city null vs gold absent (neither), extra "note" (FP); not exact
    '{"name": "Karol", "amount": 7, "city": null, "note": "x"}',
    # 3: invalid JSON (cut off) -> raw view: name, amount, city all FN
    '{"name": "Dan", "amount": 3',
    # 4: parses but breaks the schema (amount is a string) -> invalid; raw view: 3 FN
    '{"name": "Eve", "amount": "two", "city": "Oslo"}',
]


def test_per_field_micro_macro_validity_and_exact_match_by_hand():
    r = score(PREDS, GOLD, SCHEMA)
    assert r["n"] == 5
    assert r["json_validity"] == 0.6  # rows 0, 1, 2 valid
    assert [x["valid"] for x in r["rows"]] == [True, True, True, False, False]
    assert r["rows"][3]["error"] == "no JSON object in the answer"
    assert r["rows"][4]["error"].startswith("schema: amount:")
    raw = r["raw"]
    # name: TP rows 0,1 = 2; FP row 2 = 1; FN rows 2,3,4 = 3 -> P 2/3, R 2/5, F1 = (8/15)/(16/15) = 0.5
    assert raw["per_field"]["name"] == {"precision": 0.6667, "recall": 0.4, "f1": 0.5, "tp": 2, "fp": 1, "fn": 3,
                                        "support": 5, "predicted": 3}
    # amount: TP rows 0,1,2 = 3; FN rows 3,4 -> P 1, R 3/5, F1 = 1.2/1.6 = 0.75
    assert raw["per_field"]["amount"] == {"precision": 1.0, "recall": 0.6, "f1": 0.75, "tp": 3, "fp": 0, "fn": 2,
                                          "support": 5, "predicted": 3}
    # city: TP row 0; rows 1 (null/absent) and 2 (absent/null) neither; FN rows 3,4 -> P 1, R 1/3, F1 0.5
    assert raw["per_field"]["city"] == {"precision": 1.0, "recall": 0.3333, "f1": 0.5, "tp": 1, "fp": 0, "fn": 2,
                                        "support": 3, "predicted": 1}
    # note (not in the schema): one FP -> P = R = F1 = 0, marked extra
    assert raw["per_field"]["note"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 1, "fn": 0,
                                        "support": 0, "predicted": 1, "extra": True}
    # micro: TP 6, FP 2, FN 7 -> P 6/8 = 0.75, R 6/13 = 0.4615, F1 = 12/21 = 0.5714
    assert (raw["micro_precision"], raw["micro_recall"], raw["micro_f1"]) == (0.75, 0.4615, 0.5714)
    # macro over the schema's fields only: (0.5 + 0.75 + 0.5) / 3 = 0.5833
    assert raw["macro_f1"] == 0.5833
    assert raw["exact_match"] == 0.4  # rows 0 and 1
    # valid-only view, rows 0-2: name TP 2 FP 1 FN 1 (2/3); amount 3 TP (1.0); city 1 TP (1.0); note FP
    v = r["valid_only"]
    assert v["n"] == 3
    assert [v["per_field"][f]["f1"] for f in ("name", "amount", "city", "note")] == [0.6667, 1.0, 1.0, 0.0]
    # micro: TP 6, FP 2, FN 1 -> P 0.75, R 6/7 = 0.8571, F1 = 12/15 = 0.8; macro (2/3 + 1 + 1) / 3 = 0.8889
    assert (v["micro_precision"], v["micro_recall"], v["micro_f1"], v["macro_f1"]) == (0.75, 0.8571, 0.8, 0.8889)
    assert v["exact_match"] == 0.6667
    # every headline CI is a real interval that holds its point estimate
    for view, keys in ((r, ["json_validity"]), (raw, ["exact_match", "micro_f1", "macro_f1"]),
                       (v, ["exact_match", "micro_f1", "macro_f1"])):
        for k in keys:
            lo, hi = view[f"{k}_ci"]
            assert lo <= view[k] <= hi and lo < hi, (k, lo, view[k], hi)
    json.dumps(r, allow_nan=False)  # strict JSON: no NaN anywhere
    assert score(PREDS, GOLD, SCHEMA) == r  # same seed, same CIs


def test_canonical_form_and_lenient_parsing():
    a = {"city": None, "amount": 10.0, "name": "  Alice   SMITH ", "zz": 1, "aa": 2}
    assert canonical(a, SCHEMA) == '{"name":"  Alice   SMITH ","amount":10.0,"aa":2,"zz":1}'
    assert canonical(a, SCHEMA, fold=True) == '{"name":"alice smith","amount":10,"aa":2,"zz":1}'
    assert canonical({"amount": 10, "city": None, "name": "Alice Smith"}, SCHEMA, fold=True) == \
        '{"name":"alice smith","amount":10}'
    assert parse_prediction('Here you go:\n```\n{"a": 1}\n```\nDone.') == ({"a": 1}, None)
    assert parse_prediction('The answer is {"a": {"b": [1, 2]}} and {"c": 3}') == ({"a": {"b": [1, 2]}}, None)
    assert parse_prediction("") == (None, "empty answer")
    assert parse_prediction("[1, 2]") == (None, "JSON is a list, not an object")
    assert parse_prediction("no idea") == (None, "no JSON object in the answer")


def test_all_invalid_leaves_the_valid_only_view_empty_and_bad_input_is_one_clear_error():
    r = score(["nope", "{"], GOLD[:2], SCHEMA)
    assert r["json_validity"] == 0.0 and r["raw"]["micro_recall"] == 0.0 and r["raw"]["micro_f1"] == 0.0
    assert r["valid_only"]["n"] == 0 and r["valid_only"]["micro_f1"] is None
    json.dumps(r, allow_nan=False)
    with pytest.raises(DataError, match="1 predictions for 2 gold rows"):
        score(["{}"], GOLD[:2], SCHEMA)
    with pytest.raises(DataError, match="gold row 1: expected a JSON object"):
        score(["{}", "{}"], [{}, "x"], SCHEMA)


def _nlupp_rows(n: int) -> list[dict]:
    data = Path(os.environ.get("DISTILFORGE_DATA") or REPO.parent / "shared" / "data")
    if not data.is_absolute():
        data = REPO / data
    with open(data / "nlupp_banking" / "heldout.jsonl") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh)]


NLUPP_SLOTS = ["date", "date_period", "amount_of_money", "company_name", "time", "person_name", "date_from",
               "date_to", "shopping_category", "time_period", "time_from", "time_to", "number"]


def test_nlupp_banking_slots_gold_vs_gold_and_gold_vs_empty():
    rows = _nlupp_rows(50)
    schema = {"type": "object", "additionalProperties": False,
              "properties": {s: {"type": ["string", "null"]} for s in NLUPP_SLOTS}}
    gold = [r["slots"] for r in rows]
    n_slots = sum(len(g) for g in gold)
    assert len(gold) == 50 and n_slots > 10  # the sample does hold slots to score
    same = score([json.dumps(g) for g in gold], gold, schema)
    assert same["json_validity"] == 1.0 and same["raw"]["exact_match"] == 1.0
    assert same["raw"]["micro_f1"] == 1.0 and same["raw"]["macro_f1"] == 1.0 and same["raw"]["micro_f1_ci"] == [1.0, 1.0]
    assert sum(f["support"] for f in same["raw"]["per_field"].values()) == n_slots
    empty = score(["{}"] * 50, gold, schema)
    assert empty["json_validity"] == 1.0
    assert empty["raw"]["micro_recall"] == 0.0 and empty["raw"]["micro_f1"] == 0.0
    assert all(f["recall"] == 0.0 for f in empty["raw"]["per_field"].values() if f["support"])
    assert empty["raw"]["exact_match"] == sum(not g for g in gold) / 50  # only slot-less rows match "{}"
