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
    config: tuple[str, ...]  # top-level spec blocks it reads ("*" = the task itself)
    teacher: bool = False  # needs a teacher endpoint


# In run order. "task" stands for the task definition (name, type, instruction, labels, schema,
# style guide, examples): the rows are generated from it.
PIPELINE: tuple[StageInfo, ...] = (
    StageInfo("heldout", (), ("heldout",)),
    StageInfo("traffic", ("heldout",), ("traffic", "task", "teacher", "curation"), teacher=True),  # curation: decontamination
    StageInfo("generate", ("heldout",), ("task", "teacher", "generation"), teacher=True),
    StageInfo("curate", ("generate", "traffic", "heldout"), ("curation",)),
    StageInfo("train", ("curate", "review", "heldout"), ("student", "training")),
    StageInfo("eval", ("train", "heldout", "traffic"), ("eval",), teacher=True),
    StageInfo("blindspots", ("train", "eval", "traffic"), ()),  # the dev split, never the locked set
)
STAGE_NAMES = tuple(s.name for s in PIPELINE)


def first_stage_reading(block: str) -> str:
    """The first stage that reads a spec block (unknown blocks are the task: `generate`)."""
    return next((s.name for s in PIPELINE if block in s.config), "generate")
