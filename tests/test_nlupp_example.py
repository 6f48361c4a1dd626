"""The NLU++ slot-extraction example (examples/nlupp_banking/task.yaml): its `traffic` stage on the
smoke profile, with the real 0.5B teacher, turns real unlabelled banking messages into
teacher-extracted training rows (canonical JSON completions) and a gold dev split.

The traffic source is the example's own (NLU++ train.jsonl, read from ../shared at run time and
never copied here) written to a temporary file with one planted row: a locked held-out message
in other casing. The held-out set is the example's own too (NLU++ heldout.jsonl), locked first.
The teacher is asked once per training row (the smoke profile's 6; dev rows keep their gold).
"""
from __future__ import annotations

import json

import datasets
import pytest

from conftest import REPO
from curation import traffic as tr
from distilforge.layout import Run
from distilforge.spec import load_spec
from heldout.formats import task_format

EXAMPLE = REPO / "examples" / "nlupp_banking" / "task.yaml"
NLUPP = REPO.parent / "shared" / "data" / "nlupp_banking"


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def done(tmp_path_factory, fast_teacher):
    """lock (the example's held-out rows) -> traffic (the example's source + a planted leak, real teacher)."""
    from distilforge.teacher import teacher_endpoint
    from heldout.stages import lock_stage

    tmp = tmp_path_factory.mktemp("nlupp")
    spec = load_spec(EXAMPLE, profile="smoke")
    locked_text = _jsonl(NLUPP / "heldout.jsonl")[0]["text"]
    planted = locked_text.upper() if locked_text.upper() != locked_text else locked_text + "!"
    source = _jsonl(NLUPP / "train.jsonl")
    src = tmp / "traffic.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [*source[:5], {"text": planted, "slots": {}}, *source[5:]]))
    teacher = spec.teacher.model_copy(update={"endpoint": "openai", "base_url": fast_teacher["base_url"],
                                              "model": "qwen2.5-coder-0.5b", "replicas": 1,
                                              "structured_output": "llama_cpp"})  # what `auto` is on the embedded one
    spec = spec.model_copy(update={"teacher": teacher, "traffic": spec.traffic.model_copy(update={"source": str(src)})})
    run = tmp / "run"
    lock_stage(spec, run)
    with teacher_endpoint(spec.teacher, run) as ep:
        m = tr.traffic_stage(spec, run, ep)
    return spec, run, m, source, planted


def load(run, key):
    return datasets.load_from_disk(str(Run(run).traffic / key))


def test_training_rows_are_teacher_extractions_in_canonical_json(done):
    spec, run, m, source, planted = done
    fmt = task_format(spec)
    rows = load(run, "rows")
    invalid = [d for d in load(run, "dropped")["detail"] if d.startswith("training row")] \
        if m["outputs"].get("dropped") else []
    assert len(rows) + len(invalid) == spec.traffic.max_rows == 6
    assert len(rows) >= 1  # the 0.5B answers in the schema under the grammar
    assert m["teacher"]["asked_now"] == 6 and m["teacher"]["cached"] == 0  # dev rows keep gold: not asked
    by_text = {r["text"]: r for r in source}
    for r in rows.to_list():
        comp = r["completion"][0]["content"]
        assert fmt.validate_answer(comp) == (comp, "")  # schema-valid, and already the canonical form
        assert json.loads(comp) == json.loads(fmt.canonical(json.loads(comp)))
        assert r["teacher_label"] == comp and r["label"] == "" and r["strategy"] == "traffic"
        assert r["prompt"] == spec.student_prompt(r["text"]) and r["id"] == tr.row_id(r["text"])
        assert r["text"] in by_text  # a real message of the source (never the planted one)
    # the teacher's agreement with the gold slots, as extraction measures it
    vs = m["teacher_vs_gold"]["train"]
    assert vs["rows"] == len(rows) and 0 <= vs["exact_match"] <= 1 and 0 <= vs["micro_f1"] <= 1
    assert m["label_distribution"] is None  # answers, not categories


def test_dev_split_keeps_the_gold_answers(done):
    spec, run, m, source, planted = done
    fmt = task_format(spec)
    dev = load(run, "dev")
    assert len(dev) == spec.traffic.dev_rows == 4 and set(dev["label_source"]) == {"gold"}
    gold = {r["text"]: fmt.heldout_target(r["slots"]) for r in source}
    assert dev["label"] == [gold[t] for t in dev["text"]] == dev["gold_label"]
    assert all(t is None for t in dev["teacher_label"])  # not asked
    assert not set(dev["text"]) & set(load(run, "rows")["text"])


def test_a_row_copying_a_locked_row_is_dropped(done):
    spec, run, m, source, planted = done
    dropped = load(run, "dropped")
    why = {t: (r, d) for t, r, d in zip(dropped["text"], dropped["reason"], dropped["detail"])}
    assert why[planted][0] == "heldout_contamination" and "exact copy" in why[planted][1]
    assert planted not in set(load(run, "rows")["text"]) | set(load(run, "dev")["text"])
    assert m["dropped"]["heldout_contamination"] >= 1
