"""A run directory: the resolved spec plus one sub-directory per stage.

Commands take the run directory; `--spec TASK.yaml [--profile P]` (re)writes `RUN/spec.json`
so a later command (`curate RUN`, `eval RUN`) works from the files alone.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console

from distilforge.manifest import atomic_write_json
from distilforge.spec import SpecError, TaskSpec, load_spec

console = Console(stderr=True)

STAGES = ("heldout", "generate", "curate", "train", "eval")


def prepare(run: Path, spec_path: Path | None = None, profile: str | None = None) -> TaskSpec:
    """Load the spec (from a file, or RUN/spec.json) and record it in the run dir."""
    run.mkdir(parents=True, exist_ok=True)
    if spec_path is not None:
        spec = load_spec(spec_path, profile)
        atomic_write_json(run / "spec.json", {**spec.model_dump(mode="json", exclude={"profiles"}),
                                              "_source": str(spec_path), "_profile": profile})
        return spec
    p = run / "spec.json"
    if not p.exists():
        raise SpecError(f"{p}: no spec recorded in this run dir (pass --spec TASK.yaml)")
    raw = json.loads(p.read_text())
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    return TaskSpec.model_validate(raw)


def fail(msg: str, code: int = 2) -> None:
    """One clear line on stderr, non-zero exit: what bad input gets everywhere."""
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def set_threads() -> None:
    """Torch threads sized to the box: OMP_NUM_THREADS if set, else all cores."""
    import torch

    n = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(max(n, 1))
