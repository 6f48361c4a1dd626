"""How stages talk: a HF dataset saved on disk plus one small `manifest.json` per stage.

A manifest says what went in (upstream manifests' output hashes + this stage's config hash),
what came out (dataset hashes and row counts), tokens and timings. `run` skips a stage whose
recorded input fingerprint equals the current one, so every stage can be rerun from the files
before it and nothing is recomputed without cause. Everything is written to a temp path first
and renamed, so an interrupted stage never leaves a half-written dataset behind.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import datasets

from distilforge.atomic import atomic_path, atomic_write_json
from distilforge.errors import UserError
from distilforge.secrets import has_secrets, redact

MANIFEST = "manifest.json"
datasets.disable_progress_bars()  # our own progress bars say what is happening; these only add noise


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dataset_hash(ds: datasets.Dataset) -> str:
    """Content hash of a dataset's rows in order (independent of arrow file layout)."""
    h = hashlib.sha256()
    for row in ds:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def save_dataset(ds: datasets.Dataset, path: str | Path) -> str:
    """Save `ds` at `path` atomically (temp dir, then swap); returns its content hash."""
    ds = _scrubbed(ds)
    with atomic_path(path, is_dir=True) as tmp:
        ds.save_to_disk(str(tmp))
    return dataset_hash(ds)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def _scrubbed(ds: datasets.Dataset) -> datasets.Dataset:
    """The dataset with any registered secret masked (only scanned while a key is in use: a
    teacher error message quoting a malformed key header would otherwise land in `error`)."""
    if not has_secrets() or not len(ds):
        return ds
    if not any(redact(json.dumps(r, ensure_ascii=False, default=str)) != json.dumps(r, ensure_ascii=False, default=str)
               for r in ds):
        return ds
    return ds.map(lambda r: _scrub(dict(r)), features=ds.features)


class MissingOutputError(UserError, FileNotFoundError):
    """A stage's input was never written: the stage before it has not run (rc 2, one line)."""


def load_dataset_dir(path: str | Path) -> datasets.Dataset:
    path = Path(path)
    if not path.exists():
        raise MissingOutputError(f"{path}: no dataset here (run the stage that writes it first)")
    state = path / "state.json"
    if state.exists() and json.loads(state.read_text()).get("_data_files") == []:
        # `save_to_disk` writes no arrow file for 0 rows and `load_from_disk` then fails with an
        # IndexError: rebuild the empty dataset from its saved features.
        features = datasets.DatasetInfo.from_directory(str(path)).features
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    return datasets.load_from_disk(str(path))


def read_json(path: str | Path, error: type[Exception] = ValueError, hint: str = "") -> Any:
    """An optional JSON file a stage or the user wrote: None when absent; a broken one is one
    error line naming the file (`error` is the caller's error class, `hint` what to do)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON (line {e.lineno}: {e.msg}){hint}") from None


def read_manifest(stage_dir: str | Path) -> dict | None:
    p = Path(stage_dir) / MANIFEST
    if not p.exists():
        return None
    return json.loads(p.read_text())


class Stage:
    """Context for one stage run: collects outputs and writes the manifest last.

    The manifest is written only when the stage finished, so its presence means "done".
    """

    def __init__(self, stage_dir: str | Path, name: str, inputs: dict[str, str], config: Any):
        self.dir = Path(stage_dir)
        self.name = name
        self.inputs = dict(inputs)
        self.config_hash = sha256_json(config)
        self.fingerprint = sha256_json({"inputs": self.inputs, "config": self.config_hash})
        self.outputs: dict[str, dict] = {}
        self.extra: dict[str, Any] = {}
        self.t0 = time.time()

    def is_current(self) -> bool:
        """Same inputs and config as the finished run, and its outputs still as it wrote them
        (an output edited in place is a reason to rerun, not to skip)."""
        m = read_manifest(self.dir)
        return bool(m) and m.get("fingerprint") == self.fingerprint and outputs_intact(self.dir, m)

    def begin(self) -> "Stage":
        self.dir.mkdir(parents=True, exist_ok=True)
        stale = self.dir / MANIFEST
        if stale.exists():
            stale.unlink()  # a rerun invalidates the old "done" marker before touching outputs
        return self

    def save(self, key: str, ds: datasets.Dataset) -> str:
        h = save_dataset(ds, self.dir / key)
        self.outputs[key] = {"path": key, "rows": len(ds), "sha256": h}
        return h

    def finish(self, **extra: Any) -> dict:
        self.extra.update(extra)
        manifest = {
            "stage": self.name,
            "fingerprint": self.fingerprint,
            "inputs": self.inputs,
            "config_sha256": self.config_hash,
            "outputs": self.outputs,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.t0)),
            "seconds": round(time.time() - self.t0, 2),
            **self.extra,
        }
        atomic_write_json(self.dir / MANIFEST, manifest)
        return manifest


def outputs_intact(stage_dir: str | Path, m: dict) -> bool:
    """Every dataset a manifest lists is on disk and hashes to what was recorded."""
    for key, out in (m.get("outputs") or {}).items():
        try:
            if dataset_hash(load_dataset_dir(Path(stage_dir) / out.get("path", key))) != out.get("sha256"):
                return False
        except Exception:  # noqa: BLE001 - missing or unreadable: not what the stage wrote
            return False
    return True


class StaleOutputError(UserError):
    """An upstream stage's output changed on disk after that stage recorded its hash."""


def verified_output(stage_dir: str | Path, key: str, rerun: str) -> tuple[datasets.Dataset, str]:
    """(dataset, hash) of an upstream output, recomputed from the files a consumer will read.

    The hash is the one the upstream manifest recorded only if the data still hashes to it:
    a dataset edited in place would otherwise be skipped as unchanged or used unchecked.
    """
    stage_dir = Path(stage_dir)
    m = read_manifest(stage_dir)
    if not m or key not in m.get("outputs", {}):
        raise MissingOutputError(f"{stage_dir / MANIFEST}: stage output '{key}' missing (run that stage first)")
    path, recorded = stage_dir / m["outputs"][key].get("path", key), m["outputs"][key]["sha256"]
    try:
        ds = load_dataset_dir(path)
    except Exception as e:  # noqa: BLE001 - a half-deleted or foreign folder: same remedy
        raise StaleOutputError(f"{path} cannot be read since {m.get('stage', stage_dir.name)} wrote it "
                               f"({type(e).__name__}): rerun '{rerun}'") from None
    h = dataset_hash(ds)
    if h != recorded:
        raise StaleOutputError(f"{path} changed since {m.get('stage', stage_dir.name)} wrote it "
                               f"(hash {h[:12]}, recorded {recorded[:12]}): rerun '{rerun}'")
    return ds, h


def output_hash(stage_dir: str | Path, key: str) -> str:
    """The recorded hash of an upstream output; raises if the upstream stage has not run."""
    m = read_manifest(stage_dir)
    if not m or key not in m.get("outputs", {}):
        raise MissingOutputError(f"{Path(stage_dir) / MANIFEST}: stage output '{key}' missing (run that stage first)")
    return m["outputs"][key]["sha256"]
