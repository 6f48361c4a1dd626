"""The train stage: LoRA SFT on the curated (or approved) rows, after the contamination gate."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from distilforge.manifest import Stage, load_dataset_dir, output_hash, read_manifest, sha256_file
from distilforge.spec import TaskSpec

console = Console(stderr=True)


class ContaminationError(RuntimeError):
    pass


def training_source(run: Path) -> tuple[str, Path, str]:
    """Approved review export if there is one, else the curated set: (name, path, hash)."""
    if read_manifest(run / "review" / "export"):
        return "review_export", run / "review" / "export" / "approved", output_hash(run / "review" / "export", "approved")
    return "curate", run / "curate" / "curated", output_hash(run / "curate", "curated")


def contamination_gate(spec: TaskSpec, run: Path, ds) -> None:
    """Refuse to train on any row that overlaps the locked held-out set."""
    from heldout.lock import load_locked

    held = load_locked(run / "heldout")
    try:
        from curation.decontam import find_contamination
    except ImportError:
        find_contamination = None
    if find_contamination is not None:
        hits = find_contamination(list(ds["text"]), list(ds["id"]), held, spec.curation)
    else:
        from curation.curate import normalize

        ids = {normalize(t): i for t, i in zip(held["text"], held["id"])}
        hits = [{"row_id": r, "heldout_id": ids[normalize(t)], "kind": "exact"}
                for t, r in zip(ds["text"], ds["id"]) if normalize(t) in ids]
    if hits:
        listed = ", ".join(f"{h['row_id']}~{h['heldout_id']}" for h in hits[:10])
        raise ContaminationError(f"refusing to train: {len(hits)} training row(s) overlap the locked held-out set "
                                 f"({listed}{' …' if len(hits) > 10 else ''})")


def _dir_hash(d: Path) -> str:
    from distilforge.manifest import sha256_json

    return sha256_json({p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()})


def train_stage(spec: TaskSpec, run: Path, force: bool = False) -> dict:
    from heldout.lock import read_lock
    from training.models import student_base_dir
    from training.sft import LoraSFTConfig, train_sft

    src, path, h = training_source(run)
    lock = read_lock(run / "heldout")
    base = student_base_dir(spec.student.base)
    cfg = LoraSFTConfig.from_spec(spec, base)
    st = Stage(run / "train", "train", {src: h, "heldout": lock["sha256"]},
               {**cfg.__dict__, "base_model": spec.student.base})
    if st.is_current() and not force:
        console.print("train: inputs unchanged, skipped")
        return read_manifest(st.dir)
    ds = load_dataset_dir(path)
    if len(ds) == 0:
        raise ContaminationError(f"{path}: no rows to train on")
    contamination_gate(spec, run, ds)
    st.begin()
    res = train_sft(cfg, ds, st.dir)
    import torch

    m = st.finish(data_source=src, rows=len(ds), base_model=spec.student.base, base_dir=base,
                  adapter="adapter", adapter_sha256=_dir_hash(st.dir / "adapter"),
                  device="cuda" if torch.cuda.is_available() else "cpu",
                  train_seconds=res["seconds"], train_loss=res["train_loss"], steps=res["steps"],
                  log_history=res["log_history"], heldout_lock_sha256=lock["sha256"])
    console.print(f"train: {res['steps']} steps on {len(ds)} rows in {res['seconds']:.0f}s, loss {res['train_loss']:.3f}")
    return m
