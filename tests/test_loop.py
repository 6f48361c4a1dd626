"""The loop's bookkeeping: rounds recorded in RUN/loop.json, resumed at the first unrecorded round,
the kept round chosen on dev (never on the test score), each round's targets new.

A whole round on the smoke profile (teacher generation, training, scoring) takes longer here than
a unit test should, so generate/curate/train/eval are stand-ins that write what those stages
hand the loop (train's manifest and adapter, eval's metrics.json); blind spots, the targets
check `generate --targets` applies, and the loop itself are the real code on real Banking77
TRAIN rows standing in for the dev split."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from conftest import BANKING77, TASK

DEV = {0: 0.50, 1: 0.80, 2: 0.70}  # student accuracy on dev per round
TEST = {0: 0.60, 1: 0.65, 2: 0.90}  # on the locked test set: best in round 2, which dev does not pick


@pytest.fixture()
def small_run(tmp_path, monkeypatch):
    from distilforge.manifest import Stage
    from distilforge.runctx import prepare

    monkeypatch.setenv("DISTILFORGE_DATA", str(BANKING77.parent))
    run = tmp_path / "run"
    spec = prepare(run, TASK, "smoke", create=True)
    train = pd.read_csv(BANKING77 / "train.csv")
    train["category"] = train.category.replace({"Refund_not_showing_up": "refund_not_showing_up"})
    train = train[train.category.isin(spec.label_names)]
    dev, cur = train.groupby("category").head(6), train.groupby("category").nth(slice(6, 9))
    st = Stage(run / "traffic", "traffic", {}, {}).begin()
    st.save("dev", datasets.Dataset.from_dict({"id": [f"t{i}" for i in range(len(dev))], "text": list(dev.text),
                                               "label": list(dev.category), "label_source": ["teacher"] * len(dev),
                                               "teacher_label": list(dev.category), "gold_label": list(dev.category)}))
    st.finish()
    st = Stage(run / "curate", "curate", {}, {}).begin()
    st.save("curated", datasets.Dataset.from_dict({"id": [f"c{i}" for i in range(len(cur))], "text": list(cur.text),
                                                   "label": list(cur.category)}))
    st.finish()
    return run, spec


class StandIns:
    """generate/curate/train/eval as the loop sees them; `crash_train_in` fails that round once."""

    def __init__(self, run: Path, crash_train_in: int | None = None):
        self.run, self.crash, self.calls = run, crash_train_in, []

    @property
    def round(self) -> int:  # during round r, loop.json holds rounds 0 .. r-1
        from app.loop import read_rounds

        return len(read_rounds(self.run))

    def runners(self) -> dict:
        def stage(name):
            def fn(spec, run, ep):
                self.calls.append(name)
                getattr(self, name, lambda spec: None)(spec)
            return fn
        return {n: stage(n) for n in ("heldout", "traffic", "generate", "curate", "train", "eval")}

    def train(self, spec):
        if self.crash == self.round:
            self.crash = None
            raise RuntimeError("killed mid-train")
        d = self.run / "train"
        (d / "adapter").mkdir(parents=True, exist_ok=True)
        (d / "adapter" / "weights").write_text(f"round {self.round}")
        (d / "manifest.json").write_text(json.dumps({"stage": "train", "adapter": "adapter", "rows": 30 + 10 * self.round,
                                                      "adapter_sha256": f"sha-{self.round}"}))

    def eval(self, spec):
        from labeling.blindspots import dev_split

        ds, h = dev_split(self.run)
        wrong = int(round((1 - DEV[self.round]) * len(ds)))
        preds = ["card_arrival" if i < wrong else lab for i, lab in enumerate(ds["label"])]
        (self.run / "eval").mkdir(exist_ok=True)
        (self.run / "eval" / "metrics.json").write_text(json.dumps({
            "models": {"student": {"accuracy": TEST[self.round], "accuracy_ci": [TEST[self.round] - 0.1, TEST[self.round]]}},
            "dev": {"dev_sha256": h, "row_ids": list(ds["id"]),
                    "student": {"accuracy": DEV[self.round], "accuracy_ci": [DEV[self.round] - 0.1, DEV[self.round]],
                                "predictions": preds}}}))


def test_rounds_resume_at_the_first_unrecorded_one_and_keep_the_best_on_dev(small_run, monkeypatch):
    from app import loop
    from app.registry import RUNNERS

    run, spec = small_run
    fake = StandIns(run, crash_train_in=2)
    for name, fn in fake.runners().items():
        monkeypatch.setitem(RUNNERS, name, fn)
    with pytest.raises(RuntimeError, match="killed mid-train"):
        loop._rounds(spec, run, None, loop.read_rounds(run), 2)
    first = loop.read_rounds(run)
    assert [x["round"] for x in first] == [0, 1]  # round 2 died: not recorded
    fake.calls.clear()
    done = loop._rounds(spec, run, None, loop.read_rounds(run), 2)  # the rerun
    assert fake.calls == ["generate", "curate", "train", "eval"]  # round 2 only: 0 and 1 are not redone
    assert done == loop.read_rounds(run) == json.loads((run / "loop.json").read_text())
    assert [x["round"] for x in done] == [0, 1, 2]
    for x in done:
        assert set(x) >= {"round", "rows", "dev", "test", "targets", "adapter", "kept"}
        assert x["dev"]["accuracy"] == DEV[x["round"]] and x["test"]["accuracy"] == TEST[x["round"]]
        assert len(x["dev"]["accuracy_ci"]) == 2 and len(x["test"]["accuracy_ci"]) == 2
        assert (run / x["adapter"] / "weights").read_text() == f"round {x['round']}"  # each round's adapter kept
    assert [x["rows"] for x in done] == [30, 40, 50]
    assert done[0]["targets"] == 0 and all(x["targets"] > 0 for x in done[1:])
    assert [x["round"] for x in done if x["kept"]] == [1]  # best on dev; round 2 is best on test, not chosen
    targets = json.loads((run / "generate" / "targets.json").read_text())  # round 2 added targets of its own,
    asked_1 = first[1]["targets_asked"]  # before it crashed; the rerun still counts them as its own
    assert asked_1 == done[1]["targets"] > 0 and len(targets) == asked_1 + done[2]["targets"] == done[2]["targets_asked"]
    assert not any(t in targets[:asked_1] for t in targets[asked_1:])
    m = json.loads((run / "blindspots" / "manifest.json").read_text())
    assert m["split"] == "dev" and m["contrastive_targets"] >= 1  # blind spots saw the student's dev errors
    # the round's rows follow the training rows' label mix, not the confused labels (labeling/target_mix.py)
    bs = json.loads((run / "blindspots" / "blindspots.json").read_text())
    per: dict[str, int] = {}
    for t in bs["targets"]:
        per[t["label"]] = per.get(t["label"], 0) + t["count"]
    mix = bs["label_mix"]["per_label"]
    assert sum(per.values()) == bs["label_mix"]["rows"] and per == {lab: x["gets"] for lab, x in mix.items() if x["gets"]}
    assert mix["card_arrival"]["asked"] == 0 < mix["card_arrival"]["gets"]  # the label errors were mistaken FOR
    from decision.report import render_html

    sec = render_html(run).split('<section id="rounds">')[1].split("</section>")[0]
    assert sec.count("<tr>") == 4 and "0.800 [0.700, 0.800]" in sec and sec.count(">kept<") == 1


def test_a_finished_loop_is_not_rerun_and_needs_a_dev_split(small_run, monkeypatch, tmp_path):
    import yaml

    from app import loop
    from distilforge.runctx import prepare

    run, spec = small_run
    rounds = [{"round": 0, "dev": {"accuracy": 0.5}}, {"round": 1, "dev": {"accuracy": 0.4}}]
    (run / "loop.json").write_text(json.dumps(rounds))
    assert loop.run_loop(run, 1) == rounds  # both rounds recorded: nothing runs, no teacher is started
    assert loop.choose(rounds) == 0
    (run / "loop.json").write_text('[{"round": 1}]')
    with pytest.raises(loop.LoopError, match="loop.json: expected a list of rounds"):
        loop.read_rounds(run)
    raw = yaml.safe_load(TASK.read_text())
    raw.pop("traffic", None)
    for p in raw.get("profiles", {}).values():
        p.pop("traffic", None)
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(raw))
    bare = tmp_path / "bare"
    prepare(bare, tmp_path / "task.yaml", "smoke", create=True)
    with pytest.raises(loop.LoopError, match="set `traffic:`.*never used to choose"):
        loop.run_loop(bare, 1)


def test_later_rounds_rotate_keywords_so_a_repeated_target_asks_anew():
    from app.loop import for_round

    t = [{"label": "pin_blocked", "keywords": ["pin", "unblock", "wrong"], "attributes": {}, "count": 4}]
    assert for_round(t, 1) == t
    assert for_round(t, 2)[0]["keywords"] == ["unblock", "wrong", "pin"]
    assert for_round(t, 4)[0]["keywords"] == t[0]["keywords"]  # a full turn


def test_rounds_are_scored_and_chosen_on_the_headline_score_of_any_task_type(tmp_path):
    """An extraction run's metrics carry `score` (micro field-F1), not `accuracy`: the loop records
    and chooses on it; a classifier's rounds keep their `accuracy` names as well."""
    from app import loop

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps({
        "metric": "micro_f1", "models": {"student": {"score": 0.71, "score_ci": [0.6, 0.8]}},
        "dev": {"student": {"score": 0.64, "score_ci": [0.5, 0.75]}}}))
    got = loop.score(run)
    assert got == {"dev": {"metric": "micro_f1", "score": 0.64, "score_ci": [0.5, 0.75]},
                   "test": {"metric": "micro_f1", "score": 0.71, "score_ci": [0.6, 0.8]}}
    rounds = [{"round": 0, "dev": got["dev"]}, {"round": 1, "dev": {**got["dev"], "score": 0.7}},
              {"round": 2, "dev": {**got["dev"], "score": 0.66}}]
    assert loop.choose(rounds) == 1
    assert loop._ci(rounds[1]["dev"]) == "0.700 [0.500, 0.750]"
    (run / "eval" / "metrics.json").write_text(json.dumps({"metric": "accuracy", "models": {"student": {
        "accuracy": 0.8, "accuracy_ci": [0.7, 0.9], "score": 0.8, "score_ci": [0.7, 0.9]}}}))
    assert loop.score(run)["test"] == {"metric": "accuracy", "score": 0.8, "score_ci": [0.7, 0.9],
                                       "accuracy": 0.8, "accuracy_ci": [0.7, 0.9]}
