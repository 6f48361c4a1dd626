"""The contamination gate cannot be walked around: not by hiding held-out text in a column the
trainer reads but curation did not check, and not by editing a dataset after its stage recorded it.

Real parts: the `distilforge train` / `curate` CLI in a subprocess, the locked Banking77 test rows
and Banking77 TRAIN texts read from ../shared at run time, TRL on the tiny random student. The run
is built the cheap way (held-out lock + a hand-made stage output written with the manifest
helpers), so no teacher is called.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import datasets
import pytest
import yaml

from conftest import BANKING77, TASK, cli

LABELS = ["card_arrival", "pin_blocked", "exchange_rate"]
PER_LABEL = 4


def spec_file(tmp: Path, name: str = "task.yaml", **training) -> Path:
    """The Banking77 example cut down to 3 intents, 12 locked rows and the tiny random student."""
    raw = yaml.safe_load(TASK.read_text())
    raw["labels"] = [lab for lab in raw["labels"] if lab["name"] in LABELS]
    raw["student"] = {"base": "tiny-random"}
    raw["heldout"]["max_per_label"] = 4
    raw["heldout"]["source"] = str(BANKING77 / "test.csv")
    raw["training"] = {"epochs": 1, "batch_size": 4, "max_length": 128, "tensorboard": False, **training}
    p = tmp / name
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def train_rows(spec, per_label: int = PER_LABEL, skip: int = 0) -> list[dict]:
    """Curated/generated-format rows from the Banking77 TRAIN split (never the test file)."""
    rows, seen = [], {}
    with open(BANKING77 / "train.csv", newline="") as f:
        for r in csv.DictReader(f):
            lab = r["category"]
            if lab in LABELS and seen.get(lab, 0) < per_label + skip:
                seen[lab] = seen.get(lab, 0) + 1
                if seen[lab] > skip:
                    rows.append({"id": f"{lab}-{seen[lab]}", "label": lab, "text": r["text"], "strategy": "test",
                                 "prompt": spec.student_prompt(r["text"]),
                                 "completion": [{"role": "assistant", "content": lab}],
                                 "status": "ok", "error": ""})
    return rows


def save_stage(stage_dir: Path, name: str, **outputs: datasets.Dataset) -> None:
    """A finished stage the way the real stages write one (datasets + manifest with their hashes)."""
    from distilforge.manifest import Stage

    st = Stage(stage_dir, name, {}, {}).begin()
    for key, ds in outputs.items():
        st.save(key, ds)
    st.finish(pending_shards=0)


def locked_run(run: Path, spec_path: Path):
    """RUN with the spec bound and the held-out set locked (in-process: the same code the CLI runs)."""
    from distilforge.runctx import prepare
    from heldout.lock import load_locked, lock

    spec = prepare(run, spec_path, create=True)
    lock(spec.heldout, spec, run / "heldout")
    return spec, load_locked(run / "heldout")


def no_training(run: Path) -> bool:
    return not (run / "train" / "adapter").exists() and not (run / "train" / "sft").exists() \
        and not (run / "train" / "manifest.json").exists()


def _leak(column: str, row: dict, held: str) -> dict:
    if column == "prompt":  # `text` stays clean: the bypass is text curation never looked at
        return {**row, "prompt": [row["prompt"][0], {"role": "user", "content": held}]}
    return {**row, column: [{"role": "assistant", "content": held}]}


@pytest.mark.parametrize("column", ["prompt", "completion", "chosen", "rejected"])
def test_heldout_text_in_any_trained_column_is_refused(probe, tmp_path, column):
    p = probe(f"held-out text planted in {column}")
    dpo = column in ("chosen", "rejected")
    spec_path = spec_file(tmp_path, **({"dpo": {"enabled": True}} if dpo else {}))
    run = tmp_path / "run"
    spec, held = locked_run(run, spec_path)
    rows = train_rows(spec)
    rid = f"leak-{column}"
    if dpo:  # teacher preference pairs: what DPO trains on (generate/prefs)
        pairs = [{"id": f"pair-{r['id']}", "prompt": r["prompt"], "chosen": r["completion"],
                  "rejected": [{"role": "assistant", "content": LABELS[(LABELS.index(r["label"]) + 1) % 3]}]}
                 for r in rows]
        pairs[3] = {**_leak(column, pairs[3], held["text"][7]), "id": rid}
        save_stage(run / "generate", "generate", prefs=datasets.Dataset.from_list(pairs))
    else:
        rows[2] = {**_leak(column, rows[2], held["text"][7]), "id": rid}
    save_stage(run / "curate", "curate", curated=datasets.Dataset.from_list(rows))
    r = cli("train", run)
    where = f"preference.{column}" if dpo else column
    line = p.one_line(r, rc=2, contains=f"{rid} [{where}]~{held['id'][7]}")
    assert "refusing to train" in line and held["text"][7] not in line  # ids only, never held-out text
    assert no_training(run), "the gate let training start"


def test_dataset_edited_after_curate_is_refused_until_curate_reruns(probe, tmp_path):
    spec_path = spec_file(tmp_path)
    run = tmp_path / "run"
    spec, held = locked_run(run, spec_path)
    save_stage(run / "generate", "generate", rows=datasets.Dataset.from_list(train_rows(spec, per_label=5)))
    r = cli("curate", run)
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("train", run)
    assert r.returncode == 0, r.stderr[-3000:]
    trained = json.loads((run / "train" / "manifest.json").read_text())
    curated = run / "curate" / "curated"
    original = datasets.load_from_disk(str(curated)).to_list()

    def swap_in(rows: list[dict]) -> None:  # what a user would do: save to a temp, then swap
        tmp = run / "curate" / "curated.edit"
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
        shutil.rmtree(curated)
        tmp.rename(curated)

    # 1. a row added (a clean one): train's own fingerprint still says "unchanged", the data does not
    p = probe("curated set: row added in place")
    swap_in(original + [{**original[0], "id": "added-1", "text": train_rows(spec, 1, skip=6)[0]["text"]}])
    r = cli("train", run)
    p.one_line(r, rc=2, contains=f"{curated} changed since curate wrote it (hash ")
    assert f"rerun 'distilforge curate {run}'" in r.stderr and "skipped" not in r.stderr
    # 2. a text changed to a held-out row: refused for the edit before any gate or training
    p = probe("curated set: text changed in place")
    swap_in([{**original[0], "text": held["text"][0], "prompt": spec.student_prompt(held["text"][0])}] + original[1:])
    r = cli("train", run)
    p.one_line(r, rc=2, contains="changed since curate wrote it")
    assert json.loads((run / "train" / "manifest.json").read_text()) == trained  # nothing retrained
    # 3. `curate RUN` notices its output is not what it wrote, redoes it; train is happy again
    r = cli("curate", run)
    assert r.returncode == 0 and "skipped" not in r.stderr, r.stderr[-3000:]
    assert datasets.load_from_disk(str(curated)).to_list() == original
    r = cli("train", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "train" / "manifest.json").read_text())["fingerprint"] == trained["fingerprint"]


def test_edited_review_export_is_refused(probe, tmp_path):
    """train reads the approved review export once one exists: the same check applies to it."""
    p = probe("review export edited in place")
    spec_path = spec_file(tmp_path)
    run = tmp_path / "run"
    spec, _ = locked_run(run, spec_path)
    rows = train_rows(spec)
    save_stage(run / "curate", "curate", curated=datasets.Dataset.from_list(rows))
    save_stage(run / "review" / "export", "review_export", approved=datasets.Dataset.from_list(rows[:8]))
    approved = run / "review" / "export" / "approved"
    datasets.Dataset.from_list(rows[:9]).save_to_disk(str(tmp_path / "edit"))
    shutil.rmtree(approved)
    (tmp_path / "edit").rename(approved)
    r = cli("train", run)
    p.one_line(r, rc=2, contains=f"{approved} changed since review_export wrote it")
    assert f"rerun 'distilforge review export {run}'" in r.stderr and no_training(run)
