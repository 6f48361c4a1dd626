"""Teacher agreement: remove label noise by asking the teacher to answer each generated input blind.

A generated row is written *for* a label ("write a message about card_arrival") or with its own
answer (an extraction row's JSON), and a small teacher often writes a message that belongs to
another label, or an answer that misses a value the message states. Those rows teach the student
the wrong mapping and no text heuristic sees them. The check: the teacher answers every generated
ok input WITHOUT seeing the row's answer, with exactly the question the teacher eval asks
(`TaskFormat.answer_inputs`: the task's full system prompt, temperature 0; classification asks its
label question); where its answer differs from the row's, `curate` drops the row (reason
`teacher_disagrees`, detail `teacher said X`), relabels it with the teacher's answer, or keeps it
(`curation.teacher_disagreement: drop|relabel|keep`).

Two halves, because the teacher is only reachable during `generate`:
  generate  `label_rows` adds the column `teacher_label` (None for failed rows; `<invalid>` when
            the teacher's answer was unusable: no label, or JSON that breaks the schema). Answers
            are cached in RUN/generate/agreement.jsonl per (teacher model, question, text), so a
            rerun asks only for rows it has not answered; a teacher failure ends `generate` with
            one line (rc 1) and the next run continues where it stopped.
  curate    `prepare` (report + relabel, before the funnel) and `checks` (the drop, a per-row
            funnel step), used by the local funnel and the Ray backend alike, so both decide the
            same. Rows without a teacher answer (old runs, `<invalid>`) pass: no opinion is not
            a disagreement.

What is compared: a type with labels compares the teacher's label with the row's `label`; a type
without labels compares the teacher's answer with the row's completion after extraction_score's
value folding (JSON objects: case, spacing, 100.0 == 100, null == absent). Which types take part
is the format's `agreement_enabled` (single-label classification; a multi-label row cannot be
judged by one label, and an instruction reply has no single right answer).
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
INVALID = "<invalid>"  # the teacher answered, but nothing usable (cached: not asked again)
CHUNK = 64  # rows per scoring call: answers reach the cache at least this often


class AgreementFailed(RuntimeFailure):
    """The teacher stopped answering while labelling rows; the labels so far are cached."""


def _fmt(spec: TaskSpec):
    from heldout.formats import task_format

    return task_format(spec)


def enabled(spec: TaskSpec) -> bool:
    """Whether this spec asks the teacher for blind answers (and `curate` compares them)."""
    return bool(spec.generation.teacher_agreement) and _fmt(spec).agreement_enabled()


# ---------------------------------------------------------------- generate: ask the teacher

def _key(model: str, system_prompt: str, text: str) -> str:
    return hashlib.sha256(f"{model}\x1f{system_prompt}\x1f{text}".encode()).hexdigest()[:32]


def _question(spec: TaskSpec) -> str:
    """What an answer depends on besides the model and the text: the system prompt and, for a
    type without labels, the answer schema it was validated against (a changed schema asks again;
    a label set is already in the classification prompt, so its keys stay what they were)."""
    fmt = _fmt(spec)
    schema = None if fmt.has_labels else fmt.answer_request_schema()
    return spec.system_prompt() + ("" if schema is None else "\x1f" + json.dumps(schema, sort_keys=True))


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


def ask_answers(spec: TaskSpec, endpoint: Endpoint, texts: list[str], cache: Path,
                failure: Callable[[int, int, str], Exception],
                desc: str = "asking the teacher") -> tuple[dict[str, str], dict]:
    """{text: the teacher's blind answer (or `<invalid>`)} for every text, asked as the teacher eval
    asks (`TaskFormat.answer_inputs`): a label for classification, canonical JSON for extraction,
    the reply for instruction. Answers are cached in `cache` ({"key", "label": answer} lines) per
    (teacher model, question, text) and appended with fsync after each chunk, so a rerun asks only
    what is missing. When the teacher fails mid-way, `failure(answered, total, reason)` is raised
    (distinct texts answered so far, distinct texts in all): what was answered stays cached. Used
    by generate's agreement check and the traffic stage alike, so one text gets one answer in both."""
    from openai import APIError

    fmt = _fmt(spec)
    question = _question(spec)
    have = _read_cache(cache)
    key = {t: _key(endpoint.model, question, t) for t in texts}
    todo = [t for t in dict.fromkeys(texts) if key[t] not in have]
    total = len(key)
    t0, tokens = time.time(), {"prompt": 0, "completion": 0}
    for c0 in range(0, len(todo), CHUNK):
        chunk = todo[c0:c0 + CHUNK]
        try:
            got, tok = fmt.answer_inputs(endpoint, chunk, desc=desc)
        except (APIError, RuntimeFailure, OSError) as e:
            raise failure(total - len(todo) + c0, total, one_line(e)) from None
        preds = [INVALID if a is None else a for a in got]
        tokens["prompt"] += tok["prompt"]
        tokens["completion"] += tok["completion"]
        with cache.open("a") as f:
            f.write("".join(json.dumps({"key": key[t], "label": p}, ensure_ascii=False) + "\n"
                            for t, p in zip(chunk, preds)))
            f.flush()
            os.fsync(f.fileno())
        have.update((key[t], p) for t, p in zip(chunk, preds))
    return ({t: have[key[t]] for t in key},
            {"asked_now": len(todo), "cached": total - len(todo), "tokens": tokens, "seconds": round(time.time() - t0, 2)})


# ---------------------------------------------------------------- comparing answers

def folded(answer: str) -> str:
    """The comparison form of an answer without labels: a JSON object as extraction_score compares
    it (keys sorted, values folded, nulls dropped), any other text with case and spacing folded."""
    from heldout.extraction_score import canonical

    try:
        obj = json.loads(answer)
    except (json.JSONDecodeError, TypeError):
        obj = None
    return canonical(obj, None, fold=True) if isinstance(obj, dict) else " ".join(str(answer).split()).casefold()


def target(row: dict, has_labels: bool) -> str | None:
    """What the teacher's answer is compared with: the row's label, or its completion (the answer)."""
    if has_labels:
        return row.get("label")
    comp = row.get("completion") or []
    return comp[0].get("content") if comp else None


def _judge(spec: TaskSpec) -> tuple[Callable[[dict], str | None], Callable[[str, str], bool]]:
    """(row -> the teacher's answer when it is a real opinion on a row that could be trained on,
    (teacher, target) -> whether they agree), for this task's format."""
    has_labels = _fmt(spec).has_labels
    label_set = set(spec.label_names)

    def usable(a) -> bool:
        return a in label_set if has_labels else bool(a) and a != INVALID

    def opinion(row: dict) -> str | None:
        t = row.get(COLUMN)
        return t if usable(t) and row.get("status", "ok") == "ok" and usable(target(row, has_labels)) else None

    def same(t: str, want: str) -> bool:
        return t == want if has_labels else folded(t) == folded(want)

    return opinion, same


def _answer_fields(answer: str) -> dict:
    try:
        obj = json.loads(answer)
    except (json.JSONDecodeError, TypeError):
        return {}
    return json.loads(folded(answer)) if isinstance(obj, dict) else {}


def label_rows(spec: TaskSpec, endpoint: Endpoint, ds: datasets.Dataset, out_dir: str | Path) -> tuple[datasets.Dataset, dict]:
    """`ds` with a `teacher_label` column (the teacher's blind answer), and the manifest's
    `teacher_agreement` block.

    Only ok rows are asked. Raises AgreementFailed (answers so far kept in the cache) when the
    teacher fails mid-way: curating half-labelled rows would silently skip the check for the rest."""
    ok_texts = [t for t, st in zip(ds["text"], ds["status"]) if st == "ok"]

    def failed(done: int, total: int, reason: str) -> Exception:
        return AgreementFailed(f"teacher agreement: the teacher failed after labelling {done} of {total} rows "
                               f"({reason}); the generated rows and labels so far are kept: rerun generate to finish")

    answers, asked_info = ask_answers(spec, endpoint, ok_texts, Path(out_dir) / CACHE, failed, "teacher agreement")
    col = [answers[t] if st == "ok" else None for t, st in zip(ds["text"], ds["status"])]
    ds = ds.add_column(COLUMN, col, feature=datasets.Value("string"))
    opinion, same = _judge(spec)
    asked = [r for r in ds if r["status"] == "ok"]
    valid = [(opinion(r), target(r, _fmt(spec).has_labels)) for r in asked]
    valid = [(t, want) for t, want in valid if t is not None]
    info = {"rows": len(asked), "asked_now": asked_info["asked_now"], "cached": len(asked) - asked_info["asked_now"],
            "agree": sum(same(t, w) for t, w in valid), "disagree": sum(not same(t, w) for t, w in valid),
            "invalid": len(asked) - len(valid), "seconds": asked_info["seconds"], "tokens": asked_info["tokens"]}
    info["disagreement_rate"] = round(info["disagree"] / len(valid), 4) if valid else None
    return ds, info


# ---------------------------------------------------------------- curate: compare, drop or relabel

def report(raw: datasets.Dataset, spec: TaskSpec) -> dict:
    """Disagreement per intended label (types without labels: per answer field) over the rows the
    teacher answered (JSON for the manifest)."""
    mode = spec.curation.filters.teacher_disagreement
    has_labels = _fmt(spec).has_labels
    out = {"mode": mode, "checked": 0, "disagree": 0, "rate": None, "per_label": {}}
    if COLUMN not in raw.column_names:
        out["note"] = "rows carry no teacher_label (generated without teacher agreement): nothing compared"
        return out
    opinion, same = _judge(spec)
    per: dict[str, dict] = {}
    fields: Counter = Counter()
    cols = [c for c in ("label", "status", "completion", COLUMN) if c in raw.column_names]
    for r in raw.select_columns(cols):
        t = opinion(r)
        if t is None:
            continue
        want = target(r, has_labels)
        p = per.setdefault(r["label"] if has_labels else "", {"checked": 0, "disagree": 0, "teacher_said": Counter()})
        p["checked"] += 1
        if not same(t, want):
            p["disagree"] += 1
            if has_labels:
                p["teacher_said"][t] += 1
            else:
                a, b = _answer_fields(t), _answer_fields(want)
                fields.update(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
    for lab in spec.label_names:
        if lab in per:
            p = per[lab]
            out["per_label"][lab] = {"checked": p["checked"], "disagree": p["disagree"],
                                     "rate": round(p["disagree"] / p["checked"], 4),
                                     "teacher_said": dict(p["teacher_said"].most_common())}
    if not has_labels:
        out["fields_differ"] = dict(fields.most_common())  # which fields the disagreements are about
    out["checked"] = sum(p["checked"] for p in per.values())
    out["disagree"] = sum(p["disagree"] for p in per.values())
    out["rate"] = round(out["disagree"] / out["checked"], 4) if out["checked"] else None
    return out


def prepare(raw: datasets.Dataset, spec: TaskSpec) -> tuple[datasets.Dataset, dict]:
    """(rows the funnel should see, the report). In `relabel` mode each disagreeing row takes the
    teacher's label (and completion), or for a type without labels the teacher's answer as its
    completion; what it had before (label or answer) stays in `relabelled_from`."""
    if not enabled(spec):
        return raw, {}
    rep = report(raw, spec)
    if spec.curation.filters.teacher_disagreement != "relabel" or COLUMN not in raw.column_names:
        return raw, rep
    from curation.formats import completion_text

    has_labels = _fmt(spec).has_labels
    opinion, same = _judge(spec)

    def relabel(r: dict) -> dict:
        t, want = opinion(r), target(r, has_labels)
        if t is None or same(t, want):
            return {"relabelled_from": None}
        label = t if has_labels else r["label"]
        return {"label": label, "completion": [{"role": "assistant", "content": completion_text(spec, label, t)}],
                "relabelled_from": want}

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
    drop = spec.curation.filters.teacher_disagreement == "drop"
    opinion, same = _judge(spec)
    has_labels = _fmt(spec).has_labels

    def disagrees(r: dict) -> str | None:
        t = opinion(r)
        return f"teacher said {t}" if drop and t is not None and not same(t, target(r, has_labels)) else None

    return [(STEP, REASON, disagrees)]


def annotate(funnel: list[dict], rep: dict) -> None:
    """Put the disagreement numbers on the funnel's step (the rendered table shows them)."""
    if not rep or "note" in rep:  # off, or rows without teacher labels: nothing to show
        return
    for s in funnel:
        if s["step"] == STEP:
            s["teacher"] = {"mode": rep["mode"], "checked": rep["checked"], "disagree": rep["disagree"],
                            "rate": rep["rate"], **({"relabelled": rep["relabelled"]} if "relabelled" in rep else {})}
