"""`distilforge review push RUN`: curated rows (and teacher preference pairs) → Argilla datasets.

One Argilla dataset per run and format: `sft` (curated rows: input text + the teacher's answer) and
`prefs` (prompt + chosen + rejected, when `generate/prefs` exists). Curators answer the same
questions on both: accept/reject (required), a 1-5 rating, a corrected completion, and reject
reasons; classification tasks also get the label itself as a question, pre-filled with the teacher's
label. Metadata (label, strategy, judge score, dedup cluster size, coverage gap, cluster, token
counts) lets curators filter; a vector field with the cached all-MiniLM-L6-v2 embedding enables
"find similar" in the UI.

Idempotent by construction: the Argilla record id is derived from the row's id and a hash of what
the curator reads (`g-….<hash>`), and every batch is a bulk *upsert*, so pushing twice, or again
after a crash, updates records in place and never duplicates them. Responses are never sent, so a
re-push cannot touch what curators did. A row whose text or answer changed gets a new record; the
old one is removed unless someone answered it (then it stays, and export ignores it as stale).
The schema is checked before anything is written: an existing dataset with other questions, labels,
metadata or vectors fails with one line instead of half-updating. A dataset left in draft by a crash
during creation holds no records and is recreated.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from distilforge.atomic import atomic_write_json
from distilforge.layout import Run
from distilforge.manifest import load_dataset_dir, read_manifest
from distilforge.errors import RuntimeFailure, UserError
from heldout.formats import task_format

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec

DECISION, LABEL, RATING, CORRECTED, REASONS = "decision", "correct_label", "rating", "corrected", "reject_reason"
REJECT_REASONS = {"wrong_label": "Wrong label", "off_topic": "Off-topic", "unnatural": "Unnatural",
                  "duplicate": "Duplicate", "unsafe": "Unsafe", "other": "Other"}
FORMATS = ("sft", "prefs")


class ReviewError(RuntimeFailure, RuntimeError):
    """Argilla could not do its part (unreachable, no key for it, a dataset with another schema, a
    push cut short): one line, rc 1. Bad options and missing upstream outputs are ReviewInputError."""


class ReviewInputError(UserError, ValueError):
    """A review command was given something it cannot use (an option value, a run without the
    stage output it reads, nothing to review or approve): one line, rc 2."""


# ---------------------------------------------------------------- naming and state

def dataset_name(spec: TaskSpec, run: Path, fmt: str, prefix: Optional[str] = None) -> str:
    """`<task>-<run dir>-<format>`, restricted to characters Argilla accepts in names."""
    base = prefix or f"{spec.name}-{Path(run).resolve().name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{base}-{fmt}")[:190]


def read_push_state(run: Path) -> dict:
    p = Run(run).push_json
    return json.loads(p.read_text()) if p.exists() else {}


def update_review_manifest(run: Path, **keys) -> dict:
    """Read-modify-write RUN/review/manifest.json (the report reads pushed/reviewed/approved/rejected)."""
    d = Run(run).review
    m = read_manifest(d) or {"stage": "review", "outputs": {}, "pushed": None, "reviewed": None,
                             "approved": None, "rejected": None}
    m.update(keys)
    m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(d / "manifest.json", m)
    return m


# ---------------------------------------------------------------- schema

def guidelines(spec: TaskSpec, fmt: str) -> str:
    """Curator guidelines (markdown) written from the task spec, so they always match the task."""
    lines = [f"# Review: {spec.name} ({'preference pairs' if fmt == 'prefs' else 'training rows'})", "",
             "The rows below were written by a teacher model. Approved rows become the student's training "
             "data; nothing you reject is trained on.", "", "## The task the student must learn", "",
             spec.instruction.strip(), ""]
    task = task_format(spec)
    lines += task.guideline_lines()  # labels, the answer's JSON schema or the style guide
    what = ("whether **chosen** is a correct answer and clearly better than **rejected**" if fmt == "prefs"
            else "whether the message is something a real user would write and the answer is right")
    lines += ["## How to review", "",
              f"1. **decision** (required): accept or reject — {what}.",
              "2. **rating**: 1 (useless) to 5 (perfect example).",
              "3. **corrected**: if the answer is wrong but the input is good, type the right answer and "
              "*accept*: the corrected answer replaces the teacher's."
              + task.correction_hint(),
              f"4. **{REASONS}**: when rejecting, tick every reason that applies "
              f"({', '.join(REJECT_REASONS.values()).lower()}).", ""]
    if task.label_question() is not None and fmt == "sft":
        lines += [f"The **{LABEL}** question is pre-filled with the teacher's label; changing it is a correction.", ""]
    lines += ["Suggestions come from the teacher judging itself (agent = the teacher model): treat them as a "
              "hint, not an answer. Use the metadata filters (label, strategy, coverage_gap, cluster) to "
              "review one region at a time.", ""]
    return "\n".join(lines)


def build_settings(spec: TaskSpec, fmt: str, dim: int):
    """The rg.Settings for one format (needs a connected client: the SDK resolves a default one)."""
    import argilla as rg

    if fmt == "prefs":
        fields = [rg.TextField(name="prompt", title="Input"), rg.TextField(name="chosen", title="Chosen answer"),
                  rg.TextField(name="rejected", title="Rejected answer")]
    else:
        fields = [rg.TextField(name="text", title="Input"),
                  rg.TextField(name="completion", title="Teacher's answer")]
    questions = [rg.LabelQuestion(name=DECISION, title="Keep this row?", required=True,
                                  labels={"accept": "Accept", "reject": "Reject"})]
    lq = task_format(spec).label_question()  # classification: the label, pre-filled with the teacher's
    if lq is not None and fmt == "sft":
        kind = rg.MultiLabelQuestion if lq["multi"] else rg.LabelQuestion
        questions.append(kind(name=LABEL, title="Label", labels=list(lq["labels"]), required=False))
    questions += [rg.RatingQuestion(name=RATING, title="Quality", values=[1, 2, 3, 4, 5], required=False),
                  rg.TextQuestion(name=CORRECTED, title="Corrected answer (leave empty if right)", required=False),
                  rg.MultiLabelQuestion(name=REASONS, title="Reject reasons", labels=dict(REJECT_REASONS),
                                        required=False)]
    metadata = [rg.TermsMetadataProperty(name="label", options=list(spec.label_names) or None),
                rg.TermsMetadataProperty(name="strategy"),
                rg.FloatMetadataProperty(name="judge_score"),
                rg.IntegerMetadataProperty(name="dedup_cluster_size"),
                rg.TermsMetadataProperty(name="coverage_gap", options=["yes", "no"]),
                rg.TermsMetadataProperty(name="cluster"),
                rg.IntegerMetadataProperty(name="prompt_tokens"),
                rg.IntegerMetadataProperty(name="completion_tokens")]
    if lq is not None and lq["multi"]:
        metadata[0] = rg.TermsMetadataProperty(name="label")  # "a, b" values are not in the option list
    return rg.Settings(fields=fields, questions=questions, metadata=metadata,
                       vectors=[rg.VectorField(name="embedding", title="all-MiniLM-L6-v2", dimensions=dim)],
                       guidelines=guidelines(spec, fmt))


def signature(settings) -> dict[str, dict]:
    """What must match for records and responses to mean the same thing (guidelines may change)."""
    def q(x):
        return [x.type, list(getattr(x, "labels", None) or getattr(x, "values", None) or [])]

    def m(x):
        s = x.api_model().settings
        return [s.type, list(getattr(s, "values", None) or [])]

    return {"field": {f.name: [f.type] for f in settings.fields},
            "question": {x.name: q(x) for x in settings.questions},
            "metadata": {x.name: m(x) for x in settings.metadata},
            "vector": {v.name: [v.dimensions] for v in settings.vectors}}


def schema_diff(have: dict, want: dict) -> str:
    """'' when equal, else a short list of differences ("question 'label' differs; vector 'e' missing")."""
    out = []
    for part in want:
        for name in sorted(set(have.get(part, {})) | set(want[part])):
            a, b = have.get(part, {}).get(name), want[part].get(name)
            if a != b:
                out.append(f"{part} '{name}' " + ("missing" if a is None else "not expected" if b is None else
                                                   f"is {a} (now {b})"))
    return "; ".join(out[:4]) + (f" (+{len(out) - 4} more)" if len(out) > 4 else "")


# ---------------------------------------------------------------- records

def _num(v) -> Optional[float]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def _content(msgs) -> str:
    """Text of a chat-format column ([{role, content}]); plain strings pass through."""
    if isinstance(msgs, list):
        return "\n".join(str(m.get("content", "")) for m in msgs if m.get("role") != "system")
    return "" if msgs is None else str(msgs)


def _clusters(run: Path) -> dict[str, dict]:
    """Per synthetic row id: {'cluster', 'gap'} from `blindspots` (empty before it ran)."""
    p = Run(run).row_clusters
    return json.loads(p.read_text()).get("rows", {}) if p.exists() else {}


def _metadata(row: dict, where: Optional[dict]) -> dict:
    md = {"label": row.get("label"), "strategy": row.get("strategy") or row.get("kind"),
          "judge_score": _num(row.get("judge_score", row.get("margin"))),
          "dedup_cluster_size": row.get("dedup_cluster_size"),
          "prompt_tokens": row.get("prompt_tokens"), "completion_tokens": row.get("completion_tokens")}
    if where:
        md.update(coverage_gap="yes" if where.get("gap") else "no", cluster=str(where.get("cluster")))
    return {k: v for k, v in md.items() if v not in (None, "")}


def suggestions(spec: TaskSpec, row: dict) -> list:
    """Teacher-judge suggestions: decision/rating from `judge_score` (share of the teacher's own
    answers agreeing with the row, 0..1), the label from the teacher; agent = the teacher model."""
    import argilla as rg

    agent = row.get("teacher_model") or spec.teacher.model
    score = _num(row.get("judge_score"))
    out = []
    if score is not None:
        threshold = spec.curation.filters.judge_min_score if spec.curation.filters.judge_min_score is not None else 0.5
        accept = score >= threshold
        out += [rg.Suggestion(DECISION, "accept" if accept else "reject", agent=agent, type="model",
                              score=round(score if accept else 1 - score, 4)),
                rg.Suggestion(RATING, 1 + int(round(4 * score)), score=round(score, 4), agent=agent, type="model")]
    label = task_format(spec).suggested_labels(row) if "completion" in row else None
    if label:
        out.append(rg.Suggestion(LABEL, label, score=score, agent=agent, type="model"))
    return out


def record_id(row: dict, fields: dict) -> str:
    """`<row id>.<content hash>`: the same row pushed again updates its record; a row whose text or
    answer changed becomes a new record, so an old review never silently applies to new content."""
    blob = "\0".join(f"{k}={fields[k]}" for k in sorted(fields))
    return f"{row['id']}.{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def row_id(record_id: str) -> str:
    return record_id.rsplit(".", 1)[0]


def row_fields(fmt: str, row: dict) -> dict:
    if fmt == "prefs":
        return {"prompt": _content([m for m in row["prompt"] if m.get("role") == "user"]),
                "chosen": _content(row["chosen"]), "rejected": _content(row["rejected"])}
    return {"text": row["text"], "completion": _content(row["completion"])}


def build_records(spec: TaskSpec, fmt: str, rows, vectors, where: dict) -> list:
    import argilla as rg

    out = []
    for row, vec in zip(rows, vectors):
        fields = row_fields(fmt, row)
        sugg = [] if fmt == "prefs" else suggestions(spec, row)
        md = _metadata(row, where.get(row.get("source_id") or row["id"]))
        out.append(rg.Record(id=record_id(row, fields), fields=fields, metadata=md,
                             vectors={"embedding": [float(x) for x in vec]}, suggestions=sugg))
    return out


def load_rows(run: Path) -> dict[str, list[dict]]:
    """{format: rows}: curated rows (required) and teacher preference pairs (when generated)."""
    run = Path(run)
    r = Run(run)
    if not read_manifest(r.curate):
        raise ReviewInputError(f"{r.curate / 'manifest.json'} not found: run `distilforge curate {run}` first")
    out = {"sft": list(load_dataset_dir(r.curated))}
    gen = read_manifest(r.generate) or {}
    if "prefs" in gen.get("outputs", {}) and r.generated_prefs.exists():
        out["prefs"] = list(load_dataset_dir(r.generated_prefs))
    if not out["sft"]:
        raise ReviewInputError(f"{r.curated} has no rows: nothing to review")
    return out


# ---------------------------------------------------------------- Argilla side

def _first_line(e: Exception) -> str:
    cause = e.__cause__ or e
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:160]}" if text else type(cause).__name__


def connect_checked(api_url: Optional[str], api_key: Optional[str], data_dir: Optional[Path]):
    """(client, url, me) for the resolved server; one-line ReviewError when it cannot be used.

    A URL without a key only goes with the embedded server's own key when it is that server:
    the local owner key is never sent to another host."""
    import os

    from labeling.client import ENV_KEY, ArgillaConnectionError, connect, resolve_connection
    from labeling.server import control

    if api_url and not api_key and not os.environ.get(ENV_KEY):
        local = (control.read_state(data_dir) or {}).get("url") or ""
        if api_url.rstrip("/") != local.rstrip("/"):
            raise ReviewError(f"no API key for {api_url.rstrip('/')}: pass --api-key or set {ENV_KEY}")
    try:
        url, key = resolve_connection(api_url, api_key, data_dir)
    except ArgillaConnectionError as e:
        raise ReviewError(str(e)) from None
    try:
        client = connect(url, key)
        return client, url, client.me  # fails fast on a wrong key or an unreachable server
    except Exception as e:
        raise ReviewError(f"cannot reach Argilla at {url} ({_first_line(e)}); is it running? "
                          "(`distilforge review status`)") from None


def _workspace(client, name: Optional[str]):
    import argilla as rg

    if name:
        ws = client.workspaces(name)
        if ws is None:
            ws = rg.Workspace(name=name, client=client).create()
        return ws
    found = list(client.workspaces)
    return found[0] if found else rg.Workspace(name="distilforge", client=client).create()


def ensure_dataset(client, name: str, workspace, settings):
    """(dataset, created). Fails before writing anything when the existing schema differs."""
    import argilla as rg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dataset not found" is the normal first-push case
        existing = client.datasets(name=name, workspace=workspace)
    if existing is not None and getattr(existing._model, "status", "ready") != "ready":
        existing.delete()  # a draft left by a crash during creation: no records, nothing to lose
        existing = None
    if existing is not None:
        diff = schema_diff(signature(existing.settings), signature(settings))
        if diff:
            raise ReviewError(f"Argilla dataset '{name}' exists with a different schema ({diff}); nothing was "
                              "pushed. Push under another name with --dataset, or delete it in Argilla "
                              "(its responses go with it)")
        if (existing.settings.guidelines or "") != settings.guidelines:
            existing.settings.guidelines = settings.guidelines
            existing.update()
        return existing, False
    try:
        return rg.Dataset(name=name, settings=settings, workspace=workspace, client=client).create(), True
    except Exception as e:  # the SDK has already deleted the half-made (draft) dataset
        raise ReviewError(f"creating Argilla dataset '{name}' failed: {_first_line(e)}") from None


def existing_records(client, dataset, page: int = 500) -> dict[str, tuple[str, int]]:
    """{external id: (server id, number of responses)} of every record in the dataset."""
    out: dict[str, tuple[str, int]] = {}
    while True:
        body = client.http_client.get(f"/api/v1/datasets/{dataset.id}/records",
                                      params={"include": ["responses"], "offset": len(out), "limit": page})
        items = body.raise_for_status().json()["items"]
        out.update((str(it["external_id"]), (it["id"], len(it.get("responses") or []))) for it in items)
        if len(items) < page:
            return out


def upsert(client, dataset, records: list, batch_size: int, url: str,
           on_batch: Optional[Callable[[int, int], None]] = None, progress: bool = True) -> dict:
    """Bulk-upsert in batches (one request each, so counts are exact after a failure)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    before = existing_records(client, dataset)
    done = 0
    from rich.console import Console

    with Progress(TextColumn("push {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not progress, transient=False) as bar:
        task = bar.add_task(dataset.name, total=len(records))
        for i in range(0, len(records), batch_size):
            batch = records[i:i + batch_size]
            for r in batch:
                r.dataset = dataset
            try:
                client.api.records.bulk_upsert(dataset_id=dataset.id, records=[r.api_model() for r in batch])
            except Exception as e:  # connection refused, 5xx, timeout: one line, what is safe to do
                raise ReviewError(f"push to {url} stopped after {done}/{len(records)} records of '{dataset.name}' "
                                  f"({_first_line(e)}); records sent are kept, rerun push to finish "
                                  "(it updates in place)") from None
            done += len(batch)
            bar.update(task, advance=len(batch))
            if on_batch:
                on_batch(done, len(records))
    wanted = {r.id for r in records}
    created = len(wanted - set(before))
    # Records whose row changed or left the curated set: dropped unless a curator answered them.
    stale = {rid: v for rid, v in before.items() if rid not in wanted}
    drop = [sid for sid, n in stale.values() if n == 0]
    for i in range(0, len(drop), 100):
        client.http_client.delete(f"/api/v1/datasets/{dataset.id}/records",
                                  params={"ids": ",".join(drop[i:i + 100])}).raise_for_status()
    return {"records": done, "created": created, "updated": done - created, "removed_stale": len(drop),
            "kept_stale_with_responses": len(stale) - len(drop), "in_dataset": len(before) + created - len(drop)}


def push_run(run: Path, spec: TaskSpec, *, api_url: Optional[str] = None, api_key: Optional[str] = None,
             data_dir: Optional[Path] = None, workspace: Optional[str] = None, prefix: Optional[str] = None,
             batch_size: int = 50, formats: tuple = FORMATS, on_batch=None, progress: bool = True,
             embedder=None) -> dict:
    """Push every format the run has; returns and records (RUN/review/push.json) what was pushed."""
    run = Path(run)
    if batch_size < 1:
        raise ReviewInputError(f"--batch-size must be >= 1 (got {batch_size})")
    rows = {f: r for f, r in load_rows(run).items() if f in formats}
    client, url, me = connect_checked(api_url, api_key, data_dir)
    if embedder is None:
        from curation.embed import Embedder

        embedder = Embedder(spec.curation.embeddings.model)
    where = _clusters(run)
    state = read_push_state(run)
    ws = _workspace(client, workspace or state.get("workspace"))
    state.update(api_url=url, workspace=ws.name, user=me.username)
    state.setdefault("datasets", {})
    # Every schema is checked before any format is written, so a bad one leaves all untouched.
    plans = []
    for fmt, frows in rows.items():
        # the input the curator reads (for prefs the user message, not the shared system prompt)
        texts = [row_fields(fmt, r)["prompt" if fmt == "prefs" else "text"] for r in frows]
        vecs = embedder.encode(texts)
        settings = build_settings(spec, fmt, int(vecs.shape[1]))
        earlier = (state.get("datasets", {}).get(fmt) or {}).get("name")  # a rerun keeps the first push's name
        name = dataset_name(spec, run, fmt, prefix) if prefix or not earlier else earlier
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            existing = client.datasets(name=name, workspace=ws)
        if existing is not None and getattr(existing._model, "status", "ready") == "ready":
            diff = schema_diff(signature(existing.settings), signature(settings))
            if diff:
                raise ReviewError(f"Argilla dataset '{name}' exists with a different schema ({diff}); nothing was "
                                  "pushed. Push under another name with --dataset, or delete it in Argilla "
                                  "(its responses go with it)")
        plans.append((fmt, frows, vecs, settings, name))
    report = {}
    for fmt, frows, vecs, settings, name in plans:
        dataset, created = ensure_dataset(client, name, ws, settings)
        state["datasets"][fmt] = {"name": name, "id": str(dataset.id), "rows": len(frows), "complete": False}
        atomic_write_json(Run(run).push_json, state)  # before records: pull can find a half push
        res = upsert(client, dataset, build_records(spec, fmt, frows, vecs, where), batch_size, url, on_batch, progress)
        state["datasets"][fmt].update(complete=True, pushed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        atomic_write_json(Run(run).push_json, state)
        report[fmt] = {"dataset": name, "created_dataset": created, **res}
    if "sft" in report:
        update_review_manifest(run, pushed=report["sft"]["records"], datasets=state["datasets"], api_url=url)
    return report
