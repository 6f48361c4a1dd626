"""Teacher-made preference pairs: N candidate answers per row, scored by validators and a judge.

For each ok row (the student's prompt), the teacher answers `candidates` times at temperature, as
separate requests (llama-cpp-python ignores `n>1`). Each candidate is scored:
  validity  0 when it fails the task's validator (label not in the set, schema-invalid, empty);
  judge     `yesno`: the teacher at temperature 0 says whether the answer is correct (1/0); for
            classification the candidate's agreement with the label the teacher wrote the message
            for counts as a second vote. `rubric`: 1-5 with a rationale, for strong teachers only
            (small models rate off-topic text 4-5 and everything 3 on a scale).
  score = 0 if invalid else 1 + judge (0..1), so 0..2.
chosen = best, rejected = worst, kept only with margin >= `min_margin`; ties are dropped.
Task-aware hard negatives are added without any request: classification → the nearest other label
by embedding of label descriptions (curation/preferences.py), extraction → the reference answer
with one field changed but still schema-valid.
"""
import json
from pathlib import Path

import datasets
from jinja2 import Template

from distilabel.steps import StepInput
from distilabel.steps.tasks import Task

from curation import formats
from heldout.formats import task_format
from curation.generation import budget, plan
from curation.generation.gensteps import AnswerGeneration, CommitShards, SentinelAware, committed_shards, llm, read_shard
from curation.generation.runner import run_pipeline
from distilforge.spec import TaskSpec
from distilforge.teacher import Endpoint

PAIR_FEATURES = formats.features(
    id="string", source_id="string", kind="string", prompt="chat", chosen="chat", rejected="chat",
    chosen_score="float64", rejected_score="float64", margin="float64", rationale="string")
YESNO_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
                "required": ["answer"]}
RUBRIC_SCHEMA = {"type": "object", "properties": {"rationale": {"type": "string"},
                                                  "score": {"type": "integer", "minimum": 1, "maximum": 5}},
                 "required": ["rationale", "score"]}


def judge_kind(spec: TaskSpec, endpoint: Endpoint) -> str:
    j = spec.generation.preferences.judge
    return ("yesno" if endpoint.kind == "embedded" else "rubric") if j == "auto" else j


class Judge(SentinelAware, Task):
    """Asks the teacher whether a candidate answer is right (yes/no) or rates it 1-5 with a rationale.

    A Task of our own because no distilabel judge fits: UltraFeedback/QualityScorer use 1-10 or
    multi-aspect scales that small teachers cannot use, and we need the raw verdict kept per row."""

    kind: str = "yesno"

    @property
    def inputs(self):
        return ["instruction", "text", "candidate"]

    @property
    def outputs(self):
        return ["judgement", "model_name"]

    def format_input(self, input: dict):  # type: ignore[override]
        name = f"judge_{self.kind}_v1"
        user = Template(formats.template_text(name)).render(
            instruction=input["instruction"], input_text=input["text"], answer=input.get("candidate") or "(no answer)")
        return [{"role": "system", "content": formats.system_text(name)}, {"role": "user", "content": user}]

    def format_output(self, output, input=None):  # type: ignore[override]
        return {"judgement": output}

    def process(self, inputs: StepInput):  # type: ignore[override]
        """Keep the answer step's statistics: a Task replaces `distilabel_metadata` with its own."""
        prev = [dict(r.get("distilabel_metadata") or {}) for r in inputs]
        outs = next(super().process(inputs))
        for o, p in zip(outs, prev):
            o["distilabel_metadata"] = {**p, **(o.get("distilabel_metadata") or {})}
        yield outs


def parse_judgement(kind: str, raw: str | None) -> tuple[float | None, str]:
    """→ (0..1 or None when unparsable, rationale)."""
    if not raw:
        return None, "judge: empty output"
    s = raw.strip()
    try:
        obj = json.loads(s)
    except json.JSONDecodeError:
        obj = None
    if kind == "yesno":
        word = (obj.get("answer", "") if isinstance(obj, dict) else s).strip().strip(".!\"'").lower()
        word = word.split()[0] if word.split() else ""
        return ({"yes": 1.0, "no": 0.0}.get(word), "" if word in ("yes", "no") else f"judge: unparsable {s[:40]!r}")
    if isinstance(obj, dict) and isinstance(obj.get("score"), (int, float)) and 1 <= obj["score"] <= 5:
        return (float(obj["score"]) - 1) / 4, str(obj.get("rationale", ""))
    return None, f"judge: unparsable {s[:40]!r}"


def validate_answer(spec: TaskSpec, answer: str | None) -> tuple[str | None, str]:
    """A candidate answer → (normalized answer, "") or (None, why it is invalid)."""
    return task_format(spec).validate_answer(answer)


def candidate_record(spec: TaskSpec, x: dict, stats: list[dict], model: str, price) -> dict:
    """One committed candidate: its answer, validity, judge score and spend."""
    kind = x["judge_kind"]
    ans, why = validate_answer(spec, x.get("candidate"))
    j, rationale = parse_judgement(kind, x.get("judgement"))
    agree = task_format(spec).candidate_agreement(ans, x) if kind == "yesno" else None
    if agree is not None:  # the candidate agrees with the label the row was written for: a second vote
        j = agree if j is None else (j + agree) / 2
    score = 0.0 if ans is None else 1.0 + (j or 0.0)
    p = sum(int(s.get("input_tokens") or 0) for s in stats)
    c = sum(int(s.get("output_tokens") or 0) for s in stats)
    return {"id": x["request_id"], "source_id": x["source_id"], "k": x["k"], "answer": ans or (x.get("candidate") or ""),
            "valid": ans is not None, "error": why, "judge": j, "rationale": rationale or why, "score": score,
            "teacher_model": model, "prompt_tokens": p, "completion_tokens": c,
            "cost_usd": round(budget.cost(p, c, price), 8)}


class CommitCandidates(CommitShards):
    """Commits judged candidate answers (the `prefs` phase) instead of task rows."""

    def output_keys(self) -> list[str]:
        return ["candidate", "judgement"]

    def build(self, spec: TaskSpec, x: dict, stats: list[dict], price) -> dict:
        return candidate_record(spec, x, stats, self.model_name, price)


def plan_candidates(spec: TaskSpec, rows: datasets.Dataset, kind: str) -> list[dict]:
    pr = spec.generation.preferences
    ok = [r for r in rows if r["status"] == "ok"]
    if pr.max_rows:
        ok = ok[: pr.max_rows]
    key = {"t": pr.temperature, "n": pr.candidates, "kind": kind, "teacher": plan.teacher_key(spec),
           "sys": spec.system_prompt()}
    reqs = []
    for r in ok:
        for k in range(pr.candidates):
            reqs.append({"request_id": "c-" + plan.h(r["id"], k, key)[:16], "source_id": r["id"], "k": k,
                         "text": r["text"], "label": r["label"], "instruction": spec.instruction, "judge_kind": kind})
    per = spec.generation.shard_size * pr.candidates
    reqs.sort(key=lambda r: (plan.h(r["source_id"]), r["k"]))  # a row's candidates stay in one shard
    for i in range(0, len(reqs), per):
        group = reqs[i:i + per]
        sid = "p-" + plan.h([r["request_id"] for r in group])[:12]
        for r in group:
            r["shard_id"], r["shard_n"] = sid, len(group)
    return reqs


def run_preferences(spec: TaskSpec, endpoint: Endpoint, out_dir: Path, rows: datasets.Dataset, caps: dict) -> tuple[dict, str | None]:
    pr, t = spec.generation.preferences, spec.teacher
    kind = judge_kind(spec, endpoint)
    reqs = plan_candidates(spec, rows, kind)
    done = committed_shards(out_dir)
    todo = [r for r in reqs if r["shard_id"] not in done]
    mode = formats.structured_mode(t, endpoint.kind)
    ans_extra = formats.extra_body(mode, task_format(spec).answer_request_schema())
    j_extra = formats.extra_body(mode, YESNO_SCHEMA if kind == "yesno" else RUBRIC_SCHEMA, "verdict")
    j_tokens = 16 if kind == "yesno" else pr.judge_max_tokens

    def middle(c: int):
        return [AnswerGeneration(name="answer", llm=llm(endpoint, t, pr.temperature, t.max_tokens, ans_extra),
                               template="{{ text }}", columns=["text"], system_prompt=spec.system_prompt(),
                               output_mappings={"generation": "candidate"}, input_batch_size=c,
                               add_raw_output=False, add_raw_input=False),
                Judge(name="judge", kind=kind, llm=llm(endpoint, t, 0.0, j_tokens, j_extra), input_batch_size=c,
                      add_raw_output=False, add_raw_input=False)]

    stopped = run_pipeline(spec, endpoint, todo, out_dir, "prefs", middle, ["answer", "judge"], caps,
                           commit=CommitCandidates) if todo else None
    pending = len({r["shard_id"] for r in reqs} - committed_shards(out_dir))
    return {"candidate_requests": len(reqs), "judge": kind, "pending_shards": pending}, stopped


def _candidates(out_dir: Path, reqs: list[dict]) -> dict[str, list[dict]]:
    by_src: dict[str, list[dict]] = {}
    for sid in sorted({r["shard_id"] for r in reqs} & committed_shards(out_dir)):
        for c in read_shard(out_dir, sid):
            by_src.setdefault(c["source_id"], []).append(c)
    return by_src


def _msg(content: str) -> list[dict]:
    return [{"role": "assistant", "content": content}]


def judged_pairs(spec: TaskSpec, rows: datasets.Dataset, out_dir: Path, kind: str) -> tuple[list[dict], dict[str, float]]:
    """Pairs from committed candidates, plus a per-row judge score (classification: agreement)."""
    pr = spec.generation.preferences
    cands = _candidates(out_dir, plan_candidates(spec, rows, kind))
    by_id = {r["id"]: r for r in rows}
    pairs, agree = [], {}
    for src, cs in cands.items():
        if len(cs) < pr.candidates or src not in by_id:
            continue
        cs = sorted(cs, key=lambda c: c["k"])
        valid = [c for c in cs if c["valid"]]
        votes = [task_format(spec).candidate_agreement(c["answer"], by_id[src]) for c in valid]
        if None not in votes:  # types with one right answer: the share of valid candidates that agree
            agree[src] = sum(votes) / len(votes) if votes else 0.0
        best = max(cs, key=lambda c: c["score"])
        worst = min(cs, key=lambda c: c["score"])
        margin = best["score"] - worst["score"]
        if margin < pr.min_margin or best["answer"] == worst["answer"]:
            continue  # a tie or too close to call: teaches nothing reliable
        pairs.append({"id": "pp-" + src.removeprefix("g-"), "source_id": src, "kind": "judged",
                      "prompt": spec.student_prompt(by_id[src]["text"]), "chosen": _msg(best["answer"]),
                      "rejected": _msg(worst["answer"]), "chosen_score": best["score"], "rejected_score": worst["score"],
                      "margin": margin, "rationale": json.dumps({"chosen": best["rationale"],
                                                                 "rejected": worst["rationale"]}, ensure_ascii=False)})
    return pairs, agree


def hard_negatives(spec: TaskSpec, rows: datasets.Dataset) -> list[dict]:
    """Pairs made without any request: the task format's wrong answer for each ok row."""
    ok = [r for r in rows if r["status"] == "ok"]

    def confusable() -> dict[str, list[str]]:  # `training` is not generate's block: the default k
        from curation.preferences import confusable_labels

        return confusable_labels(spec)

    out = []
    for n in task_format(spec).hard_negatives(ok, confusable):
        r = n["row"]
        out.append({"id": "hn-" + r["id"].removeprefix("g-"), "source_id": r["id"], "kind": "hard_negative",
                    "prompt": r["prompt"], "chosen": r["completion"], "rejected": _msg(n["rejected"]),
                    "chosen_score": None, "rejected_score": None, "margin": None, "rationale": n["why"]})
    return out


def collect_prefs(spec: TaskSpec, endpoint: Endpoint, rows: datasets.Dataset, out_dir: Path) -> tuple[datasets.Dataset, dict[str, float]]:
    pairs, agree = judged_pairs(spec, rows, Path(out_dir), judge_kind(spec, endpoint))
    if spec.generation.preferences.hard_negatives:
        pairs += hard_negatives(spec, rows)
    # from_dict: `from_list([])` with fixed features raises "Keys mismatch" when no pair came out
    # (every candidate invalid, or no judged row): no pairs is a result, not a crash
    cols = {k: [p.get(k) for p in pairs] for k in PAIR_FEATURES}
    return datasets.Dataset.from_dict(cols, features=PAIR_FEATURES), agree
