"""Which dataset a run trains on: the approved review export when there is one, else the curated set.

The train stage, export's vouching and the blind-spot analysis all ask this one question of a run,
so it lives in the core and reads only the run layout and the stage manifests. A hash is the one
the upstream manifest recorded; `verified_source` re-hashes the files so data edited since its
stage wrote it is refused (the stage to rerun is named), never used unchecked.
"""
from __future__ import annotations

from pathlib import Path

import datasets

from distilforge.layout import Run
from distilforge.manifest import output_hash, read_manifest, verified_output


def training_source(run: Path) -> tuple[str, Path, str]:
    """Approved review export if there is one, else the curated set: (name, path, hash)."""
    r = Run(run)
    if read_manifest(r.review_export):
        return "review_export", r.review_export / "approved", output_hash(r.review_export, "approved")
    return "curate", r.curated, output_hash(r.curate, "curated")


def verified_source(run: Path) -> tuple[str, datasets.Dataset, str]:
    """`training_source`, loaded and re-hashed: (name, dataset, hash); refuses data edited since it was written."""
    r = Run(run)
    if read_manifest(r.review_export):
        ds, h = verified_output(r.review_export, "approved", f"distilforge review export {run}")
        return "review_export", ds, h
    ds, h = verified_output(r.curate, "curated", f"distilforge curate {run}")
    return "curate", ds, h


def teacher_prefs(run: Path) -> tuple[Path, str] | None:
    """A teacher-made preference set (`generate/prefs`), when the generate stage wrote one."""
    r = Run(run)
    m = read_manifest(r.generate)
    if m and "prefs" in m.get("outputs", {}):
        return r.generated_prefs, m["outputs"]["prefs"]["sha256"]
    return None
