"""Lock the real held-out set, and refuse to trust it after any change.

The held-out rows are the only honest yardstick in the project: synthetic data is scored
against them, never trained on them. `lock` imports them from the task's source (a local
CSV/JSONL/Parquet file; a local dataset folder, `save_to_disk` or files `load_dataset` reads;
or a hub id `owner/name[:split]`, read from the HF cache offline and downloaded when
HF_HUB_OFFLINE=0), canonicalizes them, and writes `lock.json` with a sha256 per row, an
overall hash, and the source file's (or folder's) own hash. A missing source is one line that
says where the demo's data is expected and how to point elsewhere.
`verify` re-reads the source and the locked copy and names the first difference: an edited
row, an added or removed one, or a reorder. Evaluation calls `verify` before it scores.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import Any, Callable

import datasets

from distilforge.atomic import atomic_write_json
from distilforge.manifest import save_dataset, sha256_file
from distilforge.errors import UserError

LOCK = "lock.json"
ROWS = "rows"


class HeldoutError(UserError, RuntimeError):
    """The held-out set is missing, unreadable, or no longer what was locked."""


def canonical(text: str) -> str:
    """Unicode NFC, no surrounding whitespace, inner whitespace runs collapsed to one space."""
    return " ".join(unicodedata.normalize("NFC", str(text)).split())


def row_sha(text: str, label: str) -> str:
    return hashlib.sha256(f"{label}\x1f{text}".encode()).hexdigest()


FILE_TYPES = (".csv", ".jsonl", ".json", ".parquet")
# `owner/name` or `owner/name:split`, as the hub spells dataset ids (one slash, no path dots).
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?::(?P<split>[\w.-]+))?$")
MISSING_HINT = ("The demo reads Banking77 from ../shared/data/banking77 (set DISTILFORGE_DATA=<folder> "
                "to point elsewhere; see README \"Data\")")


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _read_file(p: Path) -> datasets.Dataset:
    import pandas as pd

    suffix = p.suffix.lower()
    if suffix not in FILE_TYPES:
        raise HeldoutError(f"{p}: unsupported held-out file type '{suffix}' (use .csv, .jsonl or .parquet)")
    try:
        if suffix == ".csv":
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
        elif suffix in (".jsonl", ".json"):
            df = pd.read_json(p, lines=suffix == ".jsonl", dtype=False)
        else:
            df = pd.read_parquet(p)
    except (ValueError, OSError) as e:
        raise HeldoutError(f"{p}: cannot parse held-out file ({_first_line(e)})") from None
    try:
        return datasets.Dataset.from_pandas(df, preserve_index=False)
    except (ValueError, TypeError):  # pyarrow: a column mixing objects with strings or numbers
        return datasets.Dataset.from_pandas(_json_text_columns(df), preserve_index=False)


def _json_text_columns(df):
    """A JSON column whose values are not all of one kind (an object in most rows, a string or a
    number in one) cannot become an Arrow column: hold every non-string value of such a column as
    its JSON text, so the bad row reaches the task format's reader, which names its row."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object and len({type(v) for v in df[col] if v is not None}) > 1:
            df[col] = [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in df[col]]
    return df


def _pick_split(dd, source: str, split: str | None) -> datasets.Dataset:
    """`split` if named; else `test` when there is one, else the only split there is."""
    if isinstance(dd, datasets.Dataset):
        return dd
    names = list(dd.keys())
    want = split or ("test" if "test" in names else (names[0] if len(names) == 1 else None))
    if want not in names:
        base = source.rpartition(":")[0] if split else source
        raise HeldoutError(f"heldout.source: {source}: no split '{split or 'test'}' (splits: {', '.join(names)}; "
                           f"name one as {base}:<split>)")
    return dd[want]


def _read_dir(d: Path, source: str, split: str | None) -> datasets.Dataset:
    """A `save_to_disk` folder, or a folder of CSV/JSONL/Parquet files that `load_dataset` reads
    the way it reads a hub repo (split names from file names: test.csv -> `test`)."""
    try:
        if (d / "dataset_dict.json").exists() or (d / "state.json").exists():
            return _pick_split(datasets.load_from_disk(str(d)), source, split)
        csv_only = {f.suffix.lower() for f in d.rglob("*") if f.is_file() and not f.name.startswith(".")} == {".csv"}
        kw = {"keep_default_na": False} if csv_only else {}  # "NA" / "null" are real texts, not missing
        return _pick_split(datasets.load_dataset(str(d), **kw), source, split)
    except HeldoutError:
        raise
    except Exception as e:  # datasets raises many kinds (EmptyDatasetError, ValueError, ArrowInvalid, ...)
        raise HeldoutError(f"heldout.source: {source}: cannot load the dataset folder ({_first_line(e)})") from None


def _dir_hash(d: Path) -> str:
    """One hash over the folder's files (relative path + content), so `verify` sees any byte change."""
    h = hashlib.sha256()
    for f in sorted(f for f in d.rglob("*") if f.is_file() and not any(x.startswith(".") for x in f.relative_to(d).parts)):
        h.update(f"{f.relative_to(d).as_posix()}\x1f{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _read_hub(repo: str, split: str | None, source: str) -> datasets.Dataset:
    """A hub dataset id: downloaded when online, read from the local HF cache when offline."""
    try:
        return datasets.load_dataset(repo, split=split or "test")
    except ConnectionError as e:
        if datasets.config.HF_HUB_OFFLINE or "offline" in str(e).lower():
            raise HeldoutError(
                f"heldout.source: '{source}' is a hub dataset id, but the hub is offline (HF_HUB_OFFLINE=1, the "
                f"default) and it is not in the local HF cache; run with HF_HUB_OFFLINE=0 to download it, or point "
                f"heldout.source at a local CSV/JSONL/Parquet file or dataset folder") from None
        raise HeldoutError(f"heldout.source: hub dataset '{repo}' unreachable ({_first_line(e)})") from None
    except Exception as e:  # DatasetNotFoundError, a missing split (ValueError), auth errors, ...
        raise HeldoutError(f"heldout.source: hub dataset '{source}' could not be loaded ({_first_line(e)})") from None


def _load(source: str) -> tuple[datasets.Dataset, str | None]:
    """(dataset, source hash): a file, a local dataset folder (`DIR` or `DIR:split`), or a hub id.
    The hash covers the file or folder bytes; a hub dataset has none (its rows are hashed anyway)."""
    p = Path(source)
    if p.is_file():
        return _read_file(p), sha256_file(p)
    if p.is_dir():
        return _read_dir(p, source, None), _dir_hash(p)
    base, _, split = source.rpartition(":")
    if base and Path(base).is_dir():
        return _read_dir(Path(base), source, split), _dir_hash(Path(base))
    m = _HUB_ID.match(source)
    if m and Path(m["repo"]).suffix.lower() not in FILE_TYPES and not Path(m["repo"]).parent.exists():
        return _read_hub(m["repo"], m["split"], source), None
    raise HeldoutError(f"heldout.source: {source}: no such file. {MISSING_HINT}")


def _read_source(source: str, text_col: str, label_col: str | None,
                 target: Callable[[Any], str]) -> tuple[list[dict], str | None]:
    """Canonical (text, label) rows; `label` is the task format's target string ('' without a target
    column: an instruction task's held-out rows are inputs only)."""
    ds, source_hash = _load(source)
    for col in (text_col, label_col):
        if col is not None and col not in ds.column_names:
            raise HeldoutError(f"{source}: column '{col}' not found (columns: {', '.join(ds.column_names)})")
    names = ds.features[label_col].names if label_col and hasattr(ds.features[label_col], "names") else None
    first = 1 if source.lower().endswith(".jsonl") else 2  # JSON lines: the line; CSV: after the header
    rows = []
    for i, r in enumerate(ds):
        text, label = r[text_col], (r[label_col] if label_col else "")
        if text is None or label is None:
            raise HeldoutError(f"{source}: row {i + first}: empty '{text_col if text is None else label_col}'")
        if names:
            label = names[label]
        else:
            try:
                label = target(label)
            except (ValueError, TypeError) as e:
                raise HeldoutError(f"{source}: row {i + first}: '{label_col}': {e}") from None
        rows.append({"text": canonical(text), "label": canonical(label) if isinstance(label, str) else label})
    return rows, source_hash


def _select(rows: list[dict], labels: list[str], max_per_label: int | None) -> list[dict]:
    wanted, seen, out = set(labels), {}, []
    for r in rows:
        if r["label"] not in wanted:
            continue
        seen[r["label"]] = seen.get(r["label"], 0) + 1
        if max_per_label and seen[r["label"]] > max_per_label:
            continue
        out.append(r)
    return out


def build_rows(heldout_cfg, spec) -> tuple[list[dict], str | None]:
    """Read, canonicalize and filter the held-out source; rows get ids `h<index>-<sha[:10]>`.
    The task's format (heldout/formats) says how a row's target is read and whether rows carry
    labels to select (`labels`, `label_map`, `max_per_label` only mean something for those)."""
    from heldout.formats import task_format

    fmt = task_format(spec)
    label_col = heldout_cfg.label_column if fmt.heldout_has_target else None
    raw, file_hash = _read_source(heldout_cfg.source, heldout_cfg.text_column, label_col, fmt.heldout_target)
    if fmt.has_labels:
        for r in raw:
            r["label"] = heldout_cfg.label_map.get(r["label"], r["label"])
        use = heldout_cfg.labels or spec.label_names
        rows = _select(raw, use, heldout_cfg.max_per_label)
        missing = sorted(set(use) - {r["label"] for r in rows})
        if missing:
            raise HeldoutError(f"{heldout_cfg.source}: no held-out rows for label(s): {', '.join(missing)}")
    else:
        rows = raw
    if not rows:
        raise HeldoutError(f"{heldout_cfg.source}: no held-out rows")
    for i, r in enumerate(rows):
        r["sha256"] = row_sha(r["text"], r["label"])
        r["id"] = f"h{i:05d}-{r['sha256'][:10]}"
    return rows, file_hash


def _overall(hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def lock(heldout_cfg, spec, out_dir: str | Path) -> dict:
    """Write `out_dir/lock.json` and the canonical rows dataset `out_dir/rows` (`spec`: the task)."""
    out_dir = Path(out_dir)
    rows, file_hash = build_rows(heldout_cfg, spec)
    hashes = [r["sha256"] for r in rows]
    counts: dict[str, int] = {}
    for r in rows if spec.label_names else []:  # label counts; other targets are not categories
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    ds = datasets.Dataset.from_list([{"id": r["id"], "text": r["text"], "label": r["label"]} for r in rows])
    save_dataset(ds, out_dir / ROWS)
    info = {
        "source": heldout_cfg.source,
        "source_sha256": file_hash,
        "text_column": heldout_cfg.text_column,
        "label_column": heldout_cfg.label_column,
        "labels": counts,
        "max_per_label": heldout_cfg.max_per_label,
        "n": len(rows),
        "sha256": _overall(hashes),
        "rows": [{"id": r["id"], "sha256": r["sha256"]} for r in rows],
    }
    atomic_write_json(out_dir / LOCK, info)
    return info


def _diff(locked: list[str], now: list[str], what: str) -> str | None:
    if locked == now:
        return None
    if sorted(locked) == sorted(now):
        i = next(i for i, (a, b) in enumerate(zip(locked, now)) if a != b)
        return f"{what}: rows reordered (first difference at row {i})"
    if len(now) > len(locked):
        extra = len(set(now) - set(locked))
        return f"{what}: {len(now) - len(locked)} row(s) added ({extra} not in the lock)"
    if len(now) < len(locked):
        return f"{what}: {len(locked) - len(now)} row(s) removed"
    i = next(i for i, (a, b) in enumerate(zip(locked, now)) if a != b)
    return f"{what}: row {i} was edited (sha256 {locked[i][:12]} -> {now[i][:12]})"


def read_lock(lock_dir: str | Path) -> dict:
    p = Path(lock_dir) / LOCK
    if not p.exists():
        raise HeldoutError(f"{p}: no held-out lock (run `distilforge heldout lock` first)")
    return json.loads(p.read_text())


def verify(heldout_cfg, spec, lock_dir: str | Path) -> dict:
    """Raise HeldoutError naming the first change since `lock`; return the lock info if intact."""
    info = read_lock(lock_dir)
    locked = [r["sha256"] for r in info["rows"]]
    if _overall(locked) != info["sha256"]:
        raise HeldoutError(f"{Path(lock_dir) / LOCK}: lock file itself was edited (overall hash mismatch)")
    if heldout_cfg.source != info["source"]:
        raise HeldoutError(f"held-out source changed: locked {info['source']}, spec now says {heldout_cfg.source}")
    rows, file_hash = build_rows(heldout_cfg, spec)
    msg = _diff(locked, [r["sha256"] for r in rows], f"{heldout_cfg.source}")
    if msg:
        raise HeldoutError(f"held-out set changed since it was locked — {msg}; refusing to trust it")
    if info["source_sha256"] and file_hash != info["source_sha256"]:
        raise HeldoutError(
            f"{heldout_cfg.source}: file bytes changed since it was locked (sha256 {info['source_sha256'][:12]} -> "
            f"{file_hash[:12]}); refusing to trust it"
        )
    stored = datasets.load_from_disk(str(Path(lock_dir) / ROWS))
    msg = _diff(locked, [row_sha(t, lab) for t, lab in zip(stored["text"], stored["label"])], f"{Path(lock_dir) / ROWS}")
    if msg:
        raise HeldoutError(f"locked copy changed — {msg}; refusing to trust it")
    return info


def load_locked(lock_dir: str | Path) -> datasets.Dataset:
    """The locked rows (id, text, label). Callers outside `heldout` must never export the text."""
    p = Path(lock_dir) / ROWS
    if not p.exists():
        raise HeldoutError(f"{p}: no locked held-out rows (run `distilforge heldout lock` first)")
    return datasets.load_from_disk(str(p))
