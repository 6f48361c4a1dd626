"""The stage protocol: what every stage of a run is, and the order they run in.

A stage reads the folders of the stages before it plus one block of the spec, writes its own
folder (HF datasets + a manifest, distilforge/manifest.py) and returns what it recorded. It skips
itself when its fingerprint (inputs' hashes + its config block, cosmetic fields left out:
distilforge/spec.py `semantic_dump`) is unchanged. The core names the stages and what feeds
them; app/registry.py binds each name to the function that runs it, and both `distilforge run`
and the CLI walk that one registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from distilforge.records import HeldoutLock, StageManifest
    from distilforge.spec import TaskSpec
    from distilforge.teacher import Endpoint


class StageFn(Protocol):
    """How a stage is run: `(spec, run dir, teacher endpoint or None) -> what it recorded` (its
    manifest read back as a typed record; None when it wrote none)."""

    def __call__(self, spec: TaskSpec, run: Path, endpoint: Endpoint | None) -> StageManifest | HeldoutLock | None: ...


@dataclass(frozen=True)
class StageInfo:
    name: str
    reads: tuple[str, ...]  # stages whose outputs it reads
    config: tuple[str, ...]  # spec blocks it may read ("task" = the task definition, which all may read)
    teacher: bool = False  # needs a teacher endpoint


# In run order. "task" stands for the task definition (name, type, instruction, labels, schema,
# style guide, examples): the rows are generated from it.
PIPELINE: tuple[StageInfo, ...] = (
    StageInfo("heldout", (), ("heldout",)),
    StageInfo("traffic", ("heldout",), ("traffic", "task", "teacher", "curation"), teacher=True),  # curation: decontamination
    StageInfo("generate", ("heldout",), ("task", "teacher", "generation"), teacher=True),
    StageInfo("curate", ("generate", "traffic", "heldout"), ("curation", "generation", "traffic")),  # traffic: likeness filter
    StageInfo("train", ("curate", "review", "heldout"), ("student", "training", "curation")),
    StageInfo("eval", ("train", "heldout", "traffic"), ("eval", "heldout", "teacher"), teacher=True),
    StageInfo("blindspots", ("train", "eval", "traffic"), ()),  # the dev split, never the locked set
)
STAGE_NAMES = tuple(s.name for s in PIPELINE)


def first_stage_reading(block: str) -> str:
    """The first stage that reads a spec block (unknown blocks are the task: `generate`)."""
    return next((s.name for s in PIPELINE if block in s.config), "generate")


from distilforge.spec import BLOCKS  # noqa: E402 - the spec's configuration blocks (the rest is the task)


class UndeclaredBlock(AttributeError):
    """A stage read a spec block its StageInfo does not declare: a bug in the stage (its declared
    inputs, which say what a spec edit invalidates, would be wrong), not in the user's input."""


class StageSpec:
    """The spec as one stage sees it: the task definition plus only the blocks that stage
    declares in PIPELINE. Reading any other block raises `UndeclaredBlock`, so the declaration is
    checked every time a stage runs, not trusted. Serialising (`model_dump*`, for distilabel steps
    that rebuild the spec in a worker) gives the whole spec: a worker is part of its stage."""

    __slots__ = ("_spec", "_info")

    def __init__(self, spec: TaskSpec, info: StageInfo):
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_info", info)

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("_spec", "_info"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        info = self._info
        if name in BLOCKS and name not in info.config:
            declared = ", ".join(b for b in info.config if b in BLOCKS) or "no block"
            raise UndeclaredBlock(f"stage '{info.name}' reads spec.{name}, which distilforge/stage.py PIPELINE "
                                  f"does not declare for it (it declares {declared})")
        return getattr(self._spec, name)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError("a stage's view of the spec is read-only")

    def __reduce__(self):  # a Ray worker of the stage gets the same view
        return (StageSpec, (self._spec, self._info))

    def model_copy(self, **kw) -> StageSpec:
        return StageSpec(self._spec.model_copy(**kw), self._info)

    def __repr__(self) -> str:
        return f"StageSpec({self._info.name}: {self._spec.name})"


def scoped(spec: TaskSpec | StageSpec, stage: str) -> StageSpec:
    """`spec` as stage `stage` may see it (a view handed to another stage is re-scoped from the
    whole spec: each stage is held to its own declaration)."""
    whole = spec._spec if isinstance(spec, StageSpec) else spec
    return StageSpec(whole, next(s for s in PIPELINE if s.name == stage))
