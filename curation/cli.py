"""`distilforge teacher serve|status|stop`, `distilforge traffic`, `distilforge generate` and `distilforge curate`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distilforge import runlock
from distilforge.errors import DistilforgeError, UserError
from distilforge.layout import Run
from distilforge.runctx import ProfileOpt, RespecOpt, RunArg, SpecOpt, cli_errors, fail, prepare

teacher_app = typer.Typer(help="The embedded llama.cpp teacher server.", no_args_is_help=True,
                          pretty_exceptions_show_locals=False)


@teacher_app.command("serve")
@cli_errors
def serve_cmd(model: str = typer.Option("qwen2.5-coder-1.5b", help="Embedded model name or .gguf path."),
              port: Optional[int] = typer.Option(None, help="Port on 127.0.0.1 (default: a free one; replicas take the next ones)."),
              replicas: int = typer.Option(1, min=1, help="Single-thread server processes (one per free core).")):
    """Start the embedded teacher (or report the one already running)."""
    from distilforge.teacher import serve

    st = serve(model, port=port, replicas=replicas)  # TeacherError/AssetError: one line, their class's code
    typer.echo(f"{'running' if st.get('reused') else 'started'}: {st['model']} at {', '.join(st['base_urls'])}")


@teacher_app.command("status")
def status_cmd():
    """List running embedded teachers."""
    from distilforge.teacher import status

    rows = status()
    if not rows:
        typer.echo("no embedded teacher running")
    for st in rows:
        typer.echo(json.dumps({k: st.get(k, 0) for k in ("model", "replica", "base_url", "pid", "healthy")}))


@teacher_app.command("stop")
def stop_cmd(model: str = typer.Option("qwen2.5-coder-1.5b", help="Embedded model name.")):
    """Stop an embedded teacher (every replica)."""
    from distilforge.teacher import stop

    typer.echo("stopped" if stop(model) else "not running")


@cli_errors
def generate_cmd(run: Path = RunArg, spec: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
                 respec: bool = RespecOpt,
                 dry_run: bool = typer.Option(False, "--dry-run", help="Forecast requests, tokens and cost; generate nothing."),
                 calibrate: int = typer.Option(3, "--calibrate", min=0,
                                               help="Dry run: real calibration requests (0: estimate from prompt length)."),
                 max_cost: Optional[float] = typer.Option(None, "--max-cost", min=0,
                                                          help="Stop (at a shard boundary) once this many USD are spent in RUN."),
                 max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1,
                                                          help="Stop once this many tokens are spent in RUN."),
                 targets: Optional[Path] = typer.Option(None, "--targets",
                                                        help="YAML list of {label, keywords, attributes, count}: extra "
                                                             "'targeted' requests (accumulate in RUN/generate/targets.json)."),
                 backend: Optional[str] = typer.Option(None, "--backend", help="local | ray (default: the spec's "
                                                       "backend.kind); ray: distilabel's RayPipeline, same rows")):
    """Ask the teacher for task rows (resumable: committed shards are never redone)."""
    from curation.generation.plan import load_targets
    from curation.stages import forecast_stage, generate_stage
    from distilforge.teacher import teacher_endpoint

    if backend not in (None, "local", "ray"):
        raise UserError(f"--backend: '{backend}' is not one of: local, ray")
    try:
        s = prepare(run, spec, profile, respec=respec, create=True)
        lock = runlock.acquire(run, "generate")  # noqa: F841 - one writer per RUN until this command returns
        if backend is not None:
            s = s.model_copy(update={"backend": s.backend.model_copy(update={"kind": backend})})
        if s.backend.kind == "ray":
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise UserError("the Ray backend needs Ray: pip install 'distilforge[ray]'")
        if targets is not None:
            from curation.generation.generate import add_targets

            add_targets(Run(run).generate, load_targets(targets, s))
        with teacher_endpoint(s.teacher, Run(run).generate) as ep:
            if dry_run:
                forecast_stage(s, run, ep, calibrate)
            else:
                generate_stage(s, run, ep, max_cost=max_cost, max_tokens=max_tokens)
    except DistilforgeError:
        raise  # cli_errors: one line, the class's exit code (a teacher or pipeline failure: 1)
    except FileNotFoundError as e:  # not one of ours (a library's): still one line, rc 2
        fail(str(e))


@cli_errors
def curate_cmd(run: Path = RunArg, spec: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
               respec: bool = RespecOpt,
               backend: Optional[str] = typer.Option(None, "--backend", help="local | ray (default: the spec's "
                                                     "backend.kind); ray: same results on a Ray cluster")):
    """Dedup, filter and decontaminate the generated rows; every dropped row keeps its reason."""
    import importlib.util

    from curation.stages import curate_stage

    if backend not in (None, "local", "ray"):
        raise UserError(f"--backend: '{backend}' is not one of: local, ray")
    try:
        s = prepare(run, spec, profile, respec=respec)
        lock = runlock.acquire(run, "curate")  # noqa: F841 - one writer per RUN until this command returns
        if backend is not None:
            s = s.model_copy(update={"backend": s.backend.model_copy(update={"kind": backend})})
        if s.backend.kind == "ray" and importlib.util.find_spec("ray") is None:
            raise UserError("the Ray backend needs Ray Data: pip install 'distilforge[ray]'")
        curate_stage(s, run)
    except FileNotFoundError as e:  # a missing stage output (distilforge/manifest.py): rc 2, one line
        fail(str(e))


@cli_errors
def traffic_cmd(run: Path = RunArg, spec: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
                respec: bool = RespecOpt):
    """Label the spec's real traffic with the teacher: training rows for curate plus a dev split (needs a held-out lock)."""
    from curation.traffic import traffic_stage
    from distilforge.teacher import teacher_endpoint

    s = prepare(run, spec, profile, respec=respec, create=True)
    with runlock.acquire(run, "traffic"):  # one writer per RUN until this command returns
        if s.traffic is None:  # nothing to label: no teacher started
            traffic_stage(s, run, None)
            return
        with teacher_endpoint(s.teacher, Run(run).traffic) as ep:
            traffic_stage(s, run, ep)
