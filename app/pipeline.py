"""`distilforge run`: every stage in order, in one run directory, with per-stage timings.

The teacher is started once for the stages that need it (generate, eval) and stopped at the
end if this run started it. Each stage decides for itself whether its inputs changed.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distilforge import runlock
from distilforge.atomic import atomic_write_json
from distilforge.runctx import fail, prepare, set_threads

console = Console(stderr=True)


def run_all(task: Path, profile: str | None, run: Path, report: bool = True, respec: bool = False) -> dict:
    from curation.stages import curate_stage, generate_stage
    from curation.runner import GenerationError
    from distilforge.teacher import TeacherError, teacher_endpoint
    from distilforge.spec import SpecError
    from heldout.lock import HeldoutError
    from heldout.stages import eval_stage, lock_stage
    from distilforge.models import ModelError
    from training.common import ResumeError
    from training.stages import ContaminationError, train_stage

    timings: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        t0 = time.time()
        console.rule(f"[bold]{name}")
        out = fn(*a, **kw)
        timings[name] = round(time.time() - t0, 1)
        return out

    try:
        spec = prepare(run, task, profile, respec=respec, create=True)
        lock = runlock.acquire(run, "run")  # noqa: F841 - one writer per RUN until run_all returns
        set_threads()
        timed("heldout", lock_stage, spec, run)
        with teacher_endpoint(spec.teacher, run) as ep:
            timed("generate", generate_stage, spec, run, ep)
            timed("curate", curate_stage, spec, run)
            timed("train", train_stage, spec, run)
            timed("eval", eval_stage, spec, run, ep if spec.eval.teacher else None)
        from labeling.blindspots import blindspots_stage

        timed("blindspots", blindspots_stage, spec, run)
        if report:
            timed("report", _report, run, task)
    except (SpecError, HeldoutError, TeacherError, ModelError, ContaminationError, ResumeError, ValueError,
            FileNotFoundError, GenerationError) as e:
        fail(str(e))
    atomic_write_json(run / "timings.json", timings)
    t = Table(title="stage wall time (s)")
    for k in timings:
        t.add_column(k)
    t.add_row(*[f"{v:.1f}" for v in timings.values()])
    Console().print(t)
    return timings


def _report(run: Path, task: Path) -> None:
    """Decision + HTML report; economics inputs come from `decide.yaml` beside the task spec."""
    from decision.cli import decide_run
    from decision.report import render_report

    cfg = Path(task).parent / "decide.yaml"
    d = decide_run(run, cfg if cfg.exists() else None)
    path = render_report(run)
    Console().print(d.get("verdict_line") or f"VERDICT: {d.get('verdict')}", highlight=False)
    console.print(f"report: {path}")
