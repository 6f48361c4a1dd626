"""`distilforge run`: every stage in order, in one run directory, with per-stage timings.

The stages and their order come from the one registry (app/registry.py over the core's
distilforge/stage.py PIPELINE). The teacher is started once for the stages that need it
(generate .. eval) and stopped after the last of them if this run started it. Each stage decides
for itself whether its inputs changed.
"""
from __future__ import annotations

import calendar
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distilforge import runlock
from distilforge.atomic import atomic_write_json
from distilforge.layout import Run
from distilforge.records import HeldoutLock, StageManifest
from app.registry import stages
from distilforge.runctx import prepare, set_threads

console = Console(stderr=True)


def run_all(task: Path, profile: str | None, run: Path, report: bool = True, respec: bool = False) -> dict:
    """Walk the stage registry in order. A known failure propagates as its DistilforgeError (one
    line and its exit code, app/cli.py); the teacher is up from the first stage that needs it to
    the last."""
    from distilforge.teacher import teacher_endpoint

    timings: dict[str, float] = {}
    outcome: dict[str, str] = {}
    spec = prepare(run, task, profile, respec=respec, create=True)
    lock = runlock.acquire(run, "run")  # noqa: F841 - one writer per RUN until run_all returns
    set_threads()
    walk = stages()
    teacher_from = next(i for i, (s, _) in enumerate(walk) if s.teacher)
    teacher_to = max(i for i, (s, _) in enumerate(walk) if s.teacher)
    with ExitStack() as stack:
        ep = None
        for i, (info, fn) in enumerate(walk):
            if i == teacher_from:
                ep = stack.enter_context(teacher_endpoint(spec.teacher, run))
            t0 = time.time()
            console.rule(f"[bold]{info.name}")
            outcome[info.name] = _outcome(fn(spec, run, ep), t0)
            timings[info.name] = round(time.time() - t0, 1)
            if i == teacher_to:
                stack.close()  # stops the teacher if this run started it
                ep = None
    if report:
        t0 = time.time()
        console.rule("[bold]report")
        _report(run, task)
        timings["report"] = round(time.time() - t0, 1)
    atomic_write_json(Run(run).timings, timings)
    t = Table(title="stages")
    for col in ("stage", "wall (s)", "what it did"):
        t.add_column(col)
    for k, v in timings.items():
        t.add_row(k, f"{v:.1f}", outcome.get(k, ""))
    Console().print(t)
    return timings


def _outcome(rec: HeldoutLock | StageManifest | None, t0: float) -> str:
    """One line from a stage's typed record: whether it ran or found its inputs unchanged, and what
    it wrote (rows per output)."""
    if rec is None:
        return "nothing to do"
    if isinstance(rec, HeldoutLock):
        return f"{rec.n} locked rows (sha256 {str(rec.sha256)[:12]})"
    if (rec.model_extra or {}).get("skipped"):  # a stage with nothing to do says why in its manifest
        return str(rec.model_extra["skipped"]).split(";")[0]
    started = calendar.timegm(time.strptime(rec.started, "%Y-%m-%dT%H:%M:%SZ")) if rec.started else 0
    rows = ", ".join(f"{k} {o.rows}" for k, o in rec.outputs.items() if o.rows is not None)
    what = "ran" if started >= int(t0) else "unchanged, skipped"
    return f"{what}: {rows}" if rows else what


def _report(run: Path, task: Path) -> None:
    """Decision + HTML report; economics inputs come from `decide.yaml` beside the task spec."""
    from decision.cli import decide_run
    from decision.report import render_report

    cfg = Path(task).parent / "decide.yaml"
    d = decide_run(run, cfg if cfg.exists() else None)
    path = render_report(run)
    Console().print(d.get("verdict_line") or f"VERDICT: {d.get('verdict')}", highlight=False)
    console.print(f"report: {path}")
