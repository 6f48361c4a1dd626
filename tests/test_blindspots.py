"""Blind spots with a planted gap, on a dev split: real Banking77 TRAIN rows of all 10 intents
stand in for the traffic stage's dev split (real inputs, never the locked test set), other train
rows of only 9 intents stand in for the synthetic set."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import BANKING77, TASK, cli
from heldout.coverage import cluster_texts
from labeling.blindspots import SKIPPED, analyse, load_targets, teacher_answers, write_outputs

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "card_payment_fee_charged",
          "cash_withdrawal_charge", "transfer_not_received_by_recipient", "pin_blocked",
          "Refund_not_showing_up", "declined_card_payment"]
MISSING = "pin_blocked"
DEV_PER_LABEL = 40


def _task_label(lab: str) -> str:
    return lab.lower() if lab == "Refund_not_showing_up" else lab  # the spec's label_map


@pytest.fixture(scope="module")
def world():
    from curation.embed import Embedder

    train = pd.read_csv(BANKING77 / "train.csv")
    train = train[train.category.isin(LABELS)].assign(category=lambda d: d.category.map(_task_label))
    dev = train.groupby("category").head(DEV_PER_LABEL)
    rest = train.drop(dev.index)  # disjoint from the dev rows, as the traffic stage's splits are
    emb = Embedder()
    texts, labels = list(dev.text), list(dev.category)
    hc = cluster_texts(texts, labels, [f"d{i}" for i in range(len(dev))], emb, seed=0)
    present = rest[rest.category != MISSING].groupby("category").head(40)
    syn = np.asarray(emb.encode(list(present.text)))
    extra = np.asarray(emb.encode(list(rest[rest.category == MISSING].text)))
    return hc, syn, extra, texts


def _dominant(g):
    return next(iter(g["labels"]))


def test_missing_intent_ranks_as_top_gap_and_becomes_a_target(world, tmp_path):
    hc, syn, _, texts = world
    res = analyse(hc, syn)
    gaps = res["coverage"]["gaps"]
    assert res["coverage"]["dev_rows"] == len(texts) == sum(g["size"] for g in gaps)  # the dev split is clustered
    missing = [g for g in gaps if _dominant(g) == MISSING]
    assert missing, "the missing intent should form at least one dev cluster"
    assert all(g["gap"] for g in missing)
    assert [g["rank"] for g in missing] == list(range(1, len(missing) + 1))  # they ARE the top gaps
    others = [g for g in gaps if _dominant(g) != MISSING]
    assert min(g["distance"] for g in missing) > max(g["distance"] for g in others if g["size"] >= 5)
    write_outputs(tmp_path, res)
    targets = load_targets(tmp_path / "targets.yaml")
    assert targets[0]["label"] == MISSING and {"pin"} & set(targets[0]["keywords"]) and targets[0]["kind"] == "gap"
    blob = (tmp_path / "blindspots.json").read_text() + (tmp_path / "targets.yaml").read_text()
    assert not any(t in blob for t in texts if len(t) > 25)  # no dev text in what blind spots write
    assert {p["kind"] for p in res["coverage"]["points"]} == {"dev", "synthetic"}
    assert "student" not in res  # no per-row predictions: coverage only, no error targets


def test_adding_rows_for_the_gap_closes_it(world):
    hc, syn, extra, _ = world
    before = {g["cluster"]: g for g in analyse(hc, syn)["coverage"]["gaps"]}
    after = analyse(hc, np.vstack([syn, extra]))["coverage"]["gaps"]
    others = np.median([g["distance"] for g in after if _dominant(g) != MISSING])
    for g in after:
        if _dominant(g) == MISSING:
            assert g["distance"] < before[g["cluster"]]["distance"]
            assert g["distance"] < others and not g["gap"]
    json.dumps(after)  # serializable for blindspots.json


def test_confused_pair_becomes_a_contrastive_target_and_ranks_its_cluster_first(world, tmp_path):
    """The student takes 12 of the 40 lost_or_stolen_card dev rows for card_arrival and is right on
    everything else: that pair is the top confusion, a contrastive target asks for rows that are
    clearly lost_or_stolen_card and could be mistaken for card_arrival, steered by card words, and
    the file still loads as `generate --targets` reads it."""
    from curation.generation.plan import load_targets as generate_targets
    from distilforge.spec import load_spec

    hc, syn, extra, texts = world
    a, b = "lost_or_stolen_card", "card_arrival"
    wrong = [rid for rid, lab in zip(hc.row_ids, hc.labels) if lab == a][:12]
    student = {rid: (b if rid in wrong else lab) for rid, lab in zip(hc.row_ids, hc.labels)}
    res = analyse(hc, np.vstack([syn, extra]), student, texts=texts, labels=sorted(set(hc.labels)))
    assert res["student"]["confusions"] == [{"label": a, "mistaken_for": b, "count": 12, "of": DEV_PER_LABEL}]
    assert res["student"]["error_rate"] == round(12 / len(texts), 4)
    by_errors = sorted((g for g in res["coverage"]["gaps"] if "error_rank" in g), key=lambda g: g["error_rank"])
    top = by_errors[0]
    assert top["student_errors"] == max(g["student_errors"] for g in by_errors) > 0 and top["errors_hot"]
    assert _dominant(top) in (a, b)
    assert all(g["student_errors"] == 0 for g in by_errors if _dominant(g) not in (a, b))
    contrastive = [t for t in res["targets"] if t["kind"] == "contrastive"]
    assert len(contrastive) == 1
    t = contrastive[0]
    assert (t["label"], t["contrast"]) == (a, b)
    assert t["instruction"] == f"write a message that is clearly {a} and could be mistaken for {b}"
    assert {"delivery", "new", "track", "tracking", "arrive", "arrived", "status"} & set(t["keywords"])  # b's words
    assert t["count"] >= 4 and "12 of 40" in t["why"]
    write_outputs(tmp_path, res)
    normalized = generate_targets(tmp_path / "targets.yaml", load_spec(TASK))  # what generate consumes
    assert len(normalized) == len(res["targets"])
    assert {(x["label"], ", ".join(x["keywords"])) for x in normalized} >= {(a, ", ".join(t["keywords"]))}


def test_a_perfect_student_yields_no_error_or_contrastive_targets(world):
    """...and with gold dev labels, the teacher's agreement per cluster shows where it fails (pin_blocked here)."""
    hc, syn, _, texts = world
    teacher = {rid: ("card_arrival" if lab == MISSING else lab) for rid, lab in zip(hc.row_ids, hc.labels)}
    res = analyse(hc, syn, dict(zip(hc.row_ids, hc.labels)), teacher, texts=texts, labels=sorted(set(hc.labels)))
    assert res["student"]["error_rate"] == 0 and res["student"]["confusions"] == []
    assert {t["kind"] for t in res["targets"]} == {"gap"}
    assert not any(g.get("errors_hot") for g in res["coverage"]["gaps"])
    for g in res["coverage"]["gaps"]:
        share = g["labels"].get(MISSING, 0) / g["size"]
        assert g["teacher_accuracy"] == pytest.approx(1 - share, abs=1e-3)
    assert min(g["teacher_accuracy"] for g in res["coverage"]["gaps"]) < 0.5


def test_gold_dev_rows_the_teacher_was_not_asked_about_do_not_count_as_its_mistakes(world):
    """With `dev_labels: gold` the traffic stage asks the teacher only about training rows, so dev rows
    can carry no teacher answer (None). Those rows drop out of the per-cluster teacher agreement;
    counted as wrong they would show a 0.0-accurate teacher in every cluster."""
    import datasets

    hc, syn, _, _ = world
    answered = {rid: lab for i, (rid, lab) in enumerate(zip(hc.row_ids, hc.labels)) if i % 2 == 0}
    dev = datasets.Dataset.from_dict({"id": list(hc.row_ids),
                                      "teacher_label": [answered.get(rid) for rid in hc.row_ids]})
    got = teacher_answers(dev)
    assert got == answered
    res = analyse(hc, syn, None, got)
    scored = [g for g in res["coverage"]["gaps"] if "teacher_accuracy" in g]
    assert scored and all(g["teacher_accuracy"] == 1.0 for g in scored)
    none_asked = datasets.Dataset.from_dict({"id": list(hc.row_ids), "teacher_label": [None] * len(hc.row_ids)})
    assert teacher_answers(none_asked) == {}
    assert not any("teacher_accuracy" in g for g in analyse(hc, syn, None, {}).get("coverage")["gaps"])


def test_run_without_traffic_skips_blind_spots_with_the_reason(tmp_path):
    """No `traffic:` → no dev split → blind spots say why and exit 0 (so `run` goes on); an analysis
    left from before (possibly of the locked set) is removed, never reused."""
    spec = yaml.safe_load(TASK.read_text())
    spec.pop("traffic", None)
    for p in spec.get("profiles", {}).values():
        p.pop("traffic", None)
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump(spec))
    run = tmp_path / "run"
    env = {"DISTILFORGE_DATA": str(BANKING77.parent)}
    r = cli("heldout", "lock", run, "--spec", task, "--profile", "smoke", env=env)
    assert r.returncode == 0, r.stderr
    (run / "blindspots").mkdir()
    (run / "blindspots" / "blindspots.json").write_text('{"coverage": {}}')
    (run / "blindspots" / "targets.yaml").write_text("targets: []\n")
    r = cli("blindspots", run, env=env)
    assert r.returncode == 0, r.stderr
    assert SKIPPED in " ".join((r.stdout + r.stderr).split())
    m = json.loads((run / "blindspots" / "manifest.json").read_text())
    assert m["skipped"] == SKIPPED
    assert not (run / "blindspots" / "blindspots.json").exists() and not (run / "blindspots" / "targets.yaml").exists()


@pytest.mark.parametrize("kind", ["extraction", "instruction"])
def test_a_task_without_labels_gets_coverage_targets_only(tmp_path, kind):
    """Extraction / instruction dev splits carry answers, not labels: blind spots still cluster the
    dev split and target what the training rows do not cover (here: every Banking77 intent the
    training rows lack), with no label on a target, no student error ranking and no contrastive
    target, even when eval recorded dev predictions; the result says why in `notes`."""
    import datasets

    from curation.generation.plan import load_targets as check_targets
    from distilforge.manifest import Stage
    from distilforge.spec import validate_spec
    from labeling.blindspots import NO_LABELS, blindspots_stage, summary_line

    raw = {"name": "t", "type": kind, "instruction": "Help the customer.", "heldout": {"source": "x.jsonl"}}
    if kind == "extraction":
        raw["output_schema"] = {"type": "object", "properties": {"merchant": {"type": ["string", "null"]}}}
    spec = validate_spec(raw)
    train = pd.read_csv(BANKING77 / "train.csv")
    train = train[train.category.isin(LABELS)]
    dev = train.groupby("category").head(12)
    cur = train.drop(dev.index)
    cur = cur[cur.category.isin(LABELS[:5])].groupby("category").head(12)  # half the intents never covered
    run = tmp_path / "run"
    answers = ['{"merchant":null}' if kind == "extraction" else "We are looking into it."] * len(dev)
    st = Stage(run / "traffic", "traffic", {}, {}).begin()
    st.save("dev", datasets.Dataset.from_dict({"id": [f"t{i}" for i in range(len(dev))], "text": list(dev.text),
                                               "label": answers, "label_source": ["teacher"] * len(dev)}))
    st.finish()
    st = Stage(run / "curate", "curate", {}, {}).begin()
    st.save("curated", datasets.Dataset.from_dict({"id": [f"c{i}" for i in range(len(cur))], "text": list(cur.text),
                                                   "label": [""] * len(cur)}))
    st.finish()
    h = json.loads((run / "traffic" / "manifest.json").read_text())["outputs"]["dev"]["sha256"]
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"metric": "micro_f1", "dev": {
        "dev_sha256": h, "row_ids": [f"t{i}" for i in range(len(dev))],
        "student": {"score": 0.5, "predictions": ["{}"] * len(dev)}}}))
    m = blindspots_stage(spec, run)
    assert m["gaps"] >= 1 and m["contrastive_targets"] == 0 and m["error_targets"] == 0
    res = json.loads((run / "blindspots" / "blindspots.json").read_text())
    assert res["notes"] == [NO_LABELS.format(kind=kind)] and "student" not in res
    assert res["coverage"]["clusters"] == len(dev) // 10
    assert res["targets"] and {t["kind"] for t in res["targets"]} == {"gap"} and {t["label"] for t in res["targets"]} == {""}
    # the gap clusters hold the uncovered intents' rows (dev points come first, in dev row order)
    gaps = {g["cluster"] for g in res["coverage"]["gaps"] if g["gap"]}
    in_gaps = [c for c, pt in zip(dev.category, res["coverage"]["points"]) if pt["cluster"] in gaps]
    assert in_gaps and sum(c not in LABELS[:5] for c in in_gaps) / len(in_gaps) >= 0.8
    assert check_targets(run / "blindspots" / "targets.yaml", spec)  # `generate --targets` takes them
    assert "gap cluster(s): #" in summary_line(res) and "None" not in summary_line(res)
