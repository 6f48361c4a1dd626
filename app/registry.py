"""The one registry of stages: each name in the core's PIPELINE bound to the function that runs it.

`distilforge run` (app/pipeline.py) walks it in order; `distilforge stages` prints it. Each stage
function keeps its own signature (its CLI command calls it with its own options); the adapter
here gives all of them the protocol's shape, `(spec, run, endpoint) -> recorded`, where
"recorded" is the typed record of what the stage wrote, read back from its manifest on disk
(distilforge/records.py), so a caller sees exactly what a later `run` or `report` would see.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distilforge.layout import Run
from distilforge.records import GenerationResult, HeldoutLock, StageManifest, TrainResult
from distilforge.stage import PIPELINE, StageFn, StageInfo

# What a stage recorded: its manifest (or the lock, for `heldout`); None when it wrote none (a
# stage with nothing to do, e.g. `traffic` without a traffic source).
Recorded = HeldoutLock | StageManifest | None


def _heldout(spec: Any, run: Path, endpoint: Any) -> Recorded:
    from heldout.stages import lock_stage

    lock_stage(spec, run)
    return HeldoutLock.read(run)


def _traffic(spec: Any, run: Path, endpoint: Any) -> Recorded:
    from curation.traffic import traffic_stage

    traffic_stage(spec, run, endpoint)
    return StageManifest.in_folder(Run(run) / "traffic")


def _generate(spec: Any, run: Path, endpoint: Any) -> Recorded:
    from curation.stages import generate_stage

    generate_stage(spec, run, endpoint)
    return GenerationResult.read(run)


def _curate(spec: Any, run: Path, endpoint: Any) -> Recorded:
    from curation.stages import curate_stage

    curate_stage(spec, run)
    return StageManifest.in_folder(Run(run).curate)


def _train(spec: Any, run: Path, endpoint: Any) -> Recorded:
    from training.stages import train_stage

    train_stage(spec, run)
    return TrainResult.read(run)


def _eval(spec: Any, run: Path, endpoint: Any) -> Recorded:
    from heldout.stages import eval_stage

    eval_stage(spec, run, endpoint if spec.eval.teacher else None)
    return StageManifest.in_folder(Run(run).eval)


def _blindspots(spec: Any, run: Path, endpoint: Any) -> Recorded:
    from labeling.blindspots import blindspots_stage

    blindspots_stage(spec, run)
    return StageManifest.in_folder(Run(run).blindspots)


RUNNERS: dict[str, StageFn] = {"heldout": _heldout, "traffic": _traffic, "generate": _generate, "curate": _curate, "train": _train,
                               "eval": _eval, "blindspots": _blindspots}
assert tuple(RUNNERS) == tuple(s.name for s in PIPELINE), "every stage of the core's PIPELINE has a runner"


def stages() -> list[tuple[StageInfo, StageFn]]:
    return [(s, RUNNERS[s.name]) for s in PIPELINE]
