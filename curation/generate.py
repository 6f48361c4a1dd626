"""Generate task rows (and optionally preference pairs) from the teacher with distilabel pipelines.

Why the shard files: distilabel 1.5.3's own cache hangs on resume (upstream #1065), so every
pipeline runs with `use_cache=False` and resumability is ours. Requests are planned up front
with content-derived ids (curation/plan.py), grouped into shards, and the last pipeline step
commits each shard to its own JSONL file (temp file + fsync + rename) once all its rows are back.
A shard with any transport failure (the openai client gave up after its retries: distilabel then
hands the step `None`) is NOT committed, so the next run asks for it again; garbage answers are
retried `invalid_retries` times and then committed as failed rows with the reason. A rerun after
any interruption (even `kill -9` of the process group) skips committed shards: no row is lost and
none is generated twice.

Phases, each one pipeline run (~3 s of distilabel start-up each): `base` (attributes / fewshot /
targeted), `evolve` (rewrites of committed base rows) and `prefs` (judged candidate answers,
curation/judge.py). The first step of each pipeline yields one shard per batch and checks the
spend ledger before each one, so `--max-cost` / `--max-tokens` stop at a shard boundary.
"""
import json
import logging
import logging.handlers
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import datasets
from pydantic import PrivateAttr

from distilabel.models.llms import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import GeneratorStep, Step, StepInput
from distilabel.steps.tasks import TextGeneration

from curation import budget, formats, plan
from distilforge.spec import TaskSpec

ROW_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "label": datasets.Value("string"),
    "text": datasets.Value("string"),
    "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    "completion": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    "strategy": datasets.Value("string"),
    "attributes": datasets.Value("string"),
    "parent_id": datasets.Value("string"),
    "teacher_model": datasets.Value("string"),
    "endpoint": datasets.Value("string"),
    "prompt_tokens": datasets.Value("int64"),
    "completion_tokens": datasets.Value("int64"),
    "latency_s": datasets.Value("float64"),
    "cost_usd": datasets.Value("float64"),
    "attempts": datasets.Value("int64"),
    "status": datasets.Value("string"),
    "error": datasets.Value("string"),
})
SHARDS = "shards"


class TimedOpenAILLM(OpenAILLM):
    """OpenAILLM that also records per-request latency and finish_reason (truncation) in statistics."""

    async def _generate_chat_completion(self, *args, **kwargs):  # type: ignore[override]
        t0 = time.perf_counter()
        out = await super()._generate_chat_completion(*args, **kwargs)
        n = len(out.get("generations") or [None])
        out.setdefault("statistics", {})["latency_s"] = [round(time.perf_counter() - t0, 3)] * n
        return out

    def _generations_from_openai_completion(self, completion):  # type: ignore[override]
        out = super()._generations_from_openai_completion(completion)
        out.setdefault("statistics", {})["finish_reason"] = [c.finish_reason for c in completion.choices]
        return out


def llm(endpoint, teacher, temperature: float, max_tokens: int, extra: dict) -> TimedOpenAILLM:
    """The client every step uses: bounded transport retries (backoff + jitter + Retry-After, done by
    the openai client) and the per-request timeout from the spec. The key never leaves this object."""
    return TimedOpenAILLM(model=endpoint.model, base_url=endpoint.base_url, api_key=endpoint.api_key,
                          max_retries=teacher.max_retries, timeout=int(teacher.timeout_s),
                          generation_kwargs={"temperature": temperature, "max_new_tokens": max_tokens, **extra})


def stats_of(r: dict, step: str) -> dict:
    return ((r.get("distilabel_metadata") or {}).get(f"statistics_{step}") or {})


class SentinelAware:
    """Passes `sentinel` rows through without a request. A budget stop ends the generator with one
    sentinel row: distilabel 1.5.3 hangs when a generator's last batch is empty."""

    def process(self, inputs: StepInput):  # type: ignore[override]
        real = [r for r in inputs if not r.get("sentinel")]
        out = next(super().process(real)) if real else []  # type: ignore[misc]
        yield out + [{**r, **{k: None for k in self.outputs}} for r in inputs if r.get("sentinel")]  # type: ignore[attr-defined]


class AnswerGeneration(SentinelAware, TextGeneration):
    """TextGeneration that lets the budget sentinel through."""


class ValidatedGeneration(SentinelAware, TextGeneration):
    """TextGeneration that re-asks for answers that do not parse or validate (schema, empty,
    truncated), up to `generation.invalid_retries` times; tokens of every attempt are kept."""

    spec_json: str

    def process(self, inputs: StepInput):  # type: ignore[override]
        spec = TaskSpec.model_validate_json(self.spec_json)
        outs = next(super().process(inputs))
        for o in outs:
            o["attempts"] = 1
        for _ in range(spec.generation.invalid_retries):
            bad = [i for i, o in enumerate(outs) if o.get("generation") is not None and formats.parse(
                spec, o["generation"], stats_of(o, self.name).get("finish_reason"),
                int(stats_of(o, self.name).get("output_tokens") or 0))[0] is None]
            if not bad:
                break
            again = next(super().process([inputs[i] for i in bad]))
            for i, o in zip(bad, again):
                old, new = stats_of(outs[i], self.name), stats_of(o, self.name)
                for k in ("input_tokens", "output_tokens", "latency_s"):
                    new[k] = (new.get(k) or 0) + (old.get(k) or 0)
                o.setdefault("distilabel_metadata", {})[f"statistics_{self.name}"] = new
                o["attempts"] = outs[i]["attempts"] + 1
                outs[i] = o
        yield outs


class PlannedRequests(GeneratorStep):
    """Yields the planned requests one shard per batch; before each shard it checks the spend
    ledger so a budget cap stops the run at a shard boundary (never mid-shard)."""

    data: list[dict]
    out_dir: str
    phase: str
    max_cost: float | None = None
    max_tokens: int | None = None
    est_tokens: float = 0.0  # per request, until the ledger has real numbers
    est_cost: float = 0.0

    @property
    def outputs(self):
        return [*self.data[0].keys(), "sentinel"] if self.data else ["request_id", "sentinel"]

    def _over(self, rows: list[dict], yielded: dict[str, int]) -> str | None:
        out = Path(self.out_dir)
        while True:
            led = budget.read_ledger(out)
            mine = [e for e in led if e.get("phase") == self.phase and e.get("requests")]
            n = sum(e["requests"] for e in mine)
            per_tok = (sum(e["prompt_tokens"] + e["completion_tokens"] for e in mine) / n) if n else self.est_tokens
            per_cost = (sum(e["cost_usd"] for e in mine) / n) if n else self.est_cost
            done = {e["shard"] for e in led}
            inflight = sum(k for s, k in yielded.items() if s not in done)
            need = (inflight + len(rows))
            why = budget.cap_reached(out, self.max_cost, self.max_tokens, need * per_cost, need * per_tok)
            if why is None or inflight == 0:
                return why
            time.sleep(0.2)  # close to the cap: let in-flight shards land, then decide on real numbers

    def process(self, offset: int = 0):  # type: ignore[override]
        shards: dict[str, list[dict]] = {}
        for r in self.data:
            shards.setdefault(r["shard_id"], []).append(r)
        items = list(shards.items())
        yielded: dict[str, int] = {}
        for i, (sid, rows) in enumerate(items):
            if self.max_cost is not None or self.max_tokens is not None:
                why = self._over(rows, yielded)
                if why:
                    (Path(self.out_dir) / f".stopped-{self.phase}").write_text(why)
                    yield [{**rows[0], "sentinel": True, "shard_id": "-stop-"}], True
                    return
            yielded[sid] = len(rows)
            yield [{**r, "sentinel": False} for r in rows], i == len(items) - 1


class CommitShards(Step):
    """Buffers rows per shard; once all of a shard's rows are back, commits it atomically (unless a
    transport failure left a `None` in it) and appends the shard's spend to the ledger either way."""

    out_dir: str
    spec_json: str
    phase: str
    model_name: str
    base_url: str
    price_in: float = 0.0
    price_out: float = 0.0
    steps: list[str] = ["generate"]
    prefilled: dict[str, list[dict]] = {}
    _buffers: dict = PrivateAttr(default_factory=dict)

    @property
    def inputs(self):
        return ["request_id", "shard_id", "shard_n"]

    @property
    def outputs(self):
        return ["committed"]

    def process(self, inputs: StepInput):  # type: ignore[override]
        spec = TaskSpec.model_validate_json(self.spec_json)
        price = (self.price_in, self.price_out)
        for r in inputs:
            r["committed"] = False
            if r.get("sentinel"):
                continue
            buf = self._buffers.setdefault(r["shard_id"], [])
            buf.append(r)
            if len(buf) < r["shard_n"]:
                continue
            self._buffers.pop(r["shard_id"])
            stats = [[stats_of(x, s) for s in self.steps] for x in buf]
            p_tok = sum(int(s.get("input_tokens") or 0) for st in stats for s in st)
            c_tok = sum(int(s.get("output_tokens") or 0) for st in stats for s in st)
            failed = any(x.get(k) is None for x in buf for k in self.output_keys())
            if not failed:
                rows = [self.build(spec, x, st, price) for x, st in zip(buf, stats)]
                rows += self.prefilled.get(r["shard_id"], [])
                commit(shard_path(Path(self.out_dir), r["shard_id"]), rows)
                r["committed"] = True
            budget.record(Path(self.out_dir), {
                "shard": r["shard_id"], "phase": self.phase, "committed": not failed,
                "requests": sum(int(x.get("attempts") or 1) for x in buf) * len(self.steps),
                "rows": len(buf), "prompt_tokens": p_tok, "completion_tokens": c_tok,
                "cost_usd": budget.cost(p_tok, c_tok, price)})
        yield inputs

    def output_keys(self) -> list[str]:
        return ["candidate", "judgement"] if self.phase == "prefs" else ["generation"]

    def build(self, spec, x: dict, stats: list[dict], price) -> dict:
        if self.phase == "prefs":
            from curation.judge import candidate_record

            return candidate_record(spec, x, stats, self.model_name, price)
        return to_row(spec, x, x["generation"], stats[0], self.model_name, self.base_url, price,
                      int(x.get("attempts") or 1))


def to_row(spec, req: dict, raw: str | None, st: dict, model: str, base_url: str, price, attempts: int = 1,
           error: str | None = None) -> dict:
    """One shard row. `prompt`/`completion` are rebuilt from text/answer by `collect`."""
    p_tok, c_tok = int(st.get("input_tokens") or 0), int(st.get("output_tokens") or 0)
    fields, err = (None, error) if error else formats.parse(spec, raw, st.get("finish_reason"), c_tok)
    if err and attempts > 1:
        err = f"{err} (after {attempts} attempts)"
    return {"id": req["request_id"], "label": req["label"], "text": (fields or {}).get("text", ""),
            "answer": (fields or {}).get("answer", ""), "strategy": req["strategy"], "attributes": req["attributes"],
            "parent_id": req.get("parent_id", ""), "teacher_model": model, "endpoint": base_url,
            "prompt_tokens": p_tok, "completion_tokens": c_tok, "latency_s": round(float(st.get("latency_s") or 0), 3),
            "cost_usd": round(budget.cost(p_tok, c_tok, price), 8), "attempts": attempts,
            "status": "ok" if fields else "failed", "error": err}


def shard_path(out_dir: Path, shard_id: str) -> Path:
    return Path(out_dir) / SHARDS / f"{shard_id}.jsonl"


def committed_shards(out_dir: Path) -> set[str]:
    d = Path(out_dir) / SHARDS
    return {p.stem for p in d.glob("*.jsonl")} if d.exists() else set()


def read_shard(out_dir: Path, sid: str) -> list[dict]:
    return [json.loads(line) for line in shard_path(out_dir, sid).read_text().splitlines()]


def commit(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def template_columns(template: str) -> list[str]:
    """The request columns a template uses (TextGeneration refuses listed columns it does not use)."""
    return [c for c in formats.COLUMNS
            if re.search(r"(?:{%.*?\b" + re.escape(c) + r"\b.*?%}|{{\s*" + re.escape(c) + r"\s*}})", template)]


def run_pipeline(spec: TaskSpec, endpoint, reqs: list[dict], out_dir: Path, phase: str, middle, steps: list[str],
                 caps: dict, prefilled: dict | None = None) -> str | None:
    """Run one phase: PlannedRequests >> middle steps >> CommitShards. Returns the cap that stopped it."""
    price = budget.prices(spec)
    marker = out_dir / f".stopped-{phase}"
    marker.unlink(missing_ok=True)
    c = max(spec.generation.concurrency, 1)
    est = caps.get("est") or {}
    with Pipeline(name=f"distilforge-{phase}-{spec.name}", description=f"teacher → {phase}") as pipe:
        load = PlannedRequests(name="requests", data=reqs, out_dir=str(out_dir), phase=phase, batch_size=c,
                               max_cost=caps.get("max_cost"), max_tokens=caps.get("max_tokens"),
                               est_tokens=est.get("tokens", 0.0), est_cost=est.get("cost", 0.0))
        commit_step = CommitShards(name="commit", out_dir=str(out_dir), spec_json=spec.model_dump_json(), phase=phase,
                                   model_name=endpoint.model, base_url=endpoint.base_url, price_in=price[0],
                                   price_out=price[1], steps=steps, prefilled=prefilled or {}, input_batch_size=c)
        chain = [load, *middle(c), commit_step]
        for a, b in zip(chain, chain[1:]):
            a >> b
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(spec, out_dir, reqs, phase, stop), daemon=True)
    watcher.start()
    try:
        pipe.run(use_cache=False)
    finally:
        stop.set()
        watcher.join(timeout=5)
        _detach_pipeline_logging()
    return marker.read_text().strip() if marker.exists() else None


def _gen_steps(spec: TaskSpec, endpoint):
    tname = formats.template_name(spec)
    template = formats.template_text(tname)
    extra = formats.extra_body(formats.structured_mode(spec.teacher, endpoint.kind), formats.response_schema(spec))

    def middle(c: int):
        return [ValidatedGeneration(name="generate", spec_json=spec.model_dump_json(),
                                    llm=llm(endpoint, spec.teacher, spec.teacher.temperature, spec.teacher.max_tokens, extra),
                                    template=template, columns=template_columns(template),
                                    system_prompt=formats.system_text(tname) or None, input_batch_size=c,
                                    add_raw_output=False, add_raw_input=False)]
    return middle


def _watch(spec: TaskSpec, out_dir: Path, reqs: list[dict], phase: str, stop: threading.Event) -> None:
    """Progress bar fed by the spend ledger: rows, rows/s, tokens/s, cost so far, ETA."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    start = len(budget.read_ledger(out_dir))
    t0 = time.time()
    cols = (TextColumn(f"[bold]{phase}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(phase, total=len(reqs), completed=0, info="")
        while True:
            done = stop.is_set()
            new = budget.read_ledger(out_dir)[start:]
            rows = sum(e.get("rows", 0) for e in new if e.get("committed"))
            toks = sum(e.get("completion_tokens", 0) for e in new)
            cost = budget.spent(out_dir)["cost_usd"]
            dt = max(time.time() - t0, 1e-6)
            bar.update(task, completed=rows, info=f"{rows / dt:.2f} rows/s  {toks / dt:.1f} tok/s  ${cost:.4f}")
            if done:
                return
            stop.wait(1.0)


def _detach_pipeline_logging() -> None:
    """distilabel leaves queue handlers on the root logger after a run; later log calls would fail."""
    for name in [None, *logging.root.manager.loggerDict]:
        lg = logging.getLogger(name)
        for h in list(getattr(lg, "handlers", [])):
            if isinstance(h, logging.handlers.QueueHandler):
                lg.removeHandler(h)
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- orchestration -----------------------------------------------------------------------

def saved_targets(out_dir: Path) -> list[dict]:
    p = Path(out_dir) / "targets.json"
    return json.loads(p.read_text()) if p.exists() else []


def add_targets(out_dir: Path, targets: list[dict]) -> list[dict]:
    """Targets accumulate across calls (a blind-spot loop adds more each round); delete the file to reset."""
    from distilforge.manifest import atomic_write_json

    have = saved_targets(out_dir)
    known = {plan.h(t) for t in have}
    have += [t for t in targets if plan.h(t) not in known]
    atomic_write_json(Path(out_dir) / "targets.json", have)
    return have


def plan_all(spec: TaskSpec, out_dir: Path) -> tuple[list[dict], list[dict]]:
    base = plan.plan_base(spec, saved_targets(out_dir))
    return base, plan.plan_evolve(spec, base)


def _committed_rows(out_dir: Path, reqs: list[dict]) -> dict[str, dict]:
    done = committed_shards(out_dir)
    rows = {}
    for sid in sorted({r["shard_id"] for r in reqs} & done):
        for row in read_shard(out_dir, sid):
            rows[row["id"]] = row
    return rows


def _evolve_ready(spec, endpoint, evolve: list[dict], parents: dict[str, dict], done: set[str]):
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


def generate(spec: TaskSpec, endpoint, out_dir: str | Path, max_cost: float | None = None,
             max_tokens: int | None = None) -> dict:
    """Run every phase for the uncommitted shards; return counts (the rows live in shard files)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DISTILABEL_CACHE_DIR", str(out_dir / ".distilabel"))
    g = spec.generation
    caps = {"max_cost": max_cost if max_cost is not None else g.max_cost_usd,
            "max_tokens": max_tokens if max_tokens is not None else g.max_total_tokens}
    if caps["max_cost"] is not None or caps["max_tokens"] is not None:
        fc = out_dir / "forecast.json"
        if fc.exists():
            tot = json.loads(fc.read_text())["total"]
            n = max(tot["requests"], 1)
            caps["est"] = {"tokens": tot["tokens"] / n, "cost": tot["cost_usd"] / n}
        else:
            caps["est"] = {"tokens": spec.teacher.max_tokens * 3.0,
                           "cost": budget.cost(spec.teacher.max_tokens * 2, spec.teacher.max_tokens, budget.prices(spec))}
    budget.prices(spec, warn=True)
    base, evolve = plan_all(spec, out_dir)
    done0 = committed_shards(out_dir)
    t0 = time.time()
    stopped = None
    todo = [r for r in base if r["shard_id"] not in done0]
    if todo:
        stopped = run_pipeline(spec, endpoint, todo, out_dir, "base", _gen_steps(spec, endpoint), ["generate"], caps)
    if evolve and not stopped:
        parents = _committed_rows(out_dir, base)
        live, prefilled = _evolve_ready(spec, endpoint, evolve, parents, committed_shards(out_dir))
        for sid, rows in prefilled.items():
            if rows and not any(r["shard_id"] == sid for r in live):
                commit(shard_path(out_dir, sid), rows)  # every parent failed: nothing to ask
        prefilled = {s: r for s, r in prefilled.items() if any(x["shard_id"] == s for x in live)}
        if live:
            stopped = run_pipeline(spec, endpoint, live, out_dir, "evolve", _gen_steps(spec, endpoint), ["generate"],
                                   caps, prefilled)
    prefs_stats = {}
    if g.preferences.enabled and not stopped:
        from curation import judge

        prefs_stats, stopped = judge.run_preferences(spec, endpoint, out_dir, collect(spec, out_dir), caps)
    done = committed_shards(out_dir)
    shards = sorted({r["shard_id"] for r in base + evolve})
    pending = len(set(shards) - done) + prefs_stats.get("pending_shards", 0)
    return {"planned_requests": len(base) + len(evolve), "shards": len(shards),
            "skipped_shards": len(done0 & set(shards)), "committed_shards": len(done & set(shards)),
            "pending_shards": pending, "stopped_by": stopped, "seconds": round(time.time() - t0, 2),
            "strategies": _count(r["strategy"] for r in base + evolve), "preferences": prefs_stats or None}


def _count(xs) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def collect(spec: TaskSpec, out_dir: str | Path) -> datasets.Dataset:
    """Assemble committed shards into one dataset, in plan order, with TRL `prompt`/`completion`."""
    out_dir = Path(out_dir)
    base, evolve = plan_all(spec, out_dir)
    reqs = base + evolve
    rows = _committed_rows(out_dir, reqs)
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
    return datasets.Dataset.from_list(ordered, features=ROW_FEATURES)
