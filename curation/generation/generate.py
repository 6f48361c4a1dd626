"""Generate task rows (and optionally preference pairs) from the teacher with distilabel pipelines.

Why the shard files: distilabel 1.5.3's own cache hangs on resume (upstream #1065), so every
pipeline runs with `use_cache=False` and resumability is ours. Requests are planned up front
with content-derived ids (curation/generation/plan.py), grouped into shards, and the last pipeline step
commits each shard to its own JSONL file (temp file + fsync + hard link) once all its rows are back.
A shard with any transport failure (the openai client gave up after its retries: distilabel then
hands the step `None`) is NOT committed, so the next run asks for it again; garbage answers are
retried `invalid_retries` times and then committed as failed rows with the reason. A rerun after
any interruption (even `kill -9` of the process group) skips committed shards: no row is lost and
none is generated twice. A `kill -9` of the CLI alone takes the pipeline child and its workers with
it (runlock.die_with_parent), and the run lock (distilforge/runlock.py) keeps a second writer out.

Failure is a result: rows the teacher never answered are in `collect()`'s dataset as failed rows
with the reason, and a run with no usable row ends in one line (GenerationFailed, rc 1).

Phases, each one pipeline run (~3 s of distilabel start-up each): `base` (attributes / fewshot /
targeted), `evolve` (rewrites of committed base rows) and `prefs` (judged candidate answers,
curation/generation/judge.py). The first step of each pipeline yields one shard per batch and checks the
spend ledger before each one, so `--max-cost` / `--max-tokens` stop at a shard boundary.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import datasets

from curation import formats
from curation.generation import budget, plan
from curation.generation.gensteps import ValidatedGeneration, commit, committed_shards, last_errors, llm, read_shard, shard_path, to_row
from curation.generation.runner import run_pipeline
from distilforge.spec import TaskSpec
from distilforge.teacher import Endpoint

ROW_FEATURES = formats.features(
    id="string", label="string", text="string", prompt="chat", completion="chat", strategy="string",
    attributes="string", parent_id="string", teacher_model="string", endpoint="string", prompt_tokens="int64",
    completion_tokens="int64", latency_s="float64", cost_usd="float64", attempts="int64", status="string",
    error="string")


def template_columns(template: str) -> list[str]:
    """The request columns a template uses (TextGeneration refuses listed columns it does not use)."""
    return [c for c in formats.COLUMNS
            if re.search(r"(?:{%.*?\b" + re.escape(c) + r"\b.*?%}|{{\s*" + re.escape(c) + r"\s*}})", template)]


def _gen_steps(spec: TaskSpec, endpoint: Endpoint):
    tname = formats.template_name(spec)
    template = formats.template_text(tname)
    extra = formats.generation_extra_body(spec, endpoint.kind)

    def middle(c: int):
        return [ValidatedGeneration(name="generate", spec_json=spec.model_dump_json(),
                                    llm=llm(endpoint, spec.teacher, spec.teacher.temperature, spec.teacher.max_tokens, extra),
                                    template=template, columns=template_columns(template),
                                    system_prompt=formats.system_text(tname) or None, input_batch_size=c,
                                    add_raw_output=False, add_raw_input=False)]
    return middle


def _batch_steps(spec: TaskSpec, endpoint: Endpoint):
    """The middle step for batch requests (generation.inputs_per_request > 1): max_tokens is per
    message, so a request for k messages may write k times as many (plus the list's wrapper)."""
    from curation.generation.batched import BatchedGeneration

    tname = formats.batch_template_name(spec)
    template = formats.template_text(tname)
    extra = formats.batch_extra_body(spec, endpoint.kind)
    max_tokens = spec.teacher.max_tokens * spec.generation.inputs_per_request + 16

    def middle(c: int):
        return [BatchedGeneration(name="generate", spec_json=spec.model_dump_json(),
                                  llm=llm(endpoint, spec.teacher, spec.teacher.temperature, max_tokens, extra),
                                  template=template, columns=template_columns(template),
                                  system_prompt=formats.system_text(tname) or None, input_batch_size=c,
                                  add_raw_output=False, add_raw_input=False)]
    return middle


# --- orchestration -----------------------------------------------------------------------

def saved_targets(out_dir: Path) -> list[dict]:
    p = Path(out_dir) / "targets.json"
    return json.loads(p.read_text()) if p.exists() else []


def add_targets(out_dir: Path, targets: list[dict]) -> list[dict]:
    """Targets accumulate across calls (a blind-spot loop adds more each round); delete the file to reset."""
    from distilforge.atomic import atomic_write_json

    have = saved_targets(out_dir)
    known = {plan.h(t) for t in have}
    have += [t for t in targets if plan.h(t) not in known]
    atomic_write_json(Path(out_dir) / "targets.json", have)
    return have


def plan_all(spec: TaskSpec, out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Phase-1 and evolve rows. With inputs_per_request k > 1 the same rows (same ids) are grouped
    into batch requests and sharded by whole batches (plan.batch); evolve rows, asked one by one,
    get shards of their own (`e<k>-`): their parents' texts differ from a k = 1 run's."""
    base = plan.plan_base(spec, saved_targets(out_dir))
    evolve = plan.plan_evolve(spec, base)
    if formats.batch_template_name(spec):
        k = spec.generation.inputs_per_request
        base, evolve = plan.batch(spec, base), plan.shard(evolve, spec.generation.shard_size, f"e{k}-")
    return base, evolve


def _committed_rows(out_dir: Path, reqs: list[dict]) -> dict[str, dict]:
    done = committed_shards(out_dir)
    rows = {}
    for sid in sorted({r["shard_id"] for r in reqs} & done):
        for row in read_shard(out_dir, sid):
            rows[row["id"]] = row
    return rows


def _evolve_ready(spec: TaskSpec, endpoint: Endpoint, evolve: list[dict], parents: dict[str, dict], done: set[str]):
    """Evolve requests whose shard can run now: parent text filled in; a failed parent makes a failed
    row without a request; a shard with an uncommitted parent waits for a later run."""
    price = budget.prices(spec)
    by_shard: dict[str, list[dict]] = {}
    for r in evolve:
        if r["shard_id"] not in done:
            by_shard.setdefault(r["shard_id"], []).append(r)
    live, prefilled = [], {}
    for sid, reqs in by_shard.items():
        if any(r["parent_id"] not in parents for r in reqs):
            continue
        ok = [{**r, "parent_text": parents[r["parent_id"]]["text"]} for r in reqs if parents[r["parent_id"]]["status"] == "ok"]
        dead = [to_row(spec, r, None, {}, endpoint.model, endpoint.base_url, price, 0,
                       error=f"parent {r['parent_id']} failed: {parents[r['parent_id']]['error']}")
                for r in reqs if parents[r["parent_id"]]["status"] != "ok"]
        for x in ok:
            x["shard_n"] = len(ok)
        live += ok
        prefilled[sid] = dead
    return live, prefilled


def generation_caps(spec: TaskSpec, max_cost: float | None = None, max_tokens: int | None = None) -> dict:
    """The spend caps a generation runs under: a flag wins over the spec's generation block
    (None: no cap). The generate manifest records them as `caps` (records.GenerationCaps)."""
    g = spec.generation
    return {"max_cost": max_cost if max_cost is not None else g.max_cost_usd,
            "max_tokens": max_tokens if max_tokens is not None else g.max_total_tokens}


def generate(spec: TaskSpec, endpoint: Endpoint, out_dir: str | Path, max_cost: float | None = None,
             max_tokens: int | None = None) -> dict:
    """Run every phase for the uncommitted shards; return counts (the rows live in shard files)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DISTILABEL_CACHE_DIR", str(out_dir / ".distilabel"))
    g = spec.generation
    caps = generation_caps(spec, max_cost, max_tokens)
    if caps["max_cost"] is not None or caps["max_tokens"] is not None:
        fc = out_dir / "forecast.json"
        if fc.exists():
            tot = json.loads(fc.read_text())["total"]
            n = max(tot["requests"], 1)
            caps["est"] = {"tokens": tot["tokens"] / n, "cost": tot["cost_usd"] / n}
        else:
            k = spec.generation.inputs_per_request if formats.batch_template_name(spec) else 1
            caps["est"] = {"tokens": spec.teacher.max_tokens * (2.0 + k),
                           "cost": budget.cost(spec.teacher.max_tokens * 2, spec.teacher.max_tokens * k, budget.prices(spec))}
    budget.prices(spec, warn=True)
    base, evolve = plan_all(spec, out_dir)
    done0 = committed_shards(out_dir)
    t0 = time.time()
    stopped = None
    todo = [r for r in base if r["shard_id"] not in done0]
    batched = formats.batch_template_name(spec) is not None
    if todo and batched:
        from curation.generation.batched import BatchCommitShards

        stopped = run_pipeline(spec, endpoint, plan.batch_requests(spec, todo), out_dir, "base",
                               _batch_steps(spec, endpoint), ["generate"], caps, commit=BatchCommitShards)
    elif todo:
        stopped = run_pipeline(spec, endpoint, todo, out_dir, "base", _gen_steps(spec, endpoint), ["generate"], caps)
    if evolve and not stopped:
        parents = _committed_rows(out_dir, base)
        live, prefilled = _evolve_ready(spec, endpoint, evolve, parents, committed_shards(out_dir))
        for sid, rows in prefilled.items():
            if rows and not any(r["shard_id"] == sid for r in live):
                commit(shard_path(out_dir, sid), rows)  # every parent failed: nothing to ask (no-op if done)
        prefilled = {s: r for s, r in prefilled.items() if any(x["shard_id"] == s for x in live)}
        if live:
            stopped = run_pipeline(spec, endpoint, live, out_dir, "evolve", _gen_steps(spec, endpoint), ["generate"],
                                   caps, prefilled)
    prefs_stats = {}
    if g.preferences.enabled and not stopped:
        from curation.generation import judge

        prefs_stats, stopped = judge.run_preferences(spec, endpoint, out_dir, collect(spec, out_dir), caps)
    done = committed_shards(out_dir)
    shards = sorted({r["shard_id"] for r in base + evolve})
    pending = len(set(shards) - done) + prefs_stats.get("pending_shards", 0)
    extra = {}
    if batched:
        from curation.generation.batched import batch_stats

        extra["batches"] = batch_stats(spec, base, _committed_rows(out_dir, base))
    n_req = len({r["batch_id"] for r in base}) + len(evolve) if batched else len(base) + len(evolve)
    return {"planned_requests": n_req, **({"planned_rows": len(base) + len(evolve)} if batched else {}),
            "shards": len(shards),
            "skipped_shards": len(done0 & set(shards)), "committed_shards": len(done & set(shards)),
            "pending_shards": pending, "stopped_by": stopped, "seconds": round(time.time() - t0, 2),
            "strategies": _count(r["strategy"] for r in base + evolve), "preferences": prefs_stats or None, **extra}


def _count(xs) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


PENDING_NOTE = " [no answer yet: the shard is pending, a rerun asks again]"


def collect(spec: TaskSpec, out_dir: str | Path) -> datasets.Dataset:
    """Assemble committed shards into one dataset, in plan order, with TRL `prompt`/`completion`.

    Rows of shards that were asked but not committed (a transport failure: HTTP status, timeout,
    connection refused) are included as `failed` rows carrying the last attempt's reason from the
    ledger, so a run where the teacher never answered still leaves every row and why on disk. Their
    shards stay uncommitted: a rerun asks again and the real rows replace these (same ids)."""
    out_dir = Path(out_dir)
    base, evolve = plan_all(spec, out_dir)
    reqs = base + evolve
    rows = _committed_rows(out_dir, reqs)
    rows.update(_pending_rows(spec, out_dir, reqs, rows))
    ordered = []
    for r in reqs:
        row = rows.get(r["request_id"])
        if row is None:
            continue
        row = dict(row)
        answer = row.pop("answer", "")
        row["prompt"] = spec.student_prompt(row["text"])
        row["completion"] = [{"role": "assistant", "content": formats.completion_text(spec, row["label"], answer)}]
        ordered.append({k: row.get(k) for k in ROW_FEATURES})
    if not ordered:  # from_list([]) cannot match fixed features ("Keys mismatch")
        return datasets.Dataset.from_dict({k: [] for k in ROW_FEATURES}, features=ROW_FEATURES)
    return datasets.Dataset.from_list(ordered, features=ROW_FEATURES)


def _pending_rows(spec: TaskSpec, out_dir: Path, reqs: list[dict], done: dict[str, dict]) -> dict[str, dict]:
    """Failed rows for asked-but-uncommitted shards, each with its reason (or its shard-mate's)."""
    failures = last_errors(out_dir)
    committed = committed_shards(out_dir)
    price = budget.prices(spec)
    out = {}
    for r in reqs:
        entry = failures.get(r["shard_id"])
        if r["request_id"] in done or r["shard_id"] in committed or entry is None:
            continue
        why = entry["errors"].get(r["request_id"])
        if why is None:
            why = f"not kept: another row of its shard failed ({next(iter(entry['errors'].values()))})"
        out[r["request_id"]] = to_row(spec, r, None, {}, spec.teacher.model, entry.get("endpoint") or "", price, 1,
                                      error=why + PENDING_NOTE)
    return out


def failure_line(ds: datasets.Dataset, endpoint: Endpoint, stopped_by: str | None) -> str | None:
    """The one error line for a run where no row came back usable (None otherwise): the teacher
    never answered → `teacher unreachable at URL: <reason>`; it answered, but nothing was usable
    → `all N rows failed: <reason>`. The most frequent reason is quoted."""
    if stopped_by or not len(ds) or any(s == "ok" for s in ds["status"]):
        return None
    errors = [e or "unknown" for e in ds["error"]]
    top = max(set(errors), key=lambda e: (errors.count(e), e))
    where = f"{len(ds)} failed rows with their reasons are in the run's generate/rows"
    if all(e.endswith(PENDING_NOTE) for e in errors):
        urls = list(getattr(endpoint, "base_urls", None) or [endpoint.base_url])
        at = urls[0] + (f" (and {len(urls) - 1} more)" if len(urls) > 1 else "")
        return f"teacher unreachable at {at}: {top.removesuffix(PENDING_NOTE)}; {where}"
    return f"all {len(ds)} rows failed: {top.removesuffix(PENDING_NOTE)}; {where}"
