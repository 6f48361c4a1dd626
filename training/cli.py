"""`distilforge train`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distilforge.runctx import fail, prepare, set_threads
from distilforge.spec import SpecError


def train_cmd(run: Path = typer.Argument(..., help="Run directory (e.g. runs/demo)."),
              spec: Optional[Path] = typer.Option(None, "--spec", help="Task spec YAML; recorded in RUN/spec.json."),
              profile: Optional[str] = typer.Option(None, "--profile", help="Profile from the spec."),
              force: bool = typer.Option(False, "--force", help="Retrain even if inputs are unchanged.")):
    """LoRA SFT of the student on the approved export (or the curated set)."""
    from heldout.lock import HeldoutError
    from training.models import ModelError
    from training.stages import ContaminationError, train_stage

    try:
        s = prepare(run, spec, profile)
        set_threads()
        train_stage(s, run, force=force)
    except (SpecError, HeldoutError, ModelError, ContaminationError, FileNotFoundError) as e:
        fail(str(e))
