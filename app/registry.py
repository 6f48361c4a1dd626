"""The one registry of stages: each name in the core's PIPELINE bound to the function that runs it.

`distilforge run` (app/pipeline.py) walks it in order; `distilforge stages` prints it. Each stage
function keeps its own signature (its CLI command calls it with its own options); the adapter
here gives all of them the protocol's shape, `(spec, run, endpoint) -> recorded`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distilforge.stage import PIPELINE, StageFn, StageInfo


def _heldout(spec: Any, run: Path, endpoint: Any) -> Any:
    from heldout.stages import lock_stage

    return lock_stage(spec, run)


def _generate(spec: Any, run: Path, endpoint: Any) -> Any:
    from curation.stages import generate_stage

    return generate_stage(spec, run, endpoint)


def _curate(spec: Any, run: Path, endpoint: Any) -> Any:
    from curation.stages import curate_stage

    return curate_stage(spec, run)


def _train(spec: Any, run: Path, endpoint: Any) -> Any:
    from training.stages import train_stage

    return train_stage(spec, run)


def _eval(spec: Any, run: Path, endpoint: Any) -> Any:
    from heldout.stages import eval_stage

    return eval_stage(spec, run, endpoint if spec.eval.teacher else None)


def _blindspots(spec: Any, run: Path, endpoint: Any) -> Any:
    from labeling.blindspots import blindspots_stage

    return blindspots_stage(spec, run)


RUNNERS: dict[str, StageFn] = {"heldout": _heldout, "generate": _generate, "curate": _curate, "train": _train,
                               "eval": _eval, "blindspots": _blindspots}
assert tuple(RUNNERS) == tuple(s.name for s in PIPELINE), "every stage of the core's PIPELINE has a runner"


def stages() -> list[tuple[StageInfo, StageFn]]:
    return [(s, RUNNERS[s.name]) for s in PIPELINE]
