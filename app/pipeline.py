"""`distilforge run`: every stage in order, in one run directory, with per-stage timings.

The stages and their order come from the one registry (app/registry.py over the core's
distilforge/stage.py PIPELINE). The teacher is started once for the stages that need it
(generate .. eval) and stopped after the last of them if this run started it. Each stage decides
for itself whether its inputs changed.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distilforge import runlock
from distilforge.atomic import atomic_write_json
from distilforge.layout import Run
from app.registry import stages
from distilforge.runctx import prepare, set_threads

console = Console(stderr=True)


def run_all(task: Path, profile: str | None, run: Path, report: bool = True, respec: bool = False) -> dict:
    """Walk the stage registry in order. A known failure propagates as its DistilforgeError (one
    line and its exit code, app/cli.py); the teacher is up from the first stage that needs it to
    the last."""
    from distilforge.teacher import teacher_endpoint

    timings: dict[str, float] = {}
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
            fn(spec, run, ep)
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
