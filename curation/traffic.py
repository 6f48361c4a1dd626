"""The `traffic` stage: real production inputs, labelled by the teacher, as training rows and a dev split.

Most users already have the inputs they want to move off the hosted model, just unlabelled.
Measured on Banking77: a student trained on 318 real rows labelled by a 0.97-accurate teacher
reaches 0.870 on the locked test set, against 0.710 from 72 synthetic rows. So real traffic,
labelled by the teacher, is the cheapest path to a good student; this stage makes it one more
source of rows for `curate`.

    read     `traffic.source` (the reader `heldout` uses: CSV / JSONL / Parquet / dataset folder);
             a gold column (`label_column`) is read as the locked rows' targets are (the task
             format's `heldout_target`: a label, or canonical JSON of an extraction's answer object)
    slice    with gold labels: keep this task's slice (`labels`, `label_map`), the share of the
             traffic a router would send here (types with labels only). Gold is never a training target.
    clean    drop empty texts, repeated texts (one row per normalized text, so the splits are
             disjoint by text), and every row overlapping the LOCKED held-out rows: exact copy,
             then curation/decontam.py's n-gram and embedding checks (what curate runs) — before
             splitting, so neither split can leak. Dropped rows keep their reason (RUN/traffic/dropped).
    split    shuffle with `traffic.seed`; the first `dev_rows` are the dev split, the next
             `max_rows` the training rows.
    label    the teacher answers each row exactly as teacher agreement and the teacher eval ask
             (curation/agreement.py `ask_answers` -> `TaskFormat.answer_inputs`, temperature 0): a
             label, canonical JSON for extraction, the reply for instruction. Answers are cached per
             (model, question, text) in RUN/traffic/labels.jsonl, so a rerun asks nothing again. A
             row whose answer is unusable (no label; JSON that breaks the schema; an empty reply) is
             dropped (`teacher_invalid`); a dev row with `dev_labels: gold` keeps its gold answer.
    write    RUN/traffic/rows (generate's columns, strategy `traffic`: curate's funnel treats them
             like any row; `label` is "" for types without labels, the answer is the completion),
             RUN/traffic/dev (id, text, label = the answer the split is scored on, label_source),
             and a manifest with the teacher's agreement with gold (label agreement; for JSON
             answers exact match and micro field-F1, heldout/extraction_score.py).

Multi-label classification is refused (one line): the label question asks for one label.
Without a `traffic` block the stage writes nothing and records "skipped: no traffic source".
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
from rich.console import Console

from curation import agreement, decontam, formats
from curation.dedup import normalize
from distilforge.errors import RuntimeFailure, UserError, one_line
from distilforge.layout import Run
from distilforge.manifest import MANIFEST, Stage, read_manifest, sha256_json, verified_output
from distilforge.spec import semantic_dump

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec
    from distilforge.teacher import Endpoint

console = Console(stderr=True)
CACHE = "labels.jsonl"
STRATEGY = "traffic"
SKIPPED = "skipped: no traffic source"
INVALID = agreement.INVALID
DEV_FEATURES = formats.features(id="string", text="string", label="string", label_source="string",
                                teacher_label="string", gold_label="string")
DROP_FEATURES = formats.features(id="string", text="string", gold_label="string", reason="string", detail="string")


class TrafficError(UserError, ValueError):
    """The traffic source or its settings are unusable (one line naming the `traffic.` field)."""


class TrafficLabelFailed(RuntimeFailure):
    """The teacher stopped answering while labelling traffic; the answers so far are cached."""


def row_id(text: str) -> str:
    """Stable per text: the same traffic message is the same row in every run."""
    return "traffic-" + hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- read and slice

def read_source(cfg, fmt=None) -> list[dict]:
    """[{text, gold}] from `traffic.source`, canonicalized as the held-out rows are (same reader).
    `fmt` (the task format) reads a gold value that is no label (an answer object) as the lock does."""
    from heldout.lock import HeldoutError, _load, canonical

    try:
        ds, _ = _load(cfg.source)
    except HeldoutError as e:
        msg = str(e).replace("heldout.source", "traffic.source").replace("held-out file", "traffic file")
        raise TrafficError(msg if msg.startswith("traffic.source") else f"traffic.source: {msg}") from None
    for field, col in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
        if col is not None and col not in ds.column_names:
            raise TrafficError(f"traffic.{field}: column '{col}' not found in {cfg.source} "
                               f"(columns: {', '.join(ds.column_names)})")
    names = None
    if cfg.label_column is not None and hasattr(ds.features[cfg.label_column], "names"):
        names = ds.features[cfg.label_column].names
    labelled = fmt is None or fmt.has_labels
    out = []
    for i, r in enumerate(ds):
        gold = r[cfg.label_column] if cfg.label_column else None
        if gold is not None and labelled:
            gold = names[gold] if names else canonical(gold)
            gold = cfg.label_map.get(gold, gold)
        elif gold is not None:
            try:
                gold = canonical(fmt.heldout_target(gold))
            except (ValueError, TypeError) as e:
                raise TrafficError(f"traffic.label_column: {cfg.source}: row {i + 2}: '{cfg.label_column}': "
                                   f"{one_line(e)}") from None
        text = r[cfg.text_column]
        out.append({"text": canonical(text) if text is not None else "", "gold": gold})
    return out


def _slice(rows: list[dict], cfg, task_labels: list[str]) -> list[dict]:
    """This task's share of the traffic (by gold label), or all of it when there are no gold labels
    (or the task has none: an extraction's gold is an answer, not a category)."""
    if cfg.label_column is None or not task_labels:
        return rows
    wanted = set(cfg.labels or task_labels)
    return [r for r in rows if r["gold"] in wanted]


def _distinct(rows: list[dict], heldout: datasets.Dataset) -> tuple[list[dict], list[dict]]:
    """(rows kept, rows dropped with reason/detail): empty, a repeat of an earlier row (so the splits
    are disjoint by text), or an exact copy of a locked row (normalized text; short copies too)."""
    kept, dropped, seen = [], [], {}
    held = {normalize(t): i for i, t in zip(heldout["id"], heldout["text"])}
    for r in rows:
        r = {**r, "id": row_id(r["text"])}
        key = normalize(r["text"])
        if not key:
            dropped.append({**r, "reason": "empty_text", "detail": "no text"})
        elif key in seen:
            dropped.append({**r, "reason": "duplicate_text", "detail": f"same normalized text as {seen[key]}"})
        elif key in held:
            dropped.append({**r, "reason": "heldout_contamination", "detail": f"held-out row {held[key]} (exact copy)"})
        else:
            seen[key] = r["id"]
            kept.append(r)
    return kept, dropped


def _decontaminated(rows: list[dict], need: int, spec: TaskSpec, heldout: datasets.Dataset) -> tuple[list[dict], list[dict]]:
    """The first `need` rows (in shuffled order) with no n-gram / embedding overlap with the locked rows
    (curation/decontam.py, what curate and the train gate check), and the overlapping rows met on the
    way. Checked in batches, so a traffic log of millions of rows costs what the rows taken cost."""
    clean, dropped, i = [], [], 0
    c = spec.curation
    embedder = None
    if c.decontamination.cosine is not None and len(heldout):
        from curation.embed import Embedder

        embedder = Embedder(c.embeddings.model, batch_size=c.embeddings.batch_size, threads=c.embeddings.threads)
    while len(clean) < need and i < len(rows):
        batch = rows[i:i + max(2 * (need - len(clean)), 64)]
        i += len(batch)
        leaks: dict[str, list[str]] = {}
        for d in decontam.find_contamination([r["text"] for r in batch], [r["id"] for r in batch], heldout, c, embedder):
            what = "n-gram overlap" if d["kind"] == "ngram" else "cosine"
            leaks.setdefault(d["row_id"], []).append(f"held-out row {d['heldout_id']} ({what} {d['score']:.2f})")
        for r in batch:
            if r["id"] in leaks:
                dropped.append({**r, "reason": "heldout_contamination", "detail": "; ".join(leaks[r["id"]])})
            else:
                clean.append(r)
    return clean[:need], dropped


REFERENCE_MAX = 20_000  # real messages a generated row is compared with (a seeded sample beyond it)


def reference_texts(spec: TaskSpec, heldout: datasets.Dataset, exclude: set[str]) -> list[str]:
    """The real messages curate compares generated rows with (`curation.filters.min_traffic_similarity`,
    `max_per_label_keeps: most_traffic_like`):
    this task's slice of the traffic source, distinct, with no exact, n-gram or embedding overlap
    with the locked rows (as the traffic stage checks its rows), and none of `exclude` (the dev
    split: the loop and model selection score on it, so training rows must not be pulled toward
    its texts). A seeded sample of at most REFERENCE_MAX messages."""
    from heldout.formats import task_format

    cfg = spec.traffic
    rows, _ = _distinct(_slice(read_source(cfg, task_format(spec)), cfg, spec.label_names), heldout)
    rows = [r for r in rows if r["text"] not in exclude]
    random.Random(cfg.seed).shuffle(rows)
    clean, _ = _decontaminated(rows, REFERENCE_MAX, spec, heldout)
    if not clean:
        raise TrafficError(f"curation.filters (min_traffic_similarity / max_per_label_keeps): {cfg.source} has no "
                           "usable real message to compare generated rows with (after the dev split and decontamination)")
    return [r["text"] for r in clean]


# ---------------------------------------------------------------- ask the teacher

def label_texts(spec: TaskSpec, endpoint: Endpoint, texts: list[str], out_dir: Path) -> tuple[dict[str, str], dict]:
    """{text: the teacher's answer or `<invalid>`} and the numbers for the manifest: teacher
    agreement's question and cache (agreement.py `ask_answers`), so a text answered there or here
    gets the same answer; rows already in RUN/traffic/labels.jsonl are not asked again."""
    def failed(done: int, total: int, reason: str) -> Exception:
        return TrafficLabelFailed(f"traffic: the teacher failed after labelling {done} of {total} rows ({reason}); "
                                  "the labels so far are cached: rerun traffic to finish")

    distinct = len(set(texts))
    answers, asked = agreement.ask_answers(spec, endpoint, texts, out_dir / CACHE, failed, "traffic: teacher answers")
    if asked["asked_now"]:
        console.print(f"traffic: the teacher labelled {asked['asked_now']} row(s) ({asked['cached']} cached)")
    labels = spec.label_names
    got = {t: a if (a in labels if labels else a != INVALID) else INVALID for t, a in answers.items()}
    info = {"model": endpoint.model, "rows": distinct, "asked_now": asked["asked_now"], "cached": asked["cached"],
            "tokens": asked["tokens"], "seconds": asked["seconds"]}
    return got, info


# ---------------------------------------------------------------- the stage

def _check_task(spec: TaskSpec, fmt) -> None:
    """One line for a traffic block this task cannot use (before anything is read or asked)."""
    cfg = spec.traffic
    if getattr(spec, "multi_label", False):
        raise TrafficError(f"traffic: multi-label classification cannot learn from teacher-labelled traffic yet "
                           f"('{spec.name}': the label question asks for one label); remove the traffic block")
    if not fmt.has_labels:
        for field, set_ in (("labels", cfg.labels is not None), ("label_map", bool(cfg.label_map))):
            if set_:
                raise TrafficError(f"traffic.{field}: only for tasks with labels ('{spec.name}' is {fmt.type}: "
                                   "its traffic has no label slice to pick)")
    if cfg.dev_labels == "gold" and not fmt.heldout_has_target:
        raise TrafficError(f"traffic.dev_labels: gold needs reference answers, and {fmt.type} tasks have none "
                           "(use dev_labels: teacher)")


def _forget(d: Path) -> None:
    """No traffic in the spec: what an earlier spec left here must not reach curate or eval (the
    teacher's cached answers stay, for when traffic is switched back on)."""
    (d / MANIFEST).unlink(missing_ok=True)
    for name in ("rows", "dev", "dropped"):
        shutil.rmtree(d / name, ignore_errors=True)


def _agreement(pairs: list[tuple[str | None, str]], labels: list[str]) -> dict | None:
    """Teacher vs gold over rows with a gold task label and a valid teacher answer."""
    valid = [(g, t) for g, t in pairs if g in labels and t in labels]
    if not valid:
        return None
    agree = sum(g == t for g, t in valid)
    return {"rows": len(valid), "agree": agree, "rate": round(agree / len(valid), 4)}


def _answer_agreement(pairs: list[tuple[str | None, str]], schema: dict | None) -> dict | None:
    """Teacher vs gold JSON answers over rows with a gold answer and a valid teacher answer: exact
    match and micro field-F1 (heldout/extraction_score.py, values folded, null == absent)."""
    from heldout.extraction_score import score

    valid = [(json.loads(g), t) for g, t in pairs if g and t and t != INVALID]
    if not valid or schema is None:
        return None
    s = score([t for _, t in valid], [g for g, _ in valid], schema, n_boot=200)["raw"]
    return {"rows": len(valid), "agree": round(s["exact_match"] * len(valid)), "rate": s["exact_match"],
            "exact_match": s["exact_match"], "micro_f1": s["micro_f1"]}


def _vs_gold(fmt, spec: TaskSpec, pairs: list[tuple[str | None, str]]) -> dict | None:
    """The teacher's agreement with gold as the task measures it: labels agree, answers match."""
    if fmt.has_labels:
        return _agreement(pairs, spec.label_names)
    return _answer_agreement(pairs, fmt.answer_request_schema()) if fmt.heldout_has_target else None


def traffic_stage(spec: TaskSpec, run: Path, endpoint: Endpoint | None) -> dict:
    """Real traffic → RUN/traffic/{rows,dev,dropped}; skipped when the spec has no `traffic` block
    or nothing changed (same source rows, settings, task, teacher and held-out lock)."""
    from distilforge.stage import scoped

    spec = scoped(spec, "traffic")  # only the spec blocks PIPELINE declares for this stage
    from heldout.lock import load_locked, read_lock

    r = Run(run)
    cfg = spec.traffic
    if cfg is None:
        _forget(r.traffic)
        console.print(f"traffic: {SKIPPED}")
        return {"skipped": SKIPPED}
    from heldout.formats import task_format

    fmt = task_format(spec)
    _check_task(spec, fmt)
    if endpoint is None:
        raise TrafficError("traffic: the teacher labels the traffic rows; no teacher endpoint was given")
    source = read_source(cfg, fmt)
    t = spec.teacher
    config = {"traffic": semantic_dump(cfg), "source_rows_sha256": sha256_json(source), "labels": spec.label_names,
              "system": spec.system_prompt(), "teacher": {"model": t.model, "endpoint": t.endpoint,
                                                          "base_url": t.base_url, "structured_output": t.structured_output},
              "decontamination": semantic_dump(spec.curation.decontamination),
              "embeddings": spec.curation.embeddings.model}
    if not fmt.has_labels:  # what an answer is validated against (a label set is in `labels`)
        config.update(type=fmt.type, answer_schema=fmt.answer_request_schema(), max_tokens=t.max_tokens)
    st = Stage(r.traffic, "traffic", {"heldout": read_lock(r.heldout)["sha256"]}, config)
    if st.is_current():
        console.print("traffic: inputs unchanged, skipped")
        return read_manifest(st.dir)
    st.begin()
    in_slice = _slice(source, cfg, spec.label_names)
    heldout = load_locked(r.heldout)
    distinct, dropped = _distinct(in_slice, heldout)
    random.Random(cfg.seed).shuffle(distinct)
    clean, leaked = _decontaminated(distinct, cfg.dev_rows + cfg.max_rows, spec, heldout)
    dropped += leaked
    dev, train = clean[:cfg.dev_rows], clean[cfg.dev_rows:]
    # gold dev labels need no teacher answer (the teacher's agreement with gold is then measured on
    # the training rows, whose gold labels are the slice filter's)
    asked = (dev if cfg.dev_labels == "teacher" else []) + train
    answers, teacher = label_texts(spec, endpoint, [x["text"] for x in asked], st.dir)
    answers.update({x["text"]: answers.get(x["text"]) for x in dev})  # gold dev rows: None (not asked)
    unusable = "is not a label" if fmt.has_labels else "is unusable (no valid answer for the task's format)"
    rows, dev_rows = [], []
    for x in train:
        lab = answers[x["text"]]
        if lab == INVALID:
            dropped.append({**x, "reason": "teacher_invalid", "detail": f"training row: the teacher's answer {unusable}"})
        else:
            rows.append(_row(spec, endpoint, x, lab))
    for x in dev:
        lab, gold = answers[x["text"]], x["gold"]
        if cfg.dev_labels == "gold" and fmt.has_labels and gold not in spec.label_names:
            raise TrafficError(f"traffic.label_map: dev row {x['id']} has gold label '{gold}', not one of the "
                               "task's labels (map it to one, or use dev_labels: teacher)")
        if cfg.dev_labels == "gold" and not gold:
            raise TrafficError(f"traffic.label_column: dev row {x['id']} has no gold answer in "
                               f"'{cfg.label_column}' (use dev_labels: teacher)")
        if cfg.dev_labels == "teacher" and lab == INVALID:
            dropped.append({**x, "reason": "teacher_invalid", "detail": f"dev row: the teacher's answer {unusable}"})
            continue
        dev_rows.append({"id": x["id"], "text": x["text"], "label": gold if cfg.dev_labels == "gold" else lab,
                         "label_source": cfg.dev_labels, "teacher_label": lab, "gold_label": gold})
    # An empty split is not saved (`datasets` cannot load back a saved empty dataset): no output, no rows.
    if rows:
        st.save("rows", _dataset(rows, row_features()))
    if dev_rows:
        st.save("dev", _dataset(dev_rows, DEV_FEATURES))
    if dropped:
        st.save("dropped", _dataset([{"id": d["id"], "text": d["text"], "gold_label": d["gold"], "reason": d["reason"],
                                      "detail": d["detail"]} for d in dropped], DROP_FEATURES))
    gold_rates = {}
    if cfg.label_column is not None:
        gold_rates = {"train": _vs_gold(fmt, spec, [(x["gold"], answers[x["text"]]) for x in train]),
                      "dev": _vs_gold(fmt, spec, [(x["gold"], answers[x["text"]]) for x in dev])}
    m = st.finish(source=cfg.source, read=len(source), in_slice=len(in_slice), outside_slice=len(source) - len(in_slice),
                  train_rows=len(rows), dev_rows=len(dev_rows), dev_labels=cfg.dev_labels,
                  short={k: n for k, n in (("train", cfg.max_rows - len(train)), ("dev", cfg.dev_rows - len(dev))) if n > 0},
                  dropped=dict(Counter(d["reason"] for d in dropped).most_common()), teacher=teacher,
                  label_distribution=({"train": dict(Counter(x["label"] for x in rows).most_common()),
                                       "dev": dict(Counter(x["label"] for x in dev_rows).most_common())}
                                      if fmt.has_labels else None),
                  teacher_vs_gold=gold_rates or None)
    agree = (gold_rates.get("dev") or {}).get("rate")
    console.print(f"traffic: {len(rows)} training + {len(dev_rows)} dev rows from {len(in_slice)} in the slice "
                  f"({len(dropped)} dropped: {m['dropped'] or 'none'}); teacher asked {teacher['asked_now']}"
                  + (f"; teacher agrees with gold on {100 * agree:.1f} % of dev rows" if agree is not None else ""))
    return m


def row_features() -> datasets.Features:
    """Generate's row columns plus `teacher_label` (imported here: generate pulls in distilabel)."""
    from curation.generation.generate import ROW_FEATURES

    return datasets.Features({**ROW_FEATURES, agreement.COLUMN: datasets.Value("string")})


def _row(spec: TaskSpec, endpoint: Endpoint, x: dict, answer: str) -> dict:
    """One training row with generate's columns: curate's schema check, filters and dedup read it as they read a
    generated one. `answer` is the teacher's: the row's label for a type with labels (else `label` is ""),
    and its completion through the format (`completion_text`). Tokens are the stage's (manifest
    `teacher.tokens`), not split per row."""
    label = answer if spec.label_names else ""
    return {"id": x["id"], "label": label, "text": x["text"], "prompt": spec.student_prompt(x["text"]),
            "completion": [{"role": "assistant", "content": formats.completion_text(spec, label, answer)}],
            "strategy": STRATEGY, "attributes": None, "parent_id": None, "teacher_model": endpoint.model,
            "endpoint": endpoint.base_url, "prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0,
            "cost_usd": 0.0, "attempts": 1, "status": "ok", "error": None, agreement.COLUMN: answer}


def _dataset(rows: list[dict], feats: datasets.Features) -> datasets.Dataset:
    if not rows:  # from_list([]) loses the schema
        return datasets.Dataset.from_dict({k: [] for k in feats}, features=feats)
    return datasets.Dataset.from_list([{k: r.get(k) for k in feats} for r in rows], features=feats)


# ---------------------------------------------------------------- what curate and eval read

def _output(run: Path, key: str) -> tuple[datasets.Dataset, str] | None:
    d = Run(run).traffic
    m = read_manifest(d)
    if not m or key not in (m.get("outputs") or {}):
        return None
    return verified_output(d, key, f"distilforge traffic {run}")


def traffic_rows(run: Path) -> tuple[datasets.Dataset, str] | None:
    """(training rows, hash) when the traffic stage wrote them, re-hashed (an edit is refused)."""
    return _output(run, "rows")


def dev_split(run: Path) -> tuple[datasets.Dataset, str] | None:
    """(dev rows, hash) when the traffic stage wrote a dev split."""
    return _output(run, "dev")


def with_traffic(raw: datasets.Dataset, extra: datasets.Dataset) -> datasets.Dataset:
    """Generate's rows, then the traffic rows, in one dataset: a column only one side has is None on
    the other (generated rows without teacher agreement have no `teacher_label`)."""
    feats = datasets.Features({**extra.features, **raw.features})
    order = list(raw.column_names) + [c for c in extra.column_names if c not in raw.column_names]

    def full(ds: datasets.Dataset) -> datasets.Dataset:
        for c in order:
            if c not in ds.column_names:
                ds = ds.add_column(c, [None] * len(ds), feature=feats[c])
        return ds.select_columns(order).cast(datasets.Features({c: feats[c] for c in order}))

    return datasets.concatenate_datasets([full(raw), full(extra)])
