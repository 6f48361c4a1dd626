"""The `traffic` stage (curation/traffic.py): real inputs labelled by the real 0.5B teacher, through
curate, training and eval.

The traffic source is a small CSV written here from Banking77 TRAIN texts: five rows of the task's
two intents, two of another intent (outside the slice), and two planted leaks of locked TEST rows
(an exact copy with other casing, and a copy with a greeting in front: n-gram overlap). The teacher
is asked five times in all (three training rows, two dev rows); the generated rows curate mixes
them with are written by hand, so no generation request is spent here.
"""
from __future__ import annotations

import csv
import json
import shutil

import datasets
import pytest
import yaml

from conftest import BANKING77, TASK, cli
from curation import traffic as tr
from distilforge.layout import Run
from distilforge.manifest import Stage, read_manifest
from distilforge.records import Metrics
from distilforge.secrets import Secret
from distilforge.spec import parse_spec
from distilforge.teacher import Endpoint

LABELS = ["card_arrival", "exchange_rate"]


def _rows(name: str) -> list[tuple[str, str]]:
    """(text, intent) rows of a Banking77 file, read from ../shared at run time (never copied here)."""
    with open(BANKING77 / name, newline="") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def _of(rows: list[tuple[str, str]], label: str, picks: list[int]) -> list[tuple[str, str]]:
    mine = [r for r in rows if r[1] == label]
    return [mine[i] for i in picks]


_TRAIN, _TEST = _rows("train.csv"), _rows("test.csv")
SLICE = _of(_TRAIN, "card_arrival", [0, 1, 3]) + _of(_TRAIN, "exchange_rate", [3, 1])  # TRAIN texts of the 2 intents
OFF_SLICE = _of(_TRAIN, "pin_blocked", [0, 1])  # TRAIN texts of another intent
_LOCKED = [t for t, _ in _of(_TEST, "card_arrival", [0, 1])]  # locked: the first card_arrival TEST rows
EXACT = _LOCKED[0].lower().rstrip("?")  # an exact copy (other casing, no "?")
NEAR = "Hello there, " + _LOCKED[1]  # the locked row with a greeting in front (n-gram overlap)


def write_spec(tmp, base_url: str, name: str = "spec.yaml", **traffic) -> tuple:
    src = tmp / "traffic.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        w.writerows([SLICE[0], (EXACT, "card_arrival"), OFF_SLICE[0], *SLICE[1:3], (NEAR, "card_arrival"),
                     OFF_SLICE[1], *SLICE[3:]])
    raw = yaml.safe_load(TASK.read_text())
    raw["name"] = "traffic-test"
    raw["labels"] = [lab for lab in raw["labels"] if lab["name"] in LABELS]
    raw["teacher"] = {"endpoint": "openai", "base_url": base_url, "model": "qwen2.5-coder-0.5b",
                      "structured_output": "llama_cpp", "max_tokens": 60}
    raw["student"] = {"base": "tiny-random"}
    raw["training"] = {"epochs": 1, "batch_size": 4, "max_length": 128}
    raw["heldout"] = {**raw["heldout"], "source": str(BANKING77 / "test.csv"), "max_per_label": 2}
    raw["eval"] = {"teacher": False}
    raw["traffic"] = {"source": str(src), "text_column": "text", "label_column": "category",
                      "max_rows": 3, "dev_rows": 2, "seed": 1, **traffic}
    raw.pop("profiles")
    p = tmp / name
    p.write_text(yaml.safe_dump(raw))
    return p, parse_spec(raw)


def generated_rows(spec) -> datasets.Dataset:
    """Two rows in generate's columns (no teacher_label: generated without teacher agreement)."""
    from curation.generation.generate import ROW_FEATURES

    texts = [("My new card still has not been delivered, where is it?", "card_arrival"),
             ("Which rate do you use when I pay in another currency?", "exchange_rate")]
    rows = [{"id": f"gen-{i}", "label": lab, "text": t, "prompt": spec.student_prompt(t),
             "completion": [{"role": "assistant", "content": lab}], "strategy": "attributes", "attributes": "{}",
             "parent_id": "", "teacher_model": "qwen2.5-coder-0.5b", "endpoint": "x", "prompt_tokens": 1,
             "completion_tokens": 1, "latency_s": 0.1, "cost_usd": 0.0, "attempts": 1, "status": "ok", "error": None}
            for i, (t, lab) in enumerate(texts)]
    return datasets.Dataset.from_list(rows, features=ROW_FEATURES)


@pytest.fixture(scope="module")
def done(tmp_path_factory, fast_teacher):
    """lock -> traffic (real teacher) -> generate (hand-written rows) -> curate -> train -> eval."""
    from curation.stages import curate_stage
    from distilforge.teacher import teacher_endpoint
    from heldout.stages import eval_stage, lock_stage
    from training.stages import train_stage

    tmp = tmp_path_factory.mktemp("traffic")
    path, spec = write_spec(tmp, fast_teacher["base_url"])
    run = tmp / "run"
    lock_stage(spec, run)
    with teacher_endpoint(spec.teacher, run) as ep:
        tm = tr.traffic_stage(spec, run, ep)
    st = Stage(Run(run).generate, "generate", {}, {}).begin()
    st.save("rows", generated_rows(spec))
    st.finish()
    cm = curate_stage(spec, run)
    train_stage(spec, run)
    eval_stage(spec, run, None)
    return tmp, path, spec, run, tm, cm


def load(run, key):
    return datasets.load_from_disk(str(Run(run).traffic / key))


def test_traffic_rows_get_teacher_labels_and_go_through_curate(done):
    tmp, path, spec, run, tm, cm = done
    rows = load(run, "rows")
    assert len(rows) + sum(d.startswith("training row") for d in load(run, "dropped")["detail"]) == 3  # max_rows
    assert set(rows["strategy"]) == {"traffic"} and set(rows["status"]) == {"ok"}
    assert all(i == tr.row_id(t) for i, t in zip(rows["id"], rows["text"]))
    assert set(rows["label"]) <= set(LABELS) and rows["label"] == rows["teacher_label"]
    assert [c[0]["content"] for c in rows["completion"]] == rows["label"]
    assert set(rows["text"]) <= {t for t, _ in SLICE}
    assert tm["teacher"]["asked_now"] == 5 and tm["teacher"]["cached"] == 0 and tm["teacher"]["tokens"]["prompt"] > 0
    assert tm["read"] == 9 and tm["in_slice"] == 7 and tm["outside_slice"] == 2
    assert tm["teacher_vs_gold"]["dev"]["rows"] <= 2 and 0 <= tm["teacher_vs_gold"]["train"]["rate"] <= 1
    # curate saw generated + traffic rows in one funnel; traffic rows kept carry their strategy
    assert cm["funnel"][0]["in"] == 2 + len(rows)
    curated = datasets.load_from_disk(str(Run(run).curated))
    kept_traffic = {i for i, s in zip(curated["id"], curated["strategy"]) if s == "traffic"}
    assert kept_traffic and cm["traffic"] == {"rows": len(rows), "kept": len(kept_traffic)}
    rejected_traffic = set()
    if cm["outputs"]["rejected"]["rows"]:  # (a saved empty dataset cannot be loaded back)
        rejected = datasets.load_from_disk(str(Run(run).curate / "rejected"))
        rejected_traffic = {i for i, s in zip(rejected["id"], rejected["strategy"]) if s == "traffic"}
    assert kept_traffic | rejected_traffic == set(rows["id"])
    assert cm["inputs"]["traffic"] == read_manifest(Run(run).traffic)["outputs"]["rows"]["sha256"]
    # the gold labels of the source are never a training target: a traffic row's label is the teacher's
    assert "category" not in curated.column_names and "gold_label" not in rows.column_names


def test_a_row_copying_a_locked_row_is_dropped_with_its_reason_and_in_neither_split(done):
    tmp, path, spec, run, tm, cm = done
    dropped = load(run, "dropped")
    why = {t: (r, d) for t, r, d in zip(dropped["text"], dropped["reason"], dropped["detail"])}
    assert why[EXACT][0] == "heldout_contamination" and "exact copy" in why[EXACT][1]
    assert why[NEAR][0] == "heldout_contamination" and "n-gram overlap" in why[NEAR][1]
    assert tm["dropped"]["heldout_contamination"] == 2
    every = set(load(run, "rows")["text"]) | set(load(run, "dev")["text"])
    assert EXACT not in every and NEAR not in every and not every & {t for t, _ in OFF_SLICE}
    # and the train gate refuses a traffic-format row that copies a locked row (it checks every trained column)
    from training.stages import ContaminationError, contamination_gate

    leaked = tr._dataset([tr._row(spec, Endpoint("http://x", "m", Secret("k"), "openai"),
                                  {"id": tr.row_id(EXACT), "text": EXACT}, "card_arrival")], tr.row_features())
    with pytest.raises(ContaminationError, match="refusing to train"):
        contamination_gate(spec, run, ("training", leaked))


def test_dev_and_training_rows_are_disjoint(done):
    tmp, path, spec, run, tm, cm = done
    rows, dev = load(run, "rows"), load(run, "dev")
    assert not set(rows["text"]) & set(dev["text"]) and not set(rows["id"]) & set(dev["id"])
    assert set(dev["label_source"]) == {"teacher"} and dev["label"] == dev["teacher_label"]
    assert set(dev["gold_label"]) <= set(LABELS)
    assert len(dev) + sum(d.startswith("dev row") for d in load(run, "dropped")["detail"]) == 2
    assert tm["dev_rows"] == len(dev) and tm["train_rows"] == len(rows)


def test_rerun_asks_the_teacher_nothing(done, tmp_path):
    tmp, path, spec, run, tm, cm = done
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (Run(copy).traffic / "manifest.json").unlink()  # force the stage to run again
    dead = Endpoint("http://127.0.0.1:9/v1", "qwen2.5-coder-0.5b", Secret("none"), "openai")  # any request fails
    again = tr.traffic_stage(spec, copy, dead)
    assert again["teacher"]["asked_now"] == 0 and again["teacher"]["cached"] == 5
    for key in ("rows", "dev"):
        a, b = load(run, key), load(copy, key)
        assert list(zip(a["id"], a["text"], a["label"])) == list(zip(b["id"], b["text"], b["label"]))
    assert tr.traffic_stage(spec, copy, dead) == read_manifest(Run(copy).traffic)  # unchanged: skipped


def test_eval_records_a_dev_score_apart_from_the_test_set(done):
    tmp, path, spec, run, tm, cm = done
    m = json.loads(Run(run).metrics.read_text())
    dev = m["dev"]
    assert dev["what"] == "dev (teacher labels)" and dev["n"] == len(load(run, "dev"))
    for name in ("student", "base"):
        assert 0 <= dev[name]["accuracy"] <= 1 and len(dev[name]["accuracy_ci"]) == 2
    assert Metrics.read(run).dev.student.accuracy == dev["student"]["accuracy"]
    assert read_manifest(Run(run).eval)["inputs"]["traffic_dev"] == read_manifest(Run(run).traffic)["outputs"]["dev"]["sha256"]
    assert m["n"] == 4  # the locked test set is scored as before, on its own rows


def test_without_traffic_the_stage_is_skipped_and_forgets_old_rows(done, tmp_path):
    tmp, path, spec, run, tm, cm = done
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    off = spec.model_copy(update={"traffic": None})
    assert tr.traffic_stage(off, copy, None) == {"skipped": tr.SKIPPED}
    assert tr.traffic_rows(copy) is None and tr.dev_split(copy) is None
    assert (Run(copy).traffic / tr.CACHE).exists()  # the teacher's answers stay for next time


def test_bad_source_path_is_one_line_naming_the_field(done, tmp_path):
    tmp, path, spec, run, tm, cm = done
    bad, _ = write_spec(tmp_path, spec.teacher.base_url, source=str(tmp_path / "nope.csv"))
    r = cli("run", bad, "--out", tmp_path / "run")
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: traffic.source:"), r.stderr[-2000:]
    assert "nope.csv" in lines[0] and not (tmp_path / "run" / "traffic" / "manifest.json").exists()


@pytest.mark.parametrize("field, value", [("text_column", "body"), ("label_column", "intent")])
def test_missing_column_is_one_line_naming_the_field(done, tmp_path, field, value):
    tmp, path, spec, run, tm, cm = done
    _, bad = write_spec(tmp_path, spec.teacher.base_url, **{field: value})
    with pytest.raises(tr.TrafficError) as e:
        tr.traffic_stage(bad, run, Endpoint("http://127.0.0.1:9/v1", "m", Secret("none"), "openai"))
    msg = str(e.value)
    assert msg.startswith(f"traffic.{field}: column '{value}' not found") and "\n" not in msg


def test_multi_label_tasks_are_refused(tmp_path):
    raw = yaml.safe_load(TASK.read_text())
    raw.pop("profiles")
    raw.update(multi_label=True, traffic={"source": "x.csv"})
    with pytest.raises(tr.TrafficError, match=r"^traffic: multi-label classification cannot learn"):
        tr.traffic_stage(parse_spec(raw), tmp_path / "run", None)


@pytest.mark.parametrize("field, value, message", [
    ("labels", ["a"], r"^traffic\.labels: only for tasks with labels"),
    ("label_map", {"a": "b"}, r"^traffic\.label_map: only for tasks with labels")])
def test_label_slice_settings_are_refused_for_tasks_without_labels(tmp_path, field, value, message):
    """Extraction traffic is supported (tests/test_nlupp_example.py); a label slice of it means nothing."""
    raw = yaml.safe_load(TASK.read_text())
    raw.pop("profiles")
    raw.pop("labels")
    raw.update(type="extraction", examples=[],
               output_schema={"type": "object", "properties": {"amount": {"type": "number"}}},
               traffic={"source": "x.csv", "label_column": "slots", field: value})
    with pytest.raises(tr.TrafficError, match=message):
        tr.traffic_stage(parse_spec(raw), tmp_path / "run", None)


def test_gold_dev_answers_need_a_task_with_references(tmp_path):
    raw = yaml.safe_load(TASK.read_text())
    raw.pop("profiles")
    raw.pop("labels")
    raw.update(type="instruction", examples=[],
               traffic={"source": "x.csv", "label_column": "reply", "dev_rows": 2, "dev_labels": "gold"})
    with pytest.raises(tr.TrafficError, match=r"^traffic\.dev_labels: gold needs reference answers"):
        tr.traffic_stage(parse_spec(raw), tmp_path / "run", None)


def test_likeness_reference_is_the_slice_without_locked_copies_or_dev_texts(done, tmp_path):
    """curation.filters.min_traffic_similarity compares generated rows with the real traffic: this
    task's slice of the source, never a copy of a locked row (the planted EXACT and NEAR leaks),
    never a dev text (the loop and model selection score on those). The reference is an input of
    curate: its hash is in the manifest, and the funnel shows the filter's step."""
    from curation.stages import _reference, curate_stage

    tmp, path, spec, run, tm, cm = done
    run2 = tmp_path / "run"
    shutil.copytree(run, run2)
    raw = yaml.safe_load(path.read_text())
    raw.setdefault("curation", {}).setdefault("filters", {})["min_traffic_similarity"] = 0.3
    spec2 = parse_spec(raw)
    from heldout.lock import load_locked

    ref = _reference(spec2, Run(run2), load_locked(Run(run2).heldout))
    dev = set(load(run2, "dev")["text"])
    assert dev and not dev & set(ref)
    assert set(ref) == {t for t, _ in SLICE} - dev  # no EXACT, NEAR or off-slice text
    m = curate_stage(spec2, run2)
    assert "traffic_reference" in m["inputs"] and "traffic_reference" not in cm["inputs"]
    assert "traffic_likeness" in [s["step"] for s in m["funnel"]]
    assert m["info"]["traffic_likeness"]["reference_rows"] == len(ref)
    assert curate_stage(spec2, run2)["inputs"] == m["inputs"]  # a rerun with the same reference is skipped
