"""`distilforge train`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distilforge.runctx import fail, prepare, set_threads
from distilforge.spec import SpecError


def train_cmd(run: Path = typer.Argument(..., help="Run directory (e.g. runs/demo)."),
              spec: Optional[Path] = typer.Option(None, "--spec", help="Task spec YAML; recorded in RUN/spec.json."),
              profile: Optional[str] = typer.Option(None, "--profile", help="Profile from the spec."),
              config: Optional[Path] = typer.Option(None, "--config",
                                                    help="Training YAML; overrides the spec's `training` block."),
              resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of this config."),
              force: bool = typer.Option(False, "--force", help="Retrain even if inputs are unchanged.")):
    """LoRA SFT (+ optional DPO) of the student on the approved export (or the curated set)."""
    from heldout.lock import HeldoutError
    from training.common import ResumeError
    from training.models import ModelError
    from training.stages import ContaminationError, train_stage

    try:
        s = prepare(run, spec, profile)
        if config is not None:
            from distilforge.manifest import atomic_write_json
            from training.config import load_training_config, with_training

            s = with_training(s, load_training_config(config, s.training))
            # record what was trained, so a later `eval RUN` / `train RUN` sees the same block
            raw = json.loads((run / "spec.json").read_text())
            atomic_write_json(run / "spec.json", {**raw, "training": s.training.model_dump(mode="json"),
                                                  "_training_config": str(config)})
        set_threads()
        train_stage(s, run, force=force, resume=resume)
    except (SpecError, HeldoutError, ModelError, ContaminationError, ResumeError, FileNotFoundError, ValueError) as e:
        fail(str(e))
