"""`distilforge review pull RUN`: every curator response, from every user, into `RUN/review/reviews`.

One row per (record, user) response, whatever its status: submitted, draft and discarded rows are
all kept, marked as such, so nothing a curator did is lost and `export` decides what counts. Each
row carries what the curator saw (the record's fields at review time), the values of every
question (typed columns plus the raw JSON, for questions added later), the teacher-judge's
suggestions and the record's metadata, so exports and blind-spot analysis work from the files
alone. Read through the REST list endpoint (the SDK drops response timestamps and turns an empty
discard into nothing).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import datasets

from distilforge.layout import Run
from distilforge.manifest import save_dataset
from labeling.push import (CORRECTED, DECISION, FORMATS, LABEL, RATING, REASONS, ReviewError, _first_line,
                           connect_checked, dataset_name, read_push_state, row_id, update_review_manifest)

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec

FEATURES = datasets.Features({
    "id": datasets.Value("string"), "record_id": datasets.Value("string"), "format": datasets.Value("string"),
    "record_status": datasets.Value("string"),
    "user_id": datasets.Value("string"), "user": datasets.Value("string"), "status": datasets.Value("string"),
    "decision": datasets.Value("string"), "rating": datasets.Value("int64"), "corrected": datasets.Value("string"),
    "label_answer": datasets.Value("string"), "reject_reasons": datasets.Sequence(datasets.Value("string")),
    "values": datasets.Value("string"),
    "reviewed_text": datasets.Value("string"), "reviewed_completion": datasets.Value("string"),
    "suggested_decision": datasets.Value("string"), "suggested_rating": datasets.Value("int64"),
    "suggested_label": datasets.Value("string"), "suggestion_score": datasets.Value("float64"),
    "suggestion_agent": datasets.Value("string"),
    "meta_label": datasets.Value("string"), "meta_strategy": datasets.Value("string"),
    "meta_cluster": datasets.Value("string"), "meta_coverage_gap": datasets.Value("string"),
    "inserted_at": datasets.Value("string"), "updated_at": datasets.Value("string"),
})


def _value(values: dict, name: str):
    v = (values or {}).get(name)
    return v.get("value") if isinstance(v, dict) else None


def _label_text(v) -> Optional[str]:
    if v is None:
        return None
    return ", ".join(sorted(v)) if isinstance(v, list) else str(v)


def record_rows(item: dict, fmt: str, qnames: dict[str, str], users: dict[str, str]) -> list[dict]:
    """The response rows of one REST record item (`include=responses,suggestions`)."""
    fields, md = item.get("fields") or {}, item.get("metadata") or {}
    sugg = {qnames.get(s["question_id"], s["question_id"]): s for s in item.get("suggestions") or []}
    first = sugg.get(DECISION) or sugg.get(LABEL) or {}
    base = {"id": row_id(str(item["external_id"])), "record_id": str(item["external_id"]), "format": fmt,
            "record_status": item.get("status"),
            "reviewed_text": fields.get("text", fields.get("prompt")),
            "reviewed_completion": fields.get("completion", fields.get("chosen")),
            "suggested_decision": (sugg.get(DECISION) or {}).get("value"),
            "suggested_rating": (sugg.get(RATING) or {}).get("value"),
            "suggested_label": _label_text((sugg.get(LABEL) or {}).get("value")),
            "suggestion_score": first.get("score"), "suggestion_agent": first.get("agent"),
            "meta_label": md.get("label"), "meta_strategy": md.get("strategy"),
            "meta_cluster": None if md.get("cluster") is None else str(md.get("cluster")),
            "meta_coverage_gap": md.get("coverage_gap")}
    out = []
    for r in item.get("responses") or []:
        values = r.get("values") or {}
        corrected = _value(values, CORRECTED)
        rating = _value(values, RATING)
        out.append({**base, "user_id": str(r["user_id"]), "user": users.get(str(r["user_id"]), str(r["user_id"])),
                    "status": r["status"], "decision": _value(values, DECISION),
                    "rating": int(rating) if rating is not None else None,
                    "corrected": corrected.strip() if isinstance(corrected, str) and corrected.strip() else None,
                    "label_answer": _label_text(_value(values, LABEL)),
                    "reject_reasons": list(_value(values, REASONS) or []),
                    "values": json.dumps(values, sort_keys=True, ensure_ascii=False),
                    "inserted_at": r.get("inserted_at"), "updated_at": r.get("updated_at")})
    return out


def fetch(client, dataset, fmt: str, page: int = 200) -> tuple[list[dict], int]:
    """(response rows, records in the dataset) for one Argilla dataset."""
    http = client.http_client
    qs = http.get(f"/api/v1/datasets/{dataset.id}/questions").raise_for_status().json()["items"]
    qnames = {q["id"]: q["name"] for q in qs}
    try:
        users = {str(u.id): u.username for u in client.users}
    except Exception:  # a non-owner key may not list users: keep ids
        users = {}
    rows, offset, total = [], 0, 0
    while True:
        got = http.get(f"/api/v1/datasets/{dataset.id}/records",
                       params={"include": ["responses", "suggestions"], "offset": offset, "limit": page})
        body = got.raise_for_status().json()
        items = body["items"]
        total = body.get("total", offset + len(items))
        for item in items:
            rows.extend(record_rows(item, fmt, qnames, users))
        offset += len(items)
        if len(items) < page:
            return rows, total


def pull_run(run: Path, spec: TaskSpec, *, api_url: Optional[str] = None, api_key: Optional[str] = None,
             data_dir: Optional[Path] = None, workspace: Optional[str] = None, prefix: Optional[str] = None) -> dict:
    """Write RUN/review/reviews; returns counts per format and status."""
    run = Path(run)
    state = read_push_state(run)
    client, url, _ = connect_checked(api_url, api_key, data_dir)
    ws_name = workspace or state.get("workspace")
    rows: list[dict] = []
    counts: dict = {}
    for fmt in FORMATS:
        name = (state.get("datasets", {}).get(fmt) or {}).get("name") or dataset_name(spec, run, fmt, prefix)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = client.datasets(name=name, workspace=ws_name) if ws_name else client.datasets(name=name)
            except Exception as e:
                raise ReviewError(f"cannot look up dataset '{name}' at {url} ({_first_line(e)})") from None
        if ds is None:
            if fmt == "sft":
                raise ReviewError(f"no Argilla dataset '{name}' at {url}: run `distilforge review push {run}` first")
            continue
        try:
            got, total = fetch(client, ds, fmt)
        except Exception as e:
            raise ReviewError(f"pull from {url} failed for '{name}' ({_first_line(e)}); nothing was written") from None
        rows.extend(got)
        by_status: dict[str, int] = {}
        for r in got:
            by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        counts[fmt] = {"dataset": name, "records": total, "responses": len(got),
                       "reviewed_records": len({r["record_id"] for r in got if r["status"] == "submitted"}),
                       "users": len({r["user_id"] for r in got}), "by_status": by_status}
    ds_out = datasets.Dataset.from_list(rows, features=FEATURES) if rows else \
        datasets.Dataset.from_dict({k: [] for k in FEATURES}, features=FEATURES)
    h = save_dataset(ds_out, Run(run).reviews)
    sft = counts.get("sft", {})
    update_review_manifest(run, outputs={"reviews": {"path": "reviews", "rows": len(ds_out), "sha256": h}},
                           reviewed=sft.get("reviewed_records"), pull=counts)
    return counts
