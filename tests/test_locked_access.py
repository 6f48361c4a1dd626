"""The locked test set is opened only where it must be: lock/verify, decontamination + the train
gate (to keep it out of the data), and eval (to score). Whatever *chooses* data — blind spots,
the loop — works on the dev split and never opens it; a choice made by looking at the test set
would tune the data to it.

Dynamic check: every way to read the locked rows (heldout.lock's readers, wherever a module bound
them by name; datasets.load_from_disk and open() of anything under RUN/heldout or of the held-out
source file) is wrapped while stages run on a small real run, and each read records the module
that asked. Static check: only the allowed modules import the readers at all."""
from __future__ import annotations

import ast
import io
import json
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest

from conftest import BANKING77, REPO, TASK

OURS = ("distilforge", "heldout", "curation", "training", "labeling", "decision", "app")
ALLOWED = {"heldout.stages": "lock, verify and eval", "heldout.cli": "heldout lock|verify",
           "heldout.served": "eval --endpoint (a served student scored on the locked rows)",
           "curation.stages": "curate's decontamination", "curation.traffic": "traffic's decontamination",
           "curation.decontam": "decontamination", "curation.raybackend.driver": "decontamination on Ray",
           "training.stages": "the train gate", "training.export": "export verifies the lock it vouches for"}
TRANSPARENT = ("heldout.lock", "distilforge.manifest", "distilforge.atomic")  # readers and I/O helpers: not askers
READERS = ("load_locked", "verify", "build_rows", "lock", "read_lock")


def _asker() -> str:
    """The nearest module of ours on the stack that is not the reader itself (no file reads: open() is wrapped)."""
    f = sys._getframe(2)
    while f is not None:
        mod = f.f_globals.get("__name__", "")
        if mod.split(".")[0] in OURS and mod not in TRANSPARENT:
            return mod
        f = f.f_back
    return "<test>"


class LockedReads:
    """Records (what, asking module) for every read of the locked rows while installed."""

    def __init__(self, monkeypatch, run: Path, source: Path):
        import heldout.lock as hl

        self.calls: list[tuple[str, str]] = []
        self.roots = (str((run / "heldout").resolve()), str(source.resolve()))
        self._busy = False
        for name in READERS:
            orig = getattr(hl, name)
            wrapped = self._wrap(name, orig)
            for mod in list(sys.modules.values()):  # also `from heldout.lock import load_locked` bindings
                if getattr(mod, "__name__", "").split(".")[0] in OURS and getattr(mod, name, None) is orig:
                    monkeypatch.setattr(mod, name, wrapped)
        monkeypatch.setattr(datasets, "load_from_disk", self._by_path("load_from_disk", datasets.load_from_disk))
        monkeypatch.setattr(io, "open", self._by_path("open", io.open))
        monkeypatch.setattr("builtins.open", self._by_path("open", open))
        monkeypatch.setattr(pd, "read_csv", self._by_path("read_csv", pd.read_csv))

    def _wrap(self, name, fn):
        def reader(*a, **kw):
            self.calls.append((name, _asker()))
            return fn(*a, **kw)
        return reader

    def _by_path(self, name, fn):
        def reader(path, *a, **kw):
            if not self._busy and isinstance(path, (str, Path)):
                self._busy = True
                try:
                    p = str(Path(path).resolve())
                    if any(p == r or p.startswith(r + "/") for r in self.roots):
                        self.calls.append((name, _asker()))
                finally:
                    self._busy = False
            return fn(path, *a, **kw)
        return reader


def _small_run(tmp_path: Path, monkeypatch) -> tuple[Path, object]:
    """A real held-out lock (smoke profile), plus a dev split, curated rows and eval's dev
    predictions written as those stages write them (real Banking77 TRAIN rows: no test rows)."""
    from distilforge.manifest import Stage
    from distilforge.runctx import prepare

    monkeypatch.setenv("DISTILFORGE_DATA", str(BANKING77.parent))
    run = tmp_path / "run"
    spec = prepare(run, TASK, "smoke", create=True)
    labels = spec.label_names
    train = pd.read_csv(BANKING77 / "train.csv")
    train["category"] = train.category.replace({"Refund_not_showing_up": "refund_not_showing_up"})
    train = train[train.category.isin(labels)]
    dev, cur = train.groupby("category").head(6), train.groupby("category").nth(slice(6, 10))
    st = Stage(run / "traffic", "traffic", {}, {}).begin()
    dev_ds = datasets.Dataset.from_dict({"id": [f"t{i}" for i in range(len(dev))], "text": list(dev.text),
                                         "label": list(dev.category), "label_source": ["teacher"] * len(dev),
                                         "teacher_label": list(dev.category), "gold_label": list(dev.category)})
    dev_h = st.save("dev", dev_ds)
    st.finish()
    st = Stage(run / "curate", "curate", {}, {}).begin()
    st.save("curated", datasets.Dataset.from_dict({"id": [f"c{i}" for i in range(len(cur))], "text": list(cur.text),
                                                   "label": list(cur.category)}))
    st.finish()
    preds = ["card_arrival" if lab == "lost_or_stolen_card" else lab for lab in list(dev_ds["label"])]
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"dev": {
        "dev_sha256": dev_h, "row_ids": list(dev_ds["id"]), "student": {"accuracy": 0.9, "predictions": preds}}}))
    return run, spec


def test_blind_spots_never_open_the_locked_set(tmp_path, monkeypatch):
    from heldout.stages import lock_stage
    from labeling.blindspots import blindspots_cmd, blindspots_stage

    run, spec = _small_run(tmp_path, monkeypatch)
    source = Path(spec.heldout.source)
    reads = LockedReads(monkeypatch, run, source if source.is_absolute() else REPO / source)
    lock_stage(spec, run, force=True)  # the recorder sees the lock's reads: the check below is not vacuous
    assert reads.calls and {m for _, m in reads.calls} <= set(ALLOWED), reads.calls
    assert {w for w, _ in reads.calls} >= {"lock", "build_rows"}
    reads.calls.clear()
    m = blindspots_stage(spec, run)
    blindspots_cmd(run)  # the command too (re-reads the spec; the stage is current)
    assert reads.calls == []  # not one read of RUN/heldout or the held-out source, not even lock.json
    assert m["split"] == "dev" and m["contrastive_targets"] == 1
    bs = json.loads((run / "blindspots" / "blindspots.json").read_text())
    assert bs["coverage"]["dev_rows"] == 6 * len(spec.label_names) and bs["student"]["confusions"][0]["label"] == \
        "lost_or_stolen_card"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "heldout.lock":
            names |= {a.name for a in node.names} & {"load_locked", "verify", "build_rows", "lock"}
        if isinstance(node, ast.Attribute) and node.attr == "load_locked":
            names.add(node.attr)
    return names


def test_only_the_allowed_modules_import_the_locked_readers():
    """The static side: a module outside lock/verify, decontamination + gate and eval that imports a
    reader of the locked rows (even inside a function) fails here before it can ever run."""
    found = {}
    for pkg in OURS:
        for f in (REPO / pkg).rglob("*.py"):
            mod = ".".join(f.relative_to(REPO).with_suffix("").parts)
            if mod != "heldout.lock" and _imports(f):
                found[mod] = _imports(f)
    assert found, "the scan found no reader at all: it is not looking where the code is"
    assert set(found) <= set(ALLOWED), {m: n for m, n in found.items() if m not in ALLOWED}
    assert not any(m.startswith(("labeling.", "app.", "decision.")) for m in found)


@pytest.mark.parametrize("mod", ["labeling.blindspots", "labeling.dev_errors", "app.loop", "heldout.coverage"])
def test_choosing_modules_do_not_name_the_locked_set(mod):
    """Blind spots, the loop and the clustering they use never name the lock's readers or RUN/heldout."""
    src = (REPO / Path(*mod.split("."))).with_suffix(".py").read_text()
    code = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("#"))
    tree = ast.parse(code)
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | \
        {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not names & {"load_locked", "verify", "build_rows", "read_lock", "lock_json", "heldout", "HeldoutLock"}, \
        names & {"load_locked", "verify", "build_rows", "read_lock", "lock_json", "heldout", "HeldoutLock"}
