"""`distilforge heldout lock|verify` and `distilforge eval`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distilforge.runctx import fail, prepare, set_threads
from distilforge.spec import SpecError
from heldout.lock import HeldoutError

heldout_app = typer.Typer(help="Lock and verify the real held-out set.", no_args_is_help=True,
                          pretty_exceptions_show_locals=False)

RunArg = typer.Argument(..., help="Run directory (e.g. runs/demo).")
SpecOpt = typer.Option(None, "--spec", help="Task spec YAML; recorded in RUN/spec.json.")
ProfileOpt = typer.Option(None, "--profile", help="Profile from the spec (smoke, demo, ...).")


@heldout_app.command("lock")
def lock_cmd(run: Path = RunArg, spec: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
             force: bool = typer.Option(False, "--force", help="Replace an existing lock (re-baselines the set).")):
    """Import, canonicalize and hash the held-out rows."""
    from heldout.stages import lock_stage

    try:
        lock_stage(prepare(run, spec, profile), run, force=force)
    except (SpecError, HeldoutError, FileNotFoundError) as e:
        fail(str(e))


@heldout_app.command("verify")
def verify_cmd(run: Path = RunArg):
    """Fail loudly if the held-out source or its locked copy changed in any way."""
    from heldout.lock import verify

    try:
        s = prepare(run)
        info = verify(s.heldout, s.label_names, run / "heldout")
    except (SpecError, HeldoutError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(f"ok: {info['n']} rows, sha256 {info['sha256']}")


def eval_cmd(run: Path = RunArg, spec: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
             force: bool = typer.Option(False, "--force", help="Re-score even if inputs are unchanged.")):
    """Score base, student and teacher on the verified held-out set (eval/metrics.json)."""
    from curation.teacher import TeacherError, teacher_endpoint
    from heldout.stages import eval_stage

    try:
        s = prepare(run, spec, profile)
        from heldout.lock import verify

        verify(s.heldout, s.label_names, run / "heldout")  # refuse before starting anything
        set_threads()
        if s.eval.teacher:
            with teacher_endpoint(s.teacher, run / "eval") as ep:
                eval_stage(s, run, ep, force=force)
        else:
            eval_stage(s, run, None, force=force)
    except (SpecError, HeldoutError, TeacherError, FileNotFoundError) as e:
        fail(str(e))
