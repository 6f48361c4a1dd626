"""Blind spots with a planted gap: real Banking77 train rows of 9 intents stand in for the
synthetic set; held-out rows of all 10 intents are scored against them."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import BANKING77
from heldout.coverage import cluster_heldout
from labeling.blindspots import analyse, load_targets, write_outputs

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "card_payment_fee_charged",
          "cash_withdrawal_charge", "transfer_not_received_by_recipient", "pin_blocked",
          "Refund_not_showing_up", "declined_card_payment"]
MISSING = "pin_blocked"


@pytest.fixture(scope="module")
def world():
    from curation.embed import Embedder

    test = pd.read_csv(BANKING77 / "test.csv")
    train = pd.read_csv(BANKING77 / "train.csv")
    test, train = test[test.category.isin(LABELS)], train[train.category.isin(LABELS)]
    held = datasets.Dataset.from_dict({"id": [f"h{i}" for i in range(len(test))], "text": list(test.text),
                                       "label": list(test.category)})
    emb = Embedder()
    hc = cluster_heldout(held, emb, seed=0)
    present = train[train.category != MISSING].groupby("category").head(40)
    syn = np.asarray(emb.encode(list(present.text)))
    extra = np.asarray(emb.encode(list(train[train.category == MISSING].text)))
    return hc, syn, extra


def _dominant(g):
    return next(iter(g["labels"]))


def test_missing_intent_ranks_as_top_gap_and_becomes_a_target(world, tmp_path):
    hc, syn, _ = world
    res = analyse(hc, syn)
    gaps = res["coverage"]["gaps"]
    missing = [g for g in gaps if _dominant(g) == MISSING]
    assert missing, "the missing intent should form at least one held-out cluster"
    assert all(g["gap"] for g in missing)
    assert [g["rank"] for g in missing] == list(range(1, len(missing) + 1))  # they ARE the top gaps
    others = [g for g in gaps if _dominant(g) != MISSING]
    assert min(g["distance"] for g in missing) > max(g["distance"] for g in others if g["size"] >= 5)
    write_outputs(tmp_path, res)
    targets = load_targets(tmp_path / "targets.yaml")
    assert targets[0]["label"] == MISSING and {"pin"} & set(targets[0]["keywords"])
    blob = (tmp_path / "blindspots.json").read_text() + (tmp_path / "targets.yaml").read_text()
    assert not any(t in blob for t in hc_texts_sample())  # no held-out text leaves the heldout package
    assert {p["kind"] for p in res["coverage"]["points"]} == {"heldout", "synthetic"}


def hc_texts_sample():
    test = pd.read_csv(BANKING77 / "test.csv")
    return [t for t in test[test.category.isin(LABELS)].text if len(t) > 25][:200]


def test_adding_rows_for_the_gap_closes_it(world):
    hc, syn, extra = world
    before = {g["cluster"]: g for g in analyse(hc, syn)["coverage"]["gaps"]}
    after = analyse(hc, np.vstack([syn, extra]))["coverage"]["gaps"]
    others = np.median([g["distance"] for g in after if _dominant(g) != MISSING])
    for g in after:
        if _dominant(g) == MISSING:
            assert g["distance"] < before[g["cluster"]]["distance"]
            assert g["distance"] < others and not g["gap"]
    json.dumps(after)  # serializable for blindspots.json
