"""`distilforge teacher serve|status|stop`, `distilforge generate` and `distilforge curate`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distilforge.runctx import fail, prepare
from distilforge.spec import SpecError

teacher_app = typer.Typer(help="The embedded llama.cpp teacher server.", no_args_is_help=True)
RunArg = typer.Argument(..., help="Run directory (e.g. runs/demo).")
SpecOpt = typer.Option(None, "--spec", help="Task spec YAML; recorded in RUN/spec.json.")
ProfileOpt = typer.Option(None, "--profile", help="Profile from the spec (smoke, demo, ...).")


@teacher_app.command("serve")
def serve_cmd(model: str = typer.Option("qwen2.5-coder-1.5b", help="Embedded model name or .gguf path."),
              port: Optional[int] = typer.Option(None, help="Port on 127.0.0.1 (default: a free one).")):
    """Start the embedded teacher (or report the one already running)."""
    from curation.teacher import TeacherError, serve

    try:
        st = serve(model, port=port)
    except (TeacherError, Exception) as e:  # noqa: BLE001 - one line for the user
        fail(str(e).splitlines()[0])
    typer.echo(f"{'running' if st.get('reused') else 'started'}: {st['model']} at {st['base_url']} (pid {st['pid']})")


@teacher_app.command("status")
def status_cmd():
    """List running embedded teachers."""
    from curation.teacher import status

    rows = status()
    if not rows:
        typer.echo("no embedded teacher running")
    for st in rows:
        typer.echo(json.dumps({k: st[k] for k in ("model", "base_url", "pid", "healthy")}))


@teacher_app.command("stop")
def stop_cmd(model: str = typer.Option("qwen2.5-coder-1.5b", help="Embedded model name.")):
    """Stop an embedded teacher."""
    from curation.teacher import stop

    typer.echo("stopped" if stop(model) else "not running")


def generate_cmd(run: Path = RunArg, spec: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt):
    """Ask the teacher for task rows (resumable: committed shards are never redone)."""
    from curation.stages import generate_stage
    from curation.teacher import TeacherError, teacher_endpoint

    try:
        s = prepare(run, spec, profile)
        with teacher_endpoint(s.teacher, run / "generate") as ep:
            generate_stage(s, run, ep)
    except (SpecError, TeacherError, FileNotFoundError) as e:
        fail(str(e))


def curate_cmd(run: Path = RunArg, spec: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt):
    """Dedup, filter and decontaminate the generated rows; every dropped row keeps its reason."""
    from curation.stages import curate_stage
    from heldout.lock import HeldoutError

    try:
        curate_stage(prepare(run, spec, profile), run)
    except (SpecError, HeldoutError, FileNotFoundError) as e:
        fail(str(e))
