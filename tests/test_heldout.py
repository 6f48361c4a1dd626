"""The locked held-out set: any edit, addition, removal or reorder is caught, and eval refuses."""
from __future__ import annotations

import csv
import io

import pytest

from conftest import TASK, cli
from distilforge.spec import load_spec
from heldout.lock import HeldoutError, load_locked, lock, read_lock, verify


@pytest.fixture()
def locked(tmp_path, banking77_copy, monkeypatch):
    monkeypatch.setenv("DISTILFORGE_DATA", str(banking77_copy))
    spec = load_spec(TASK)
    spec.heldout.labels = ["card_arrival", "pin_blocked"]
    info = lock(spec.heldout, spec, tmp_path / "heldout")
    return spec, tmp_path / "heldout", banking77_copy / "banking77" / "test.csv", info


def _rows(path):
    return list(csv.reader(io.StringIO(path.read_text())))


def _write(path, rows):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue())


def _subset_idx(rows):
    return [i for i, r in enumerate(rows) if i and r[1] in ("card_arrival", "pin_blocked")]


def test_lock_is_canonical_and_complete(locked):
    spec, d, src, info = locked
    assert info["n"] == 80 and info["labels"] == {"card_arrival": 40, "pin_blocked": 40}
    ds = load_locked(d)
    assert len(ds) == 80 and len(set(ds["id"])) == 80
    assert all(t == " ".join(t.split()) for t in ds["text"])
    assert verify(spec.heldout, spec, d)["sha256"] == info["sha256"]


def test_edit_one_byte_is_caught(locked):
    spec, d, src, _ = locked
    lines = src.read_bytes().split(b"\n")
    k = _subset_idx(_rows(src))[5]  # no embedded newlines in this file: csv row k is line k
    line = bytearray(lines[k])
    j = next(i for i, c in enumerate(line) if chr(c).isalpha())
    line[j] = ord("X") if line[j] != ord("X") else ord("Y")
    lines[k] = bytes(line)
    src.write_bytes(b"\n".join(lines))
    with pytest.raises(HeldoutError, match=r"row 5 was edited"):
        verify(spec.heldout, spec, d)


@pytest.mark.parametrize("change, message", [
    ("add", "added"), ("remove", "removed"), ("reorder", "reordered"), ("outside", "file bytes changed"),
])
def test_structural_changes_are_caught(locked, change, message):
    spec, d, src, _ = locked
    rows = _rows(src)
    idx = _subset_idx(rows)
    if change == "add":
        rows.insert(idx[3], ["Where on earth is my card?", "card_arrival"])
    elif change == "remove":
        del rows[idx[7]]
    elif change == "reorder":
        rows[idx[1]], rows[idx[2]] = rows[idx[2]], rows[idx[1]]
    else:  # a row outside the locked labels: the subset is intact, the source is not
        j = next(i for i, r in enumerate(rows) if i and r[1] == "exchange_rate")
        rows[j][0] += "!"
    _write(src, rows)
    with pytest.raises(HeldoutError, match=message):
        verify(spec.heldout, spec, d)


def test_locked_copy_and_lock_file_tamper(locked):
    spec, d, src, info = locked
    lock_file = d / "lock.json"
    lock_file.write_text(lock_file.read_text().replace(info["rows"][0]["sha256"], "0" * 64))
    with pytest.raises(HeldoutError, match="lock file itself was edited"):
        verify(spec.heldout, spec, d)
    assert read_lock(d)["n"] == 80


def test_cli_verify_and_eval_refuse_after_edit(tmp_path, banking77_copy):
    env = {"DISTILFORGE_DATA": str(banking77_copy)}
    run = tmp_path / "run"
    r = cli("heldout", "lock", run, "--spec", TASK, "--profile", "smoke", env=env)
    assert r.returncode == 0, r.stderr
    assert cli("heldout", "verify", run, env=env).returncode == 0
    src = banking77_copy / "banking77" / "test.csv"
    text = src.read_text()
    first = _rows(src)[1][0]
    src.write_text(text.replace(first, first[:-1] + ("?" if first[-1] != "?" else "."), 1))
    for args in (("heldout", "verify", run), ("eval", run)):
        r = cli(*args, env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "refusing to trust it" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------- other sources, progress

def _dataset_dir(kind: str, src_csv, d):
    """The same Banking77 test rows as a hub-style folder (`load_dataset(<dir>)` reads it the way
    it reads a hub repo: split from the file name) or as a `save_to_disk` folder."""
    import datasets
    import pandas as pd

    df = pd.read_csv(src_csv, dtype=str, keep_default_na=False)
    d.mkdir()
    if kind == "csv":
        df.to_csv(d / "test.csv", index=False)
    elif kind == "jsonl":
        df.to_json(d / "test.jsonl", orient="records", lines=True, force_ascii=False)
    else:
        datasets.DatasetDict({"test": datasets.Dataset.from_pandas(df, preserve_index=False)}).save_to_disk(str(d))
    return d


@pytest.mark.parametrize("kind", ["csv", "jsonl", "save_to_disk"])
def test_dataset_folder_source_locks_the_same_rows_as_the_file(locked, tmp_path, kind):
    spec, _, src, file_info = locked
    folder = _dataset_dir(kind, src, tmp_path / f"hub-{kind}")
    spec.heldout.source = str(folder)
    info = lock(spec.heldout, spec, tmp_path / f"lock-{kind}")
    assert info["n"] == file_info["n"] == 80
    assert info["rows"] == file_info["rows"] and info["sha256"] == file_info["sha256"]
    assert list(load_locked(tmp_path / f"lock-{kind}")["text"]) == list(load_locked(tmp_path / "heldout")["text"])
    assert info["source_sha256"] and verify(spec.heldout, spec, tmp_path / f"lock-{kind}")["n"] == 80
    spec.heldout.source = f"{folder}:validation"  # a split the folder does not have: named, with the ones it has
    with pytest.raises(HeldoutError, match=r"no split 'validation' \(splits: test"):
        lock(spec.heldout, spec, tmp_path / "lock-bad-split")


def test_dataset_folder_edit_is_caught(locked, tmp_path):
    spec, _, src, _ = locked
    folder = _dataset_dir("csv", src, tmp_path / "hub")
    spec.heldout.source = str(folder)
    lock(spec.heldout, spec, tmp_path / "lock")
    rows = _rows(folder / "test.csv")
    j = next(i for i, r in enumerate(rows) if i and r[1] == "exchange_rate")  # outside the locked labels
    rows[j][0] += "!"
    _write(folder / "test.csv", rows)
    with pytest.raises(HeldoutError, match="file bytes changed"):
        verify(spec.heldout, spec, tmp_path / "lock")


@pytest.mark.parametrize("source", ["{tmp}/nowhere/banking77/test.csv", "data/banking77/test.csv"])
def test_missing_source_says_where_the_data_is_expected(tmp_path, source):
    spec = load_spec(TASK)
    spec.heldout.source = source.format(tmp=tmp_path)
    with pytest.raises(HeldoutError) as e:
        lock(spec.heldout, spec, tmp_path / "heldout")
    msg = str(e.value)
    assert msg.startswith(f"heldout.source: {spec.heldout.source}: no such file.") and "DISTILFORGE_DATA" in msg
    assert "\n" not in msg and not (tmp_path / "heldout").exists()


def test_eval_progress_prints_per_batch_on_stderr_in_a_log(capsys):
    from heldout import evaluate as ev

    with ev.progress("scoring student", 20) as bar:
        for n in (8, 8, 4):
            bar.advance(n)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert [ln.split(" rows")[0] for ln in lines] == [f"scoring student: {k}/20" for k in (0, 8, 16, 20)]
    assert lines[-1].startswith("scoring student: 20/20 rows (100%)")
