"""The stage registry hands back typed records read from what each stage wrote on disk."""
from __future__ import annotations

import time

from conftest import TASK

from app.pipeline import _outcome
from app.registry import RUNNERS, stages
from distilforge.records import HeldoutLock, StageManifest, StageOutput
from distilforge.spec import load_spec
from distilforge.stage import PIPELINE


def test_every_stage_of_the_pipeline_has_one_runner_in_order():
    assert [s.name for s, _ in stages()] == [s.name for s in PIPELINE] == list(RUNNERS)


def test_heldout_runner_returns_the_lock_record(tmp_path):
    spec = load_spec(TASK, profile="smoke")
    rec = RUNNERS["heldout"](spec, tmp_path / "run", None)
    assert isinstance(rec, HeldoutLock)
    assert rec.n == 20 and len(rec.sha256) == 64 and len(rec.rows) == 20
    again = RUNNERS["heldout"](spec, tmp_path / "run", None)  # verified, not re-locked
    assert again.sha256 == rec.sha256
    assert _outcome(rec, time.time()).startswith("20 locked rows")


def test_outcome_tells_a_run_from_a_skip():
    now = time.time()
    rec = StageManifest(stage="curate", started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                        outputs={"curated": StageOutput(path="curated", rows=12)})
    assert _outcome(rec, now) == "ran: curated 12"
    assert _outcome(rec, now + 5) == "unchanged, skipped: curated 12"
    assert _outcome(None, now) == "nothing to do"
    skip = StageManifest(stage="blindspots", started=rec.started, skipped="skipped: blind spots need a real split; x")
    assert _outcome(skip, now) == "skipped: blind spots need a real split"


def test_a_stage_sees_only_the_spec_blocks_it_declares():
    import pytest

    from distilforge.stage import UndeclaredBlock, scoped

    spec = load_spec(TASK, profile="smoke")
    cur = scoped(spec, "curate")
    assert cur.curation.dedup.exact is True and cur.label_names == spec.label_names  # declared + the task
    with pytest.raises(UndeclaredBlock, match=r"stage 'curate' reads spec.training, which .* declares curation, generation"):
        cur.training
    bs = scoped(cur, "blindspots")  # re-scoped from the whole spec, held to its own declaration
    with pytest.raises(UndeclaredBlock):
        bs.heldout  # blind spots never read the locked set's settings
    with pytest.raises(AttributeError):
        cur.name = "x"  # read-only
    assert cur.model_dump(mode="json") == spec.model_dump(mode="json")  # a worker of the stage gets the whole spec
    import pickle

    back = pickle.loads(pickle.dumps(cur))  # a Ray worker of the stage gets the same view
    assert back.curation == spec.curation and back.name == spec.name
    with pytest.raises(UndeclaredBlock):
        back.training
