"""The distilabel steps generation runs: a timed OpenAI client, the budget-aware request source,
the generation task that re-asks for invalid answers, and the step that commits shards.

Shard files are the unit of exactly-once: a shard is written (temp file + fsync + hard link, which
fails if it exists) only when every one of its rows came back from the teacher, and only once: a
second writer's commit of the same shard is a no-op. A request the openai client gave up on (after
its retries) returns `None` with its reason (HTTP status, timeout, connection refused) instead of
failing distilabel's whole batch; it leaves its shard uncommitted so the next run asks again. Every
finished shard, committed or not, is appended to the spend ledger (curation/generation/budget.py) with its
per-row reasons; the caps are checked against it and `ledger()` reads it with each shard committed
at most once.
"""
import hashlib
import json
import os
import time
from pathlib import Path

from pydantic import PrivateAttr

from distilabel.models.llms import OpenAILLM
from distilabel.steps import GeneratorStep, Step, StepInput
from distilabel.steps.tasks import TextGeneration

from curation import formats
from curation.generation import budget
from distilforge.spec import TaskSpec, Teacher, validate_spec
from distilforge.secrets import redact, reveal
from distilforge.teacher import Endpoint

SHARDS = "shards"


class TimedOpenAILLM(OpenAILLM):
    """OpenAILLM that also records per-request latency, finish_reason (truncation) and the server
    that answered, and spreads requests over `extra_base_urls` too (replicas of the same model).

    Spreading: each request goes to the server with the fewest requests in flight (ties: the one
    used longest ago). The chosen client is set on `_aclient` right before the parent's method runs;
    the parent reads it before its first `await`, so concurrent requests cannot see each other's.

    Seeding: every request carries a `seed` derived from its messages and how many times this step
    has asked them before (a re-ask gets a new one). With prompts read in fixed blocks
    (distilforge/llama_server.py) an answer sampled at any temperature is then a function of the
    request alone: the same rows whichever replica answers, in whatever order, and after a crash.
    Without it, llama.cpp seeds each request from the previous one's seed, so a row depends on the
    requests its server happened to serve before it.
    """

    extra_base_urls: list[str] = []
    _clients: list = PrivateAttr(default_factory=list)
    _inflight: list = PrivateAttr(default_factory=list)
    _last: list = PrivateAttr(default_factory=list)
    _tick: int = PrivateAttr(default=0)
    _asked: dict = PrivateAttr(default_factory=dict)

    def load(self) -> None:
        super().load()
        from openai import AsyncOpenAI

        from distilforge.secrets import register

        register(self.api_key.get_secret_value())  # this worker scrubs it from reasons it records

        self._clients = [(self.base_url, self._aclient)] + [
            (u, AsyncOpenAI(base_url=u, api_key=self.api_key.get_secret_value(), max_retries=self.max_retries,
                            timeout=self.timeout, default_headers=self.default_headers))
            for u in self.extra_base_urls]
        self._inflight = [0] * len(self._clients)
        self._last = [0] * len(self._clients)

    def _seed(self, messages) -> int:
        key = hashlib.sha256(json.dumps(messages, sort_keys=True, default=str).encode()).hexdigest()
        k = self._asked.get(key, 0)
        self._asked[key] = k + 1
        return int(hashlib.sha256(f"{key}#{k}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF

    async def _generate_chat_completion(self, *args, **kwargs):  # type: ignore[override]
        messages = kwargs.get("input", args[0] if args else None)
        kwargs["extra_body"] = {**(kwargs.get("extra_body") or {}), "seed": self._seed(messages)}
        i = min(range(len(self._clients)), key=lambda k: (self._inflight[k], self._last[k])) if self._clients else -1
        url = self.base_url
        if i >= 0:
            url, self._aclient = self._clients[i]
            self._inflight[i] += 1
            self._tick += 1
            self._last[i] = self._tick
        t0 = time.perf_counter()
        try:
            out = await super()._generate_chat_completion(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a failed request is a row result with its reason
            # Raising would make distilabel drop the whole batch (every row `None`, no reason);
            # returning `None` for this request only keeps the others' answers and says why.
            n = int(kwargs.get("num_generations") or 1)
            out = {"generations": [None] * n,
                   "statistics": {"input_tokens": [0] * n, "output_tokens": [0] * n,
                                  "error": [redact(request_error(e, self.timeout, self.max_retries))] * n}}
        finally:
            if i >= 0:
                self._inflight[i] -= 1
        n = len(out.get("generations") or [None])
        out.setdefault("statistics", {})["latency_s"] = [round(time.perf_counter() - t0, 3)] * n
        out["statistics"]["served_by"] = [url] * n
        return out

    def _generations_from_openai_completion(self, completion):  # type: ignore[override]
        out = super()._generations_from_openai_completion(completion)
        out.setdefault("statistics", {})["finish_reason"] = [c.finish_reason for c in completion.choices]
        return out


def request_error(e: BaseException, timeout: float, retries: int) -> str:
    """Why a request got no answer, in one short line that starts with the kind (HTTP status,
    timeout, connection refused, ...) so rows and manifests can group by it. No key: the openai
    client's messages do not carry the Authorization header."""
    import openai

    after = f" (after {retries} retries)" if retries else ""
    if isinstance(e, openai.APIStatusError):
        said = (e.body.get("message") if isinstance(e.body, dict) else None) or e.message or ""
        said = said.strip().splitlines()[0][:160] if said.strip() else ""
        return f"HTTP {e.status_code}{': ' + said if said else ''}{after}"
    if isinstance(e, openai.APITimeoutError):
        return f"timeout: no answer within {timeout:g}s{after}"
    if isinstance(e, openai.APIConnectionError):
        chain, x = [], e.__cause__ or e.__context__
        while x is not None and len(chain) < 8:  # httpx says "All connection attempts failed"; the OSError is below
            chain.append(x)
            x = x.__cause__ or x.__context__
        if any(isinstance(c, ConnectionRefusedError) for c in chain):
            return f"connection refused{after}"
        text = next((str(c).strip().splitlines()[0] for c in reversed(chain) if str(c).strip()), type(e).__name__)
        return f"connection error: {text[:160]}{after}"
    msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return f"bad response: {type(e).__name__}{': ' + msg if msg else ''}"


def llm(endpoint: Endpoint, teacher: Teacher, temperature: float, max_tokens: int, extra: dict) -> TimedOpenAILLM:
    """The client every step uses: bounded transport retries (backoff + jitter + Retry-After, done by
    the openai client) and the per-request timeout from the spec. The key never leaves this object."""
    urls = list(getattr(endpoint, "base_urls", None) or [endpoint.base_url])
    return TimedOpenAILLM(model=endpoint.model, base_url=urls[0], extra_base_urls=urls[1:], api_key=reveal(endpoint.api_key),
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
        spec = validate_spec(json.loads(self.spec_json))
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
        spec = validate_spec(json.loads(self.spec_json))
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
            errors = {rid: no_answer_reason(x, self.steps, self.output_keys()) for x in buf
                      if any(x.get(k) is None for k in self.output_keys()) for rid in self.row_ids(x)}
            won = False
            if not failed:
                rows = [row for x, st in zip(buf, stats) for row in self.build_rows(spec, x, st, price)]
                rows += self.prefilled.get(r["shard_id"], [])
                errors = {x["id"]: x["error"] for x in rows if x.get("error") and x.get("status", "ok") != "ok"}
                won = commit(shard_path(Path(self.out_dir), r["shard_id"]), rows)
                r["committed"] = won
            entry = {"shard": r["shard_id"], "phase": self.phase, "committed": won,
                     "requests": sum(int(x.get("attempts") or 1) for x in buf) * len(self.steps),
                     "rows": sum(len(self.row_ids(x)) for x in buf), "prompt_tokens": p_tok, "completion_tokens": c_tok,
                     "cost_usd": budget.cost(p_tok, c_tok, price), "endpoint": self.base_url, "errors": errors}
            if not failed and not won:
                entry["duplicate"] = True  # another writer committed it first: spend only, rows kept as theirs
            budget.record(Path(self.out_dir), entry)
        yield inputs

    def output_keys(self) -> list[str]:
        """The answer columns a row needs before its shard can be committed."""
        return ["generation"]

    def row_ids(self, x: dict) -> list[str]:
        """The ids of the rows one answered request becomes (several for a batch request)."""
        return [x["request_id"]]

    def build_rows(self, spec: TaskSpec, x: dict, stats: list[dict], price) -> list[dict]:
        return [self.build(spec, x, stats, price)]

    def build(self, spec: TaskSpec, x: dict, stats: list[dict], price) -> dict:
        """The committed row for one answered request (curation/generation/judge.py's CommitCandidates builds
        candidate records instead)."""
        return to_row(spec, x, x["generation"], stats[0], self.model_name, self.base_url, price,
                      int(x.get("attempts") or 1))


def no_answer_reason(x: dict, steps: list[str], keys: list[str]) -> str:
    """Why a row got no answer: the request's own error (TimedOpenAILLM), else distilabel's."""
    for step in steps:
        err = stats_of(x, step).get("error")
        if err:
            return str(err)
    return f"no answer from the teacher ({'/'.join(k for k in keys if x.get(k) is None)} missing; the step failed)"


def to_row(spec: TaskSpec, req: dict, raw: str | None, st: dict, model: str, base_url: str, price, attempts: int = 1,
           error: str | None = None, parsed: tuple[dict | None, str] | None = None) -> dict:
    """One shard row. `prompt`/`completion` are rebuilt from text/answer by `collect`. `parsed`:
    the answer already parsed (one message of a batch answer, curation/generation/batched.py)."""
    p_tok, c_tok = int(st.get("input_tokens") or 0), int(st.get("output_tokens") or 0)
    fields, err = (None, error) if error else parsed or formats.parse(spec, raw, st.get("finish_reason"), c_tok)
    if err and attempts > 1:
        err = f"{err} (after {attempts} attempts)"
    return {"id": req["request_id"], "label": req["label"], "text": (fields or {}).get("text", ""),
            "answer": (fields or {}).get("answer", ""), "strategy": req["strategy"], "attributes": req["attributes"],
            "parent_id": req.get("parent_id", ""), "teacher_model": model, "endpoint": st.get("served_by") or base_url,
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


def ledger(out_dir: Path) -> list[dict]:
    """The spend ledger with each shard committed at most once: a later `committed` entry for a shard
    already committed (a second writer, or a ledger from before commits were exclusive) is kept
    for its spend but read as not committed. Progress and exactly-once checks read this view."""
    seen: set[str] = set()
    out = []
    for e in budget.read_ledger(out_dir):
        if e.get("committed"):
            if e.get("shard") in seen:
                e = {**e, "committed": False, "duplicate": True}
            seen.add(e.get("shard"))
        out.append(e)
    return out


def last_errors(out_dir: Path) -> dict[str, dict]:
    """shard id -> its latest ledger entry that has per-row reasons (failed or uncommitted shards)."""
    out: dict[str, dict] = {}
    for e in budget.read_ledger(out_dir):
        if e.get("errors"):
            out[e["shard"]] = e
    return out


def commit(path: Path, rows: list[dict]) -> bool:
    """Write a shard exactly once: temp file + fsync, then hard-link it into place, which fails if
    the shard already exists. Returns False (and writes nothing) when another writer, or an earlier
    run, committed it first: re-committing a shard is a no-op, never a second version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: check, then rename (the run lock
            if path.exists():  # already keeps a second writer out; this is the second line)
                return False
            os.replace(tmp, path)
        _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
