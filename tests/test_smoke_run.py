"""The spine end to end: `distilforge run --profile smoke` against the real teacher and TRL."""
from __future__ import annotations

import json
import time

import datasets

from conftest import TASK, cli
from distilforge.manifest import dataset_hash, read_manifest

STAGE_OUTPUTS = {"generate": ["rows"], "curate": ["curated", "rejected"]}


def test_every_stage_wrote_its_dataset_and_manifest(smoke_run):
    for stage, keys in STAGE_OUTPUTS.items():
        m = read_manifest(smoke_run / stage)
        assert m and m["stage"] == stage and m["fingerprint"]
        for k in keys:
            ds = datasets.load_from_disk(str(smoke_run / stage / k))
            assert m["outputs"][k]["rows"] == len(ds)
            assert m["outputs"][k]["sha256"] == dataset_hash(ds)  # manifest hash = what is on disk
    assert (smoke_run / "heldout" / "lock.json").exists()
    assert (smoke_run / "train" / "adapter" / "adapter_config.json").exists()
    assert (smoke_run / "eval" / "metrics.json").exists() and (smoke_run / "report.html").exists()
    bs = json.loads((smoke_run / "blindspots" / "blindspots.json").read_text())
    assert bs["coverage"]["heldout_rows"] == 20 and bs["coverage"]["gaps"]
    assert (smoke_run / "blindspots" / "targets.yaml").exists()


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
    kept = datasets.load_from_disk(str(smoke_run / "curate" / "curated"))
    rej = datasets.load_from_disk(str(smoke_run / "curate" / "rejected"))
    assert sorted(list(kept["id"]) + list(rej["id"])) == sorted(raw["id"])
    assert all(r for r in rej["reason"])
    funnel = read_manifest(smoke_run / "curate")["funnel"]
    assert funnel[0]["in"] == len(raw) and funnel[-1]["out"] == len(kept)


def test_metrics_score_three_models_on_the_locked_rows(smoke_run):
    m = json.loads((smoke_run / "eval" / "metrics.json").read_text())
    lock = json.loads((smoke_run / "heldout" / "lock.json").read_text())
    assert m["n"] == lock["n"] == 20 and m["heldout_sha256"] == lock["sha256"]
    for name in ("base", "student", "teacher"):
        acc, (lo, hi) = m["models"][name]["accuracy"], m["models"][name]["accuracy_ci"]
        assert 0 <= lo <= acc <= hi <= 1
        assert sum(map(sum, m["models"][name]["confusion"])) <= m["n"]
    # the fast teacher really classifies (FACTS: 8/8 on a small intent check); chance is 0.1
    assert m["models"]["teacher"]["accuracy"] >= 0.5
    assert m["models"]["teacher"]["tokens"]["calls"] == 20 and m["models"]["teacher"]["tokens"]["prompt"] > 0
    assert "text" not in json.dumps(m["models"]["base"])  # no held-out text in metrics


def test_rerun_skips_unchanged_stages(smoke_run, fast_teacher):
    t0 = time.time()
    r = cli("run", TASK, "--profile", "smoke", "--out", smoke_run)
    assert r.returncode == 0, r.stderr[-2000:]
    for stage in ("generate", "curate", "train", "eval"):  # blindspots/report are cheap and always rerun
        assert f"{stage}: inputs unchanged" in r.stderr, r.stderr[-2000:]
    assert "held-out: verified 20 locked rows" in r.stderr
    assert time.time() - t0 < 120
