"""Run one generation phase as a distilabel pipeline in a child process, with a progress bar.

Every phase (base rows, evolved rows, judged preference candidates) has the same shape:
PlannedRequests >> the phase's own teacher steps >> a commit step. The phase modules
(curation/generation/generate.py, curation/generation/judge.py) say what goes in the middle and how a committed row is
built (a `CommitShards` subclass); this module only runs it. It imports neither of them, so the
phases can use it without importing each other.
"""
from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

from distilabel.pipeline import Pipeline

from curation.generation import budget
from curation.generation.gensteps import CommitShards, PlannedRequests, ledger
from distilforge import runlock
from distilforge.errors import RuntimeFailure
from distilforge.spec import TaskSpec
from distilforge.teacher import Endpoint

def in_flight(spec: TaskSpec, endpoint: Endpoint) -> int:
    """Requests in flight: `generation.concurrency`, but at least four per server when requests are
    spread over several: distilabel waits for a whole batch, so with one per server the faster
    server idles until the slower one is done (the servers queue the rest: nothing is lost)."""
    n = len(getattr(endpoint, "base_urls", None) or [1])
    return max(spec.generation.concurrency, 4 * n if n > 1 else 1)


def run_pipeline(spec: TaskSpec, endpoint: Endpoint, reqs: list[dict], out_dir: Path, phase: str, middle, steps: list[str],
                 caps: dict, prefilled: dict | None = None, commit: type[CommitShards] = CommitShards) -> str | None:
    """Run one phase: PlannedRequests >> middle steps >> `commit`. Returns the cap that stopped it."""
    price = budget.prices(spec)
    marker = out_dir / f".stopped-{phase}"
    marker.unlink(missing_ok=True)
    c = in_flight(spec, endpoint)
    est = caps.get("est") or {}
    with Pipeline(name=f"distilforge-{phase}-{spec.name}", description=f"teacher → {phase}") as pipe:
        load = PlannedRequests(name="requests", data=reqs, out_dir=str(out_dir), phase=phase, batch_size=c,
                               max_cost=caps.get("max_cost"), max_tokens=caps.get("max_tokens"),
                               est_tokens=est.get("tokens", 0.0), est_cost=est.get("cost", 0.0))
        commit_step = commit(name="commit", out_dir=str(out_dir), spec_json=spec.model_dump_json(), phase=phase,
                                   model_name=endpoint.model, base_url=endpoint.base_url, price_in=price[0],
                                   price_out=price[1], steps=steps, prefilled=prefilled or {}, input_batch_size=c)
        tasks = middle(c)
        chain = [load, *tasks, commit_step]
        for a, b in zip(chain, chain[1:]):
            a >> b
    on_ray = spec.backend.kind == "ray"
    if on_ray:
        from curation.generation import raygen

        pipe = raygen.on_ray(pipe, tasks, len(getattr(endpoint, "base_urls", None) or [1]), spec.backend)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(spec, out_dir, reqs, phase, stop), daemon=True)
    t0 = time.time()
    child = multiprocessing.get_context("fork").Process(target=_run_child, args=(pipe, on_ray, spec.backend, os.getpid()))
    child.start()
    watcher.start()
    killed = False
    try:
        done_at = None
        while child.is_alive():
            child.join(1.0)
            if done_at is None and _all_recorded(out_dir, reqs, marker, t0):
                done_at = time.time()
            if done_at is not None and child.is_alive() and time.time() - done_at > EXIT_GRACE_S:
                # every shard is committed and recorded: only distilabel's shutdown is left, and it
                # sometimes never returns (the upstream hang family of #1065). Nothing is lost.
                logging.getLogger("distilforge").warning(
                    "generate (%s): all shards recorded but distilabel did not exit in %ss; stopped it", phase,
                    EXIT_GRACE_S)
                _kill_tree(child)
                killed = True
    finally:
        if child.is_alive():
            _kill_tree(child)
        stop.set()
        watcher.join(timeout=5)
        _detach_pipeline_logging()
    if child.exitcode != 0 and not killed:
        raise GenerationError(f"generate ({phase}): the distilabel pipeline failed (exit code {child.exitcode}); "
                              f"committed shards are kept, rerun to continue")
    return marker.read_text().strip() if marker.exists() else None


EXIT_GRACE_S = 30


class GenerationError(RuntimeFailure, RuntimeError):
    pass


class GenerationFailed(RuntimeFailure):
    """Every row failed (teacher unreachable, or every answer unusable). The rows and their reasons
    are on disk; rc 1. Not a GenerationError, which the CLI's older handlers map to rc 2."""


def _run_child(pipe, on_ray: bool, backend, parent_pid: int) -> None:
    """The pipeline runs in a forked child, so a stuck distilabel (and its worker pool) can be
    stopped as a whole. It stays in the CLI's process group: `kill -- -PGID` still ends everything.
    It and every process forked beneath it die with the CLI (runlock.die_with_parent): after a
    `kill -9` of the CLI alone nothing keeps committing shards next to a rerun."""
    runlock.die_with_parent(parent_pid)
    try:
        if on_ray:
            from curation.raybackend import ray_session

            with ray_session(backend):
                pipe.run(use_cache=False)
        else:
            pipe.run(use_cache=False)
    except BaseException:  # noqa: BLE001 - reported by exit code; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _kill_tree(child) -> None:
    """SIGKILL the pipeline child and every process under it (distilabel's pool, Ray's driver side)."""
    for pid in [*runlock.descendants(child.pid), child.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    child.join(10)


def _all_recorded(out_dir: Path, reqs: list[dict], marker: Path, t0: float) -> bool:
    """True once every shard of this phase has a ledger entry from this run (committed or not), or
    a budget stop was written (the request step waits for in-flight shards before writing it)."""
    if marker.exists():
        return True
    want = {r["shard_id"] for r in reqs}
    seen = {e["shard"] for e in ledger(out_dir) if e.get("t", 0) >= t0 - 1}
    return want <= seen


def _watch(spec: TaskSpec, out_dir: Path, reqs: list[dict], phase: str, stop: threading.Event) -> None:
    """Progress bar fed by the spend ledger: rows, rows/s, tokens/s, cost so far, ETA."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    start = len(ledger(out_dir))
    t0 = time.time()
    cols = (TextColumn(f"[bold]{phase}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=False) as bar:
        total = sum(int(r.get("n_messages") or 1) for r in reqs)  # rows: a batch request asks for several
        task = bar.add_task(phase, total=total, completed=0, info="")
        while True:
            done = stop.is_set()
            new = ledger(out_dir)[start:]  # each shard committed at most once (gensteps.ledger)
            rows = min(sum(e.get("rows", 0) for e in new if e.get("committed")), total)
            toks = sum(e.get("completion_tokens", 0) for e in new)
            cost = budget.spent(out_dir)["cost_usd"]
            dt = max(time.time() - t0, 1e-6)
            bar.update(task, completed=rows, info=f"{rows / dt:.2f} rows/s  {toks / dt:.1f} tok/s  ${cost:.4f}")
            if done:
                return
            stop.wait(1.0)


def _detach_pipeline_logging() -> None:
    """distilabel leaves queue handlers on the root logger after a run; later log calls would fail."""
    for name in [None, *logging.root.manager.loggerDict]:
        lg = logging.getLogger(name)
        for h in list(getattr(lg, "handlers", [])):
            if isinstance(h, logging.handlers.QueueHandler):
                lg.removeHandler(h)
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


