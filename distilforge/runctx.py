"""A run directory: the resolved spec plus one sub-directory per stage.

Commands take the run directory; `--spec TASK.yaml [--profile P]` records the spec in
`RUN/spec.json` so a later command (`curate RUN`, `eval RUN`) works from the files alone.

A run is bound to the spec it was made with. Passing a spec whose content differs (the
semantic content: cosmetic knobs such as checkpoint intervals or concurrency do not count)
is refused unless `--respec` says so: silently training the old rows under a new task is how
a run stops describing what it measured. With `--respec` the new spec is recorded and each
stage's own fingerprint (which includes its config block) decides what reruns.

Nothing is created for a command that fails validation: the spec is read and checked first,
and only commands that start a run (`heldout lock`, `generate`, `run`) may create RUN.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable

import typer
from pydantic import ValidationError
from rich.console import Console

from distilforge.errors import DistilforgeError, UserError, one_line
from distilforge.atomic import atomic_write_json
from distilforge.layout import Run
from distilforge.manifest import sha256_json
from distilforge.stage import STAGE_NAMES, first_stage_reading
from distilforge.spec import SpecError, TaskSpec, cosmetic_paths, load_spec, spec_error, validate_spec

console = Console(stderr=True)

# The options every stage command takes, spelled once.
RunArg = typer.Argument(..., help="Run directory (e.g. runs/demo).")
SpecOpt = typer.Option(None, "--spec", help="Task spec YAML; recorded in RUN/spec.json.")
ProfileOpt = typer.Option(None, "--profile", help="Profile from the spec (smoke, demo, ...).")
RespecOpt = typer.Option(False, "--respec", help="Rebind RUN to a --spec that differs from the one it was made with "
                         "(changed stages rerun).")

# Spec fields that change how a stage runs (speed, caps, logging, where), never what it produces:
# marked `Cosmetic` in the spec model; the stage fingerprints leave the same ones out (semantic_dump).
COSMETIC = cosmetic_paths(TaskSpec)


class RunDirError(UserError):
    """RUN is missing, is a file, or is bound to another spec."""


def check_run(run: Path, create: bool = False) -> None:
    """Refuse a RUN that is a file, or (unless this command may create it) one that does not exist."""
    if run.is_file():
        raise RunDirError(f"{run}: is a file, not a run directory — did you mean --spec {run}?")
    if not create and not run.is_dir():
        raise RunDirError(f"{run}: no such run directory (start one with "
                          f"`distilforge heldout lock {run} --spec TASK.yaml` or `distilforge run TASK.yaml --out {run}`)")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def semantic(content: dict) -> dict[str, Any]:
    """The spec's content that decides what a run produces, flattened to dotted keys."""
    keep = {k: v for k, v in content.items() if not k.startswith("_") and k != "profiles"}
    return {k: v for k, v in _flat(keep).items()
            if k not in COSMETIC and k.split(".")[0] not in COSMETIC}


def spec_hash(content: dict) -> str:
    return sha256_json(semantic(content))


def spec_content(spec: TaskSpec) -> dict:
    return spec.model_dump(mode="json", exclude={"profiles"})


def _recorded(p: Path) -> dict:
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise SpecError(f"{p}: invalid JSON (line {e.lineno}: {e.msg}); pass --spec TASK.yaml --respec to rewrite it") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p}: not a recorded spec (a JSON object); pass --spec TASK.yaml --respec to rewrite it")
    return raw


def _current_form(recorded: dict) -> dict:
    """A spec recorded by an earlier version (e.g. flat `curation:` keys), as this version writes
    it, so that a spelling change alone is not "a different spec". Unreadable: compared as is."""
    try:
        return spec_content(validate_spec({k: v for k, v in recorded.items() if not k.startswith("_")}))
    except ValueError:
        return recorded


def spec_differences(old: dict, new: dict) -> list[str]:
    """Dotted spec fields whose semantic value differs (a `train --config` block is compared as the spec had it)."""
    if "_spec_training" in old:
        old = {**old, "training": old["_spec_training"]}
    if "_spec_student" in old:
        old = {**old, "student": old["_spec_student"]}
    a, b = semantic(_current_form(old)), semantic(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, None) != b.get(k, None) or (k in a) != (k in b))


def first_affected(fields: list[str]) -> str:
    stages = {first_stage_reading(f.split(".")[0]) for f in fields}
    return next(s for s in STAGE_NAMES if s in stages)


def bind_spec(run: Path, spec: TaskSpec, spec_path: Path, profile: str | None, respec: bool) -> None:
    """Refuse a spec that differs from the one RUN was made with (unless `respec`); then record it."""
    p = Run(run).spec_json
    new = spec_content(spec)
    record = {**new, "_source": str(spec_path), "_profile": profile, "_spec_sha256": spec_hash(new)}
    old = _recorded(p) if p.exists() and not respec else None
    if old == record:
        return  # already recorded as is: nothing to write (a read-only run stays readable)
    if old is not None:
        diff = spec_differences(old, new)
        if diff:
            made = str(old.get("_source") or "(unknown file)") + (f" --profile {old['_profile']}" if old.get("_profile") else "")
            shown = ", ".join(diff[:8]) + (f", … ({len(diff)} fields)" if len(diff) > 8 else "")
            h = old.get("_spec_sha256") or spec_hash({**old, **({"training": old["_spec_training"]} if "_spec_training" in old else {})})
            raise RunDirError(f"{run} was made with spec {made} (hash {h[:12]}); this spec differs in: {shown}; "
                              f"pass --respec to rebind (stages from {first_affected(diff)} on will rerun)")
    atomic_write_json(p, record)


def prepare(run: Path, spec_path: Path | None = None, profile: str | None = None, *,
            respec: bool = False, create: bool = False) -> TaskSpec:
    """Load the spec (from a file, or RUN/spec.json) and bind it to the run dir.

    `create`: this command may start a new run (lock, generate, run); others need RUN to exist.
    `respec`: accept a spec that differs from the recorded one (stages rerun by fingerprint).
    """
    run = Path(run)
    check_run(run, create)
    if spec_path is not None:
        spec = load_spec(spec_path, profile)  # validated before anything is created
        if create:
            run.mkdir(parents=True, exist_ok=True)
        bind_spec(run, spec, spec_path, profile, respec)
        return spec
    p = Run(run).spec_json
    if not p.exists():
        raise SpecError(f"{p}: no spec recorded in this run dir (pass --spec TASK.yaml)")
    raw = {k: v for k, v in _recorded(p).items() if not k.startswith("_")}
    try:
        return validate_spec(raw)
    except ValidationError as e:  # name the field, as a bad TASK.yaml does
        raise SpecError(f"{spec_error(e, raw, f'{p}: not a valid recorded spec')}; "
                        "pass --spec TASK.yaml --respec to rewrite it") from None
    except ValueError as e:
        raise SpecError(f"{p}: not a valid recorded spec ({str(e).splitlines()[0]}); "
                        "pass --spec TASK.yaml --respec to rewrite it") from None


def fail(msg: str, code: int = 2) -> None:
    """One clear line on stderr, non-zero exit: what bad input gets everywhere."""
    from rich.markup import escape  # a message naming `row [column]` must print as written

    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def cli_errors(fn: Callable) -> Callable:
    """Wrap a typer command: any DistilforgeError it raises ends in one line on stderr and the
    class's exit code (distilforge/errors.py). app/cli.py's `main` does the same at the top; this
    keeps a command honest when it runs without `main` (typer's CliRunner, a sub-app used on its
    own), and replaces hand-written `except (A, B, C): fail(...)` lists."""
    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DistilforgeError as e:
            fail(one_line(e), e.exit_code)

    return command


def set_threads() -> None:
    """Torch threads sized to the box: OMP_NUM_THREADS if set, else all cores."""
    import torch

    n = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(max(n, 1))
