"""The instruction task's held-out eval, with real parts: the example's smoke profile locks the
REAL Banking77 test messages (read from ../shared at run time, no labels), a LoRA adapter is
trained by TRL on the tiny random student, the shared 0.5B teacher writes the reference replies
and judges every reply, and `eval_stage` writes the metrics the report and `decide` read.

What is checked: outcomes that add up, the rows each number stands on, the reply checks, the
teacher as the reference (no score of its own), and no held-out text anywhere in the metrics."""
from __future__ import annotations

import csv
import json

import datasets
import pytest

from conftest import BANKING77, REPO
from distilforge.manifest import Stage
from distilforge.spec import load_spec

EXAMPLE = REPO / "examples" / "instruction" / "task.yaml"
REPLY = "Sorry about that. Open the app, go to Cards and follow the steps there; we will sort it out quickly."


def smoke_spec():
    spec = load_spec(EXAMPLE, "smoke")
    spec.heldout.source = str(BANKING77 / "test.csv")  # absolute: the tests may run from anywhere
    spec.training.max_length = 96
    return spec


def train_rows(spec, n: int = 8) -> datasets.Dataset:
    """Curated-format rows: Banking77 TRAIN messages (never the test file), one canned reply."""
    with open(BANKING77 / "train.csv", newline="") as f:
        texts = [r["text"] for _, r in zip(range(n), csv.DictReader(f))]
    return datasets.Dataset.from_list([
        {"id": f"r{i}", "label": "", "text": t, "strategy": "test", "prompt": spec.student_prompt(t),
         "completion": [{"role": "assistant", "content": REPLY}]} for i, t in enumerate(texts)])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, fast_teacher):
    from distilforge.secrets import Secret
    from distilforge.teacher import Endpoint
    from heldout.lock import load_locked, lock
    from heldout.stages import eval_stage
    from training.stages import train_stage

    spec = smoke_spec()
    run = tmp_path_factory.mktemp("instruction") / "run"
    info = lock(spec.heldout, spec, run / "heldout")
    st = Stage(run / "curate", "curate", {}, {}).begin()
    st.save("curated", train_rows(spec))
    st.finish()
    train_stage(spec, run)
    endpoint = Endpoint(fast_teacher["base_url"], fast_teacher["model"], Secret("none"), "embedded")
    eval_stage(spec, run, endpoint)
    return spec, run, info, load_locked(run / "heldout"), json.loads((run / "eval" / "metrics.json").read_text())


def test_the_lock_holds_real_messages_without_labels(evaluated):
    _, _, info, locked, _ = evaluated
    with open(BANKING77 / "test.csv", newline="") as f:
        source = [r["text"] for r in csv.DictReader(f)]
    assert info["n"] == len(locked) == len(source) > 1000
    assert set(locked["label"]) == {""}  # no reference replies exist, and the Banking77 intent is not one
    assert set(locked["text"]) <= {" ".join(t.split()) for t in source} | set(source)


def test_eval_scores_base_and_student_against_the_teacher(evaluated):
    spec, _, _, _, m = evaluated
    assert m["metric"] == "win_or_tie" and m["n"] == spec.eval.max_rows == 3
    models = m["models"]
    assert set(models) == {"base", "student", "teacher"}
    for name in ("base", "student"):
        e, vs = models[name], models[name]["vs_teacher"]
        assert e["rows"] == vs["n"] == 3
        assert vs["wins"] + vs["ties"] + vs["losses"] == 3
        assert vs["win_rate"] + vs["tie_rate"] + vs["loss_rate"] == pytest.approx(1.0, abs=1e-3)
        assert e["score"] == vs["win_or_tie_rate"] == pytest.approx(1 - vs["loss_rate"], abs=1e-3)
        lo, hi = e["score_ci"]
        assert 0.0 <= lo <= e["score"] <= hi <= 1.0
        assert set(e["table"]) == {"win", "tie", "loss", "asks secrets", "refusal", "length ok"}
        assert e["checks"]["n"] == 3 and {"length_ok", "refusal", "pii_ask", "mean_words"} <= set(e["checks"])
        assert 0 <= vs["unparsable"] <= 6
    assert models["base"]["prompt"] == "full" and models["student"]["prompt"] == spec.student.prompt
    assert models["student"]["kept"]["which"] == "sft"
    t = models["teacher"]
    assert t["score"] is None and t["score_ci"] is None and t["rows"] == 3 and t["model"] == spec.teacher.model
    assert t["tokens"]["calls"] == 3 and t["tokens"]["completion"] > 0
    assert set(t["table"]) == {"asks secrets", "refusal", "length ok"} and t["checks"]["n"] == 3
    judge = m["judge"]
    assert judge["model"] == spec.teacher.model and judge["method"] == spec.eval.judge == "pairwise"
    assert judge["calls"] == 2 * 2 * 3  # base vs teacher and student vs teacher, both orders, on each row
    assert judge["tokens"]["prompt"] > 0 and judge["seconds"] > 0
    assert m["reply_style"] == {"min_words": 10, "max_words": 80}  # "Two to four short sentences"
    assert {"student_vs_teacher", "base_vs_teacher", "student_vs_base"} <= set(m["comparisons"])


def test_graded_judging_on_the_real_teacher(evaluated, fast_teacher):
    """`eval.judge: graded` asks the same endpoint one yes/no question per reply: one call per
    reply, every input gets exactly one outcome, and the yes rates say what the judge did."""
    from distilforge.secrets import Secret
    from distilforge.teacher import Endpoint
    from heldout.pairwise import compare_grades, endpoint_ask, grade

    spec, _, _, locked, _ = evaluated
    endpoint = Endpoint(fast_teacher["base_url"], fast_teacher["model"], Secret("none"), "embedded")
    usage: dict = {"calls": 0, "prompt": 0, "completion": 0, "seconds": 0.0}
    ask = endpoint_ask(endpoint, timeout=120, max_retries=1, usage=usage)
    inputs = [{"instruction": spec.instruction, "input": t} for t in locked["text"][:2]]
    student = grade(ask, inputs, [REPLY, "ok"], style_guide=spec.style_guide)
    teacher = grade(ask, inputs, ["I can't help with that.", REPLY], style_guide=spec.style_guide)
    res = compare_grades(student, teacher)
    assert usage["calls"] == 4 and res["n"] == 2 and all(g in (True, False, None) for g in student + teacher)
    assert res["wins"] + res["ties"] + res["losses"] == 2 and 0 <= res["unparsable"] <= 4
    assert res["student_yes_rate"] == sum(g is True for g in student) / 2


def test_the_judge_can_be_another_endpoint(evaluated, fast_teacher, tmp_path):
    """`eval.judge_endpoint`: replies still come from the teacher, verdicts from the judge block's
    endpoint (here the same llama.cpp server reached as a plain OpenAI-compatible URL, so the
    `openai` path is the one taken), and the metrics say which judge it was."""
    import shutil

    from distilforge.secrets import Secret
    from distilforge.spec import Teacher
    from distilforge.teacher import Endpoint
    from heldout.stages import eval_stage

    spec, run, _, _, _ = evaluated
    spec = spec.model_copy(deep=True)
    spec.eval.max_rows, spec.eval.judge = 2, "graded"
    spec.eval.judge_endpoint = Teacher(endpoint="openai", base_url=fast_teacher["base_url"],
                                       model=fast_teacher["model"])
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    teacher = Endpoint(fast_teacher["base_url"], fast_teacher["model"], Secret("none"), "embedded")
    eval_stage(spec, copy, teacher, force=True)
    m = json.loads((copy / "eval" / "metrics.json").read_text())
    judge = m["judge"]
    assert (judge["endpoint"], judge["is_teacher"], judge["method"]) == ("openai", False, "graded")
    assert judge["calls"] == 3 * 2 and m["models"]["teacher"]["tokens"]["calls"] == 2


def test_no_held_out_text_or_reply_in_the_metrics(evaluated):
    _, run, _, locked, m = evaluated
    dumped = json.dumps(m)
    scored = [r["text"] for r in locked if r["id"] in set(m["row_ids"])]
    assert len(scored) == 3
    for text in scored:
        assert text not in dumped
    assert "per_row" not in dumped and "predictions" not in dumped


def test_without_the_teacher_there_is_no_reference(evaluated):
    from heldout.formats import task_format
    from heldout.formats.instruction import NoReference
    from heldout.stages import EvalContext

    spec, _, _, locked, _ = evaluated
    ctx = EvalContext(spec, locked.select(range(2)), "unused", {}, {"which": "sft"}, "short", "", None, None)
    with pytest.raises(NoReference, match="instruction eval needs the teacher.*eval.teacher: true"):
        task_format(spec).evaluate(ctx)
