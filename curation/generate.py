"""Generate task-format SFT rows from the teacher with a distilabel pipeline.

Why the shard files: distilabel 1.5.3's own cache hangs on resume (upstream #1065), so the
pipeline runs with `use_cache=False` and resumability is ours. Requests are planned up front
with content-derived ids (same spec + seed → same ids), grouped into shards, and a pipeline
step commits each shard to its own JSONL file (temp file + rename) as soon as all its rows are
back. A rerun after any interruption plans the same shards, skips the committed ones and asks
the teacher only for the rest: no row lost, none generated twice.
"""


import hashlib
import json
import logging
import logging.handlers
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import datasets
from pydantic import PrivateAttr

from distilabel.models.llms import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, Step, StepInput
from distilabel.steps.tasks import TextGeneration

from distilforge.spec import TaskSpec

PROMPTS = Path(__file__).parent / "prompts"

ROW_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "label": datasets.Value("string"),
    "text": datasets.Value("string"),
    "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    "completion": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    "strategy": datasets.Value("string"),
    "attributes": datasets.Value("string"),
    "teacher_model": datasets.Value("string"),
    "prompt_tokens": datasets.Value("int64"),
    "completion_tokens": datasets.Value("int64"),
    "latency_s": datasets.Value("float64"),
    "status": datasets.Value("string"),
    "error": datasets.Value("string"),
})


def _h(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def plan_requests(spec: TaskSpec) -> list[dict]:
    """Every request the run will make, deterministic in (spec, seed): ids never depend on timing."""
    g = spec.generation
    desc = {lab.name: lab.description for lab in spec.labels}
    reqs = []
    for label in spec.label_names:
        rng = random.Random(_h(g.seed, spec.name, label))
        for i in range(g.per_label):
            attrs = {k: rng.choice(v) for k, v in sorted(g.attributes.items()) if v}
            rid = "g-" + _h(spec.name, g.prompt_template, label, desc[label], g.input_description, g.seed, i, attrs)[:16]
            reqs.append({"request_id": rid, "label": label, "description": desc[label], "strategy": "attributes",
                         "attributes": json.dumps(attrs, sort_keys=True), "input_description": g.input_description,
                         **{k: attrs.get(k, "") for k in ("tone", "length", "channel", "typos", "persona")}})
    # Interleave labels so an early stop still leaves a balanced set.
    reqs.sort(key=lambda r: (_h(r["request_id"])))
    shards = [reqs[i:i + g.shard_size] for i in range(0, len(reqs), g.shard_size)]
    for shard in shards:
        sid = "s-" + _h([r["request_id"] for r in shard])[:12]
        for r in shard:
            r["shard_id"], r["shard_n"] = sid, len(shard)
    return reqs


def parse_message(raw: str | None) -> tuple[str | None, str]:
    """Teacher output → (message, error). Garbage becomes an error string, never an exception."""
    if raw is None:
        return None, "no output from teacher"
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return None, f"not JSON: {raw[:80]!r}"
    msg = obj.get("message") if isinstance(obj, dict) else None
    if not isinstance(msg, str) or not msg.strip():
        return None, "JSON without a non-empty 'message'"
    return " ".join(msg.split()), ""


def to_row(spec: TaskSpec, req: dict, raw: str | None, stats: dict, model: str, latency: float) -> dict:
    text, err = parse_message(raw)
    label = req["label"]
    return {
        "id": req["request_id"],
        "label": label,
        "text": text or "",
        "prompt": spec.student_prompt(text or ""),
        "completion": [{"role": "assistant", "content": label}],
        "strategy": req["strategy"],
        "attributes": req["attributes"],
        "teacher_model": model,
        "prompt_tokens": int(stats.get("input_tokens") or 0),
        "completion_tokens": int(stats.get("output_tokens") or 0),
        "latency_s": round(latency, 3),
        "status": "ok" if text else "failed",
        "error": err,
    }


def shard_path(out_dir: Path, shard_id: str) -> Path:
    return out_dir / "shards" / f"{shard_id}.jsonl"


def committed_shards(out_dir: Path) -> set[str]:
    d = out_dir / "shards"
    return {p.stem for p in d.glob("s-*.jsonl")} if d.exists() else set()


def _commit(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CommitShards(Step):
    """Buffers rows per shard; writes a shard file once all its rows are back and usable."""

    out_dir: str
    spec_json: str
    model_name: str
    _buffers: dict = PrivateAttr(default_factory=dict)
    _last: float = PrivateAttr(default=0.0)

    @property
    def inputs(self):
        return ["request_id", "shard_id", "shard_n", "generation"]

    @property
    def outputs(self):
        return ["committed"]

    def process(self, inputs: StepInput):  # type: ignore[override]  (real annotation: distilabel inspects it)
        spec_ = TaskSpec.model_validate_json(self.spec_json)
        now = time.time()
        per = (now - (self._last or now)) / max(len(inputs), 1)
        self._last = now
        for r in inputs:
            meta = (r.get("distilabel_metadata") or {}).get("statistics_generate", {}) or {}
            buf = self._buffers.setdefault(r["shard_id"], [])
            buf.append((r, meta, per))
            r["committed"] = False
            if len(buf) == r["shard_n"]:
                if any(x[0].get("generation") is None for x in buf):
                    # transport failure after retries: leave the shard for the next run
                    self._buffers.pop(r["shard_id"])
                    continue
                rows = [to_row(spec_, x[0], x[0]["generation"], x[1], self.model_name, x[2]) for x in buf]
                _commit(shard_path(Path(self.out_dir), r["shard_id"]), rows)
                self._buffers.pop(r["shard_id"])
                r["committed"] = True
        yield inputs


def _build_pipeline(spec: TaskSpec, endpoint, requests: list[dict], out_dir: Path):
    spec_json = spec.model_dump_json()
    t = spec.teacher
    kwargs: dict[str, Any] = {"temperature": t.temperature, "max_new_tokens": t.max_tokens}
    schema = {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}
    mode = t.structured_output
    if mode == "auto":
        mode = "llama_cpp" if endpoint.kind == "embedded" else "openai"
    if mode == "llama_cpp":
        kwargs["extra_body"] = {"response_format": {"type": "json_object", "schema": schema}}
    elif mode == "openai":
        kwargs["extra_body"] = {"response_format": {"type": "json_schema", "json_schema": {"name": "message", "schema": schema}}}
    system = (PROMPTS / f"{spec.generation.prompt_template}.system.txt").read_text().strip()
    template = (PROMPTS / f"{spec.generation.prompt_template}.jinja2").read_text()
    with Pipeline(name=f"distilforge-generate-{spec.name}", description="teacher → task rows") as pipe:
        load = LoadDataFromDicts(data=requests, batch_size=max(spec.generation.concurrency, 1))
        gen = TextGeneration(
            name="generate",
            llm=OpenAILLM(model=endpoint.model, base_url=endpoint.base_url, api_key=endpoint.api_key,
                          max_retries=t.max_retries, timeout=int(t.timeout_s), generation_kwargs=kwargs),
            template=template,
            columns=["input_description", "description", "tone", "length", "channel", "typos", "persona"],
            system_prompt=system,
            input_batch_size=max(spec.generation.concurrency, 1),
            add_raw_output=False,
            add_raw_input=False,
        )
        commit = CommitShards(name="commit", out_dir=str(out_dir), spec_json=spec_json, model_name=endpoint.model,
                              input_batch_size=max(spec.generation.concurrency, 1))
        load >> gen >> commit
    return pipe


def _watch(spec: TaskSpec, out_dir: Path, reqs: list[dict], stop: threading.Event) -> None:
    """Progress bar fed by committed shard files: rows, rows/s, tokens/s, cost so far, ETA."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    size = {}
    for r in reqs:
        size[r["shard_id"]] = r["shard_n"]
    seen = committed_shards(out_dir) & set(size)
    start_rows = sum(size[s] for s in seen)
    toks, t0 = [0, 0], time.time()
    cols = (TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("generate", total=len(reqs), completed=start_rows, info="")
        while True:
            done = stop.is_set()
            for sid in sorted((committed_shards(out_dir) & set(size)) - seen):
                seen.add(sid)
                for line in shard_path(out_dir, sid).read_text().splitlines():
                    row = json.loads(line)
                    toks[0] += row["prompt_tokens"]
                    toks[1] += row["completion_tokens"]
                    bar.advance(task, 1)
            dt = max(time.time() - t0, 1e-6)
            new_rows = sum(size[s] for s in seen) - start_rows
            cost = (toks[0] * spec.teacher.price_in_per_m + toks[1] * spec.teacher.price_out_per_m) / 1e6
            bar.update(task, info=f"{new_rows / dt:.2f} rows/s  {toks[1] / dt:.1f} tok/s  ${cost:.4f}")
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


def generate(spec: TaskSpec, endpoint, out_dir: str | Path) -> dict:
    """Run the teacher for every uncommitted shard; return counts (the rows live in shard files)."""
    out_dir = Path(out_dir)
    os.environ.setdefault("DISTILABEL_CACHE_DIR", str(out_dir / ".distilabel"))
    reqs = plan_requests(spec)
    done = committed_shards(out_dir)
    todo = [r for r in reqs if r["shard_id"] not in done]
    t0 = time.time()
    if todo:
        pipe = _build_pipeline(spec, endpoint, todo, out_dir)
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(spec, out_dir, reqs, stop), daemon=True)
        watcher.start()
        try:
            pipe.run(use_cache=False)
        finally:
            stop.set()
            watcher.join(timeout=5)
            _detach_pipeline_logging()
    now_done = committed_shards(out_dir)
    shards = sorted({r["shard_id"] for r in reqs})
    return {"planned_requests": len(reqs), "shards": len(shards), "skipped_shards": len(done & set(shards)),
            "committed_shards": len(now_done & set(shards)), "pending_shards": len(set(shards) - now_done),
            "seconds": round(time.time() - t0, 2)}


def collect(spec: TaskSpec, out_dir: str | Path) -> datasets.Dataset:
    """Assemble committed shards into one dataset, in plan order."""
    out_dir = Path(out_dir)
    reqs = plan_requests(spec)
    rows: dict[str, dict] = {}
    for sid in sorted({r["shard_id"] for r in reqs}):
        p = shard_path(out_dir, sid)
        if p.exists():
            for line in p.read_text().splitlines():
                r = json.loads(line)
                rows[r["id"]] = r
    ordered = [rows[r["request_id"]] for r in reqs if r["request_id"] in rows]
    return datasets.Dataset.from_list(ordered, features=ROW_FEATURES)
