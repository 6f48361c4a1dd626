"""The spine end to end: `distilforge run --profile smoke` against the real teacher and TRL."""
from __future__ import annotations

import json
import time

import datasets
import yaml

from conftest import TASK, cli
from distilforge.manifest import dataset_hash, read_manifest
from heldout.lock import load_locked, row_sha
from decision.report import SECTIONS, esc
from training.common import dir_hash

STAGE_OUTPUTS = {"generate": ["rows"], "curate": ["curated", "rejected"]}


def test_every_stage_wrote_its_dataset_and_manifest(smoke_run):
    for stage, keys in STAGE_OUTPUTS.items():
        m = read_manifest(smoke_run / stage)
        assert m and m["stage"] == stage and m["fingerprint"]
        for k in keys:
            ds = datasets.load_from_disk(str(smoke_run / stage / k))
            assert m["outputs"][k]["rows"] == len(ds)
            assert m["outputs"][k]["sha256"] == dataset_hash(ds)  # manifest hash = what is on disk
    spec = json.loads((smoke_run / "spec.json").read_text())
    labels = [lab["name"] for lab in spec["labels"]]
    # held-out: 2 rows a label (smoke), each row's hash is the hash of the locked copy's row
    lock = json.loads((smoke_run / "heldout" / "lock.json").read_text())
    held = load_locked(smoke_run / "heldout")
    assert lock["n"] == len(held) == 20 and lock["labels"] == {lab: 2 for lab in labels}
    assert [r["sha256"] for r in lock["rows"]] == [row_sha(t, lab) for t, lab in zip(held["text"], held["label"])]
    assert [r["id"] for r in lock["rows"]] == list(held["id"])
    # train: the manifest's adapter hash is the adapter on disk, a LoRA of the spec's rank
    tm = read_manifest(smoke_run / "train")
    assert tm["adapter_sha256"] == dir_hash(smoke_run / "train" / tm["adapter"])
    cfg = json.loads((smoke_run / "train" / tm["adapter"] / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == spec["training"]["lora_r"]
    # eval scored that adapter on that lock; the report shows the verdict decide wrote
    metrics = json.loads((smoke_run / "eval" / "metrics.json").read_text())
    assert metrics["adapter_sha256"] == tm["adapter_sha256"] and metrics["heldout_sha256"] == lock["sha256"]
    decision = json.loads((smoke_run / "decide" / "decision.json").read_text())
    html = (smoke_run / "report.html").read_text()
    assert esc(decision["verdict_line"]) in html and all(f'<section id="{sid}">' in html for sid in SECTIONS)
    # blind spots: the clusters partition the real dev split's rows (never the locked ones); one
    # gap target per gap cluster (error and contrastive targets come on top)
    bs = json.loads((smoke_run / "blindspots" / "blindspots.json").read_text())
    gaps = bs["coverage"]["gaps"]
    dev = datasets.load_from_disk(str(smoke_run / "traffic" / "dev"))
    assert bs["coverage"]["dev_rows"] == len(dev) > 0 and sum(g["size"] for g in gaps) == len(dev)
    targets = yaml.safe_load((smoke_run / "blindspots" / "targets.yaml").read_text())["targets"]
    gap_targets = [t for t in targets if t.get("kind", "gap") == "gap"]
    assert len(gap_targets) == sum(g["gap"] for g in gaps) == read_manifest(smoke_run / "blindspots")["gaps"]
    # a round's rows keep the training label mix (labeling/target_mix.py): blind-spot targets keep at
    # least 4 rows; `balance` targets carry the share of labels that have none
    assert all(t["label"] in labels and (t["count"] >= 4 or t["kind"] == "balance") for t in targets)


def test_generated_rows_are_trl_prompt_completion(smoke_run):
    spec = json.loads((smoke_run / "spec.json").read_text())
    labels = [lab["name"] for lab in spec["labels"]]
    ds = datasets.load_from_disk(str(smoke_run / "generate" / "rows"))
    assert len(ds) == 2 * len(labels) and len(set(ds["id"])) == len(ds)
    ok = ds.filter(lambda r: r["status"] == "ok")
    assert len(ok) >= len(ds) * 0.6, ds["error"]
    for r in ok:
        assert r["prompt"][0]["role"] == "system" and r["prompt"][-1] == {"role": "user", "content": r["text"]}
        assert r["completion"] == [{"role": "assistant", "content": r["label"]}]
        assert r["prompt_tokens"] > 20 and r["completion_tokens"] > 0
    m = read_manifest(smoke_run / "generate")
    assert m["tokens"]["prompt"] == sum(ds["prompt_tokens"]) and m["pending_shards"] == 0
    assert "api_key" not in json.dumps(m)


def test_curated_plus_rejected_accounts_for_every_row(smoke_run):
    raw = datasets.load_from_disk(str(smoke_run / "generate" / "rows"))
    traffic = datasets.load_from_disk(str(smoke_run / "traffic" / "rows"))  # teacher-labelled real inputs
    kept = datasets.load_from_disk(str(smoke_run / "curate" / "curated"))
    rej = datasets.load_from_disk(str(smoke_run / "curate" / "rejected"))
    assert len(traffic) > 0 and set(traffic["strategy"]) == {"traffic"}
    assert sorted(list(kept["id"]) + list(rej["id"])) == sorted(list(raw["id"]) + list(traffic["id"]))
    assert all(r for r in rej["reason"])
    funnel = read_manifest(smoke_run / "curate")["funnel"]
    assert funnel[0]["in"] == len(raw) + len(traffic) and funnel[-1]["out"] == len(kept)
    for a, b in zip(funnel, funnel[1:]):
        assert a["out"] == b["in"], (a, b)
    assert all(f["in"] - f["dropped"] == f["out"] for f in funnel), funnel
    assert sum(f["dropped"] for f in funnel) == len(rej)  # each rejected row dropped by exactly one step


def test_metrics_score_three_models_on_the_locked_rows(smoke_run):
    m = json.loads((smoke_run / "eval" / "metrics.json").read_text())
    lock = json.loads((smoke_run / "heldout" / "lock.json").read_text())
    assert m["n"] == lock["n"] == 20 and m["heldout_sha256"] == lock["sha256"]
    for name in ("base", "student", "teacher"):
        model = m["models"][name]
        acc, (lo, hi) = model["accuracy"], model["accuracy_ci"]
        assert 0 <= lo <= acc <= hi <= 1
        conf, correct = model["confusion"], model["correct"]
        assert sum(conf[i][i] for i in range(len(conf))) == sum(correct)  # the diagonal is the correct rows
        assert acc == round(sum(correct) / len(correct), 4)
        if name != "teacher":  # label scoring always predicts a label: every row is in the matrix
            assert len(correct) == m["n"] and sum(map(sum, conf)) == m["n"]
        else:  # an unparsable teacher answer is a wrong row outside the matrix
            assert len(correct) == model["rows"] and sum(map(sum, conf)) <= model["rows"]
    # the fast teacher really classifies (FACTS: 8/8 on a small intent check); chance is 0.1
    assert m["models"]["teacher"]["accuracy"] >= 0.5
    assert m["models"]["teacher"]["tokens"]["calls"] == 20 and m["models"]["teacher"]["tokens"]["prompt"] > 0
    assert "text" not in json.dumps(m["models"]["base"])  # no held-out text in metrics


def test_rerun_skips_unchanged_stages(smoke_run, fast_teacher):
    t0 = time.time()
    r = cli("run", TASK, "--profile", "smoke", "--out", smoke_run)
    assert r.returncode == 0, r.stderr[-2000:]
    for stage in ("generate", "curate", "train", "eval", "blindspots"):  # the report is always rewritten
        assert f"{stage}: inputs unchanged" in r.stderr + r.stdout, r.stderr[-2000:]
    assert "held-out: verified 20 locked rows" in r.stderr
    assert r.stdout.count("skipped") >= 5, r.stdout[-2000:]  # the stages table says so, from each stage's record
    assert time.time() - t0 < 120


def test_eval_again_reuses_the_unchanged_base_and_teacher(smoke_run, tmp_path):
    """A second eval of the same locked rows (a loop round, a retrain, `eval --force`) asks the base
    and the teacher nothing: their answers come from RUN/eval/answers. The teacher endpoint given
    here is a closed port, so any question to it would fail the eval; a changed teacher is asked."""
    import shutil

    import pytest

    from distilforge.runctx import prepare
    from distilforge.secrets import Secret
    from distilforge.teacher import Endpoint
    from heldout.stages import eval_stage

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    first = json.loads((run / "eval" / "metrics.json").read_text())
    assert first["reused_answers"] == []
    spec = prepare(run)
    closed = Endpoint(base_url="http://127.0.0.1:9/v1", model=first["models"]["teacher"]["model"],
                      api_key=Secret("unused"), kind="embedded")
    eval_stage(spec, run, closed, force=True)
    again = json.loads((run / "eval" / "metrics.json").read_text())
    assert again["reused_answers"] == ["base-test", "teacher-test", "base-dev"]
    for name in ("base", "teacher", "student"):  # the student is scored afresh, and scores the same
        assert again["models"][name]["correct"] == first["models"][name]["correct"]
    assert again["dev"]["base"] == first["dev"]["base"]
    # the teacher's settings are part of the key: one token more and it is asked again (closed port)
    other = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"max_tokens": spec.teacher.max_tokens + 1,
                                                                                 "max_retries": 0})})
    with pytest.raises(Exception):
        eval_stage(other, run, closed, force=True)
    assert json.loads((run / "eval" / "metrics.json").read_text())["reused_answers"] == again["reused_answers"]
