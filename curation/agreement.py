"""Teacher agreement: remove label noise by asking the teacher to classify each row blind.

A generated row is written *for* a label ("write a message about card_arrival"), and a small
teacher often writes a message that belongs to another label (a lost card, a fee). Those rows
teach the student the wrong mapping and no text heuristic sees them. The check: the teacher
classifies every generated ok input WITHOUT seeing the intended label, with exactly the request
the teacher eval uses (`heldout.evaluate.score_teacher`: the student's system prompt, output
constrained to the label set, temperature 0); where its answer differs from the intended label,
`curate` drops the row (reason `teacher_disagrees`, detail `teacher said X`), relabels it with the
teacher's answer, or keeps it (`curation.teacher_disagreement: drop|relabel|keep`).

Two halves, because the teacher is only reachable during `generate`:
  generate  `label_rows` adds the column `teacher_label` (None for failed rows; `<invalid>` when
            the teacher's answer was not a label). Answers are cached in
            RUN/generate/agreement.jsonl per (teacher model, prompt, text), so a rerun asks only
            for rows it has not labelled; a teacher failure ends `generate` with one line (rc 1)
            and the next run continues where it stopped.
  curate    `prepare` (report + relabel, before the funnel) and `checks` (the drop, a per-row
            funnel step), used by the local funnel and the Ray backend alike, so both decide the
            same. Rows without a teacher label (old runs, `<invalid>`) pass: no opinion is not
            a disagreement.

Single-label classification only: extraction and instruction answers have no label to compare,
and a multi-label row cannot be judged by one constrained label.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import datasets

from distilforge.errors import RuntimeFailure, one_line

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec
    from distilforge.teacher import Endpoint

REASON = "teacher_disagrees"
STEP = "teacher_agreement"
COLUMN = "teacher_label"
CACHE = "agreement.jsonl"
CHUNK = 64  # rows per scoring call: answers reach the cache at least this often


class AgreementFailed(RuntimeFailure):
    """The teacher stopped answering while labelling rows; the labels so far are cached."""


def enabled(spec: TaskSpec) -> bool:
    """Whether this spec asks the teacher for blind labels (and `curate` compares them)."""
    return spec.type == "classification" and not spec.multi_label and spec.generation.teacher_agreement


# ---------------------------------------------------------------- generate: ask the teacher

def _key(model: str, system_prompt: str, text: str) -> str:
    return hashlib.sha256(f"{model}\x1f{system_prompt}\x1f{text}".encode()).hexdigest()[:32]


def _read_cache(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                d = json.loads(line)
                out[d["key"]] = d["label"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by an interrupt: that row is asked again
    return out


def ask_labels(spec: TaskSpec, endpoint: Endpoint, texts: list[str], cache: Path,
               failure: Callable[[int, int, str], Exception]) -> tuple[dict[str, str], dict]:
    """{text: the teacher's blind label (or `<invalid>`)} for every text, with the teacher-eval
    question (`heldout.evaluate.score_teacher`). Answers are cached in `cache` per (teacher model,
    prompt, text) and appended with fsync after each chunk, so a rerun asks only what is missing.
    When the teacher fails mid-way, `failure(labelled, total, reason)` is raised (distinct texts
    labelled so far, distinct texts in all): what was answered stays cached. Used by generate's
    agreement check and the traffic stage alike, so one text gets one answer in both."""
    from heldout.evaluate import score_teacher
    from openai import APIError

    system = spec.system_prompt()
    have = _read_cache(cache)
    key = {t: _key(endpoint.model, system, t) for t in texts}
    todo = [t for t in dict.fromkeys(texts) if key[t] not in have]
    total = len(key)
    t0, tokens = time.time(), {"prompt": 0, "completion": 0}
    for c0 in range(0, len(todo), CHUNK):
        chunk = todo[c0:c0 + CHUNK]
        try:
            preds, tok = score_teacher(endpoint, system, chunk, spec.label_names, spec.teacher.structured_output,
                                       spec.teacher.timeout_s, spec.teacher.max_retries)
        except (APIError, RuntimeFailure, OSError) as e:
            raise failure(total - len(todo) + c0, total, one_line(e)) from None
        tokens["prompt"] += tok["prompt"]
        tokens["completion"] += tok["completion"]
        with cache.open("a") as f:
            f.write("".join(json.dumps({"key": key[t], "label": p}) + "\n" for t, p in zip(chunk, preds)))
            f.flush()
            os.fsync(f.fileno())
        have.update((key[t], p) for t, p in zip(chunk, preds))
    return ({t: have[key[t]] for t in key},
            {"asked_now": len(todo), "cached": total - len(todo), "tokens": tokens, "seconds": round(time.time() - t0, 2)})


def label_rows(spec: TaskSpec, endpoint: Endpoint, ds: datasets.Dataset, out_dir: str | Path) -> tuple[datasets.Dataset, dict]:
    """`ds` with a `teacher_label` column, and the manifest's `teacher_agreement` block.

    Only ok rows are asked. Raises AgreementFailed (labels so far kept in the cache) when the
    teacher fails mid-way: curating half-labelled rows would silently skip the check for the rest."""
    labels = spec.label_names
    ok_texts = [t for t, st in zip(ds["text"], ds["status"]) if st == "ok"]

    def failed(done: int, total: int, reason: str) -> Exception:
        return AgreementFailed(f"teacher agreement: the teacher failed after labelling {done} of {total} rows "
                               f"({reason}); the generated rows and labels so far are kept: rerun generate to finish")

    answers, asked_info = ask_labels(spec, endpoint, ok_texts, Path(out_dir) / CACHE, failed)
    col = [answers[t] if st == "ok" else None for t, st in zip(ds["text"], ds["status"])]
    ds = ds.add_column(COLUMN, col, feature=datasets.Value("string"))
    asked = [(lab, t) for lab, t, s in zip(ds["label"], col, ds["status"]) if s == "ok"]
    valid = [(lab, t) for lab, t in asked if t in labels]
    info = {"rows": len(asked), "asked_now": asked_info["asked_now"], "cached": len(asked) - asked_info["asked_now"],
            "agree": sum(lab == t for lab, t in valid), "disagree": sum(lab != t for lab, t in valid),
            "invalid": len(asked) - len(valid), "seconds": asked_info["seconds"], "tokens": asked_info["tokens"]}
    info["disagreement_rate"] = round(info["disagree"] / len(valid), 4) if valid else None
    return ds, info


# ---------------------------------------------------------------- curate: compare, drop or relabel

def _opinion(row: dict, label_set: set[str]) -> str | None:
    """The teacher's label when it is a real opinion on a row that could be trained on."""
    t = row.get(COLUMN)
    return t if t in label_set and row.get("status", "ok") == "ok" and row.get("label") in label_set else None


def report(raw: datasets.Dataset, spec: TaskSpec) -> dict:
    """Disagreement per intended label over the rows the teacher labelled (JSON for the manifest)."""
    mode = spec.curation.filters.teacher_disagreement
    out = {"mode": mode, "checked": 0, "disagree": 0, "rate": None, "per_label": {}}
    if COLUMN not in raw.column_names:
        out["note"] = "rows carry no teacher_label (generated without teacher agreement): nothing compared"
        return out
    label_set = set(spec.label_names)
    per: dict[str, dict] = {}
    for r in raw.select_columns([c for c in ("label", "status", COLUMN) if c in raw.column_names]):
        t = _opinion(r, label_set)
        if t is None:
            continue
        p = per.setdefault(r["label"], {"checked": 0, "disagree": 0, "teacher_said": Counter()})
        p["checked"] += 1
        if t != r["label"]:
            p["disagree"] += 1
            p["teacher_said"][t] += 1
    for lab in spec.label_names:
        if lab in per:
            p = per[lab]
            out["per_label"][lab] = {"checked": p["checked"], "disagree": p["disagree"],
                                     "rate": round(p["disagree"] / p["checked"], 4),
                                     "teacher_said": dict(p["teacher_said"].most_common())}
    out["checked"] = sum(p["checked"] for p in per.values())
    out["disagree"] = sum(p["disagree"] for p in per.values())
    out["rate"] = round(out["disagree"] / out["checked"], 4) if out["checked"] else None
    return out


def prepare(raw: datasets.Dataset, spec: TaskSpec) -> tuple[datasets.Dataset, dict]:
    """(rows the funnel should see, the report). In `relabel` mode each disagreeing row takes the
    teacher's label (and completion); its intended label stays in `relabelled_from`."""
    if not enabled(spec):
        return raw, {}
    rep = report(raw, spec)
    if spec.curation.filters.teacher_disagreement != "relabel" or COLUMN not in raw.column_names:
        return raw, rep
    from curation.formats import completion_text

    label_set = set(spec.label_names)

    def relabel(r: dict) -> dict:
        t = _opinion(r, label_set)
        if t is None or t == r["label"]:
            return {"relabelled_from": None}
        return {"label": t, "completion": [{"role": "assistant", "content": completion_text(spec, t, "")}],
                "relabelled_from": r["label"]}

    feats = raw.features.copy()
    feats["relabelled_from"] = datasets.Value("string")
    rows = [{**r, **relabel(r)} for r in raw]
    out = datasets.Dataset.from_list(rows, features=feats) if rows else \
        datasets.Dataset.from_dict({k: [] for k in feats}, features=feats)
    rep["relabelled"] = sum(r["relabelled_from"] is not None for r in rows)
    return out, rep


def checks(spec: TaskSpec) -> list[tuple[str, str, object]]:
    """The funnel step (step name, reason, row -> detail|None); empty when the check is off.
    Present in every mode so the funnel always shows the step; only `drop` drops."""
    if not enabled(spec):
        return []
    label_set = set(spec.label_names)
    drop = spec.curation.filters.teacher_disagreement == "drop"

    def disagrees(r: dict) -> str | None:
        t = _opinion(r, label_set)
        return f"teacher said {t}" if drop and t is not None and t != r["label"] else None

    return [(STEP, REASON, disagrees)]


def annotate(funnel: list[dict], rep: dict) -> None:
    """Put the disagreement numbers on the funnel's step (the rendered table shows them)."""
    if not rep or "note" in rep:  # off, or rows without teacher labels: nothing to show
        return
    for s in funnel:
        if s["step"] == STEP:
            s["teacher"] = {"mode": rep["mode"], "checked": rep["checked"], "disagree": rep["disagree"],
                            "rate": rep["rate"], **({"relabelled": rep["relabelled"]} if "relabelled" in rep else {})}
