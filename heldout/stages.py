"""Held-out stages: lock (or verify an existing lock) and evaluate base / student / teacher."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import datasets

from rich.console import Console
from rich.table import Table

from distilforge.atomic import atomic_write_json
from distilforge.layout import Run
from distilforge.manifest import Stage, read_json, read_manifest, sha256_json, verified_output
from distilforge.spec import TaskSpec
from heldout import evaluate as ev
from heldout.lock import HeldoutError, load_locked, lock, verify

if TYPE_CHECKING:
    from distilforge.teacher import Endpoint

console = Console(stderr=True)


def lock_stage(spec: TaskSpec, run: Path, force: bool = False) -> dict:
    """Lock once. An existing lock is verified, never silently replaced (that would bless an edit)."""
    from distilforge.stage import scoped

    spec = scoped(spec, "heldout")  # only the spec blocks PIPELINE declares for this stage
    r = Run(run)
    d = r.heldout
    if r.lock_json.exists() and not force:
        info = verify(spec.heldout, spec, d)
        console.print(f"held-out: verified {info['n']} locked rows (sha256 {info['sha256'][:12]})")
        return info
    info = lock(spec.heldout, spec, d)
    console.print(f"held-out: locked {info['n']} rows from {info['source']} (sha256 {info['sha256'][:12]})")
    return info


def _student_adapters(run: Path, tm: dict) -> dict[str, Path]:
    """{'student_sft': ..., 'student_dpo': ...} when DPO ran, else {'student': kept adapter}."""
    d = Run(run).train
    if tm.get("dpo"):
        return {"student_sft": d / tm["sft"]["adapter"], "student_dpo": d / tm["dpo"]["adapter"]}
    return {"student": d / tm.get("adapter", "adapter")}


def trained_prompt(spec: TaskSpec, train_m: dict) -> tuple[str, str]:
    """(mode, system text) the kept adapter was trained with, as the train stage recorded them.

    A manifest from before `student.prompt` existed was trained on the full prompt. The recorded
    text wins over today's spec: an adapter is scored (and exported) with what it learned on."""
    mode = train_m.get("prompt") or "full"
    return mode, train_m.get("system_prompt") or spec.system_prompt(mode)


@dataclass
class EvalContext:
    """What a format's `evaluate` scores with: the verified locked rows (sampled by `eval.max_rows`),
    the base model, the student adapters and the prompt they were trained with, the teacher (None:
    not scored) and the traffic stage's dev split (None when there is none)."""

    spec: TaskSpec
    rows: datasets.Dataset  # id, text, label (the format's target string)
    base: str  # local folder of the student's base model
    adapters: dict[str, Path]  # {"student": ...} or {"student_sft": ..., "student_dpo": ...}
    kept: dict  # which adapter the train stage kept, and why
    student_mode: str  # "short" | "full"
    student_system: str  # the system prompt the adapters were trained with
    endpoint: Endpoint | None
    dev: tuple | None  # (dev rows, hash)

    def full_prompts(self, texts: list[str]) -> list[list[dict]]:
        """The prompts of the base model and the teacher (never trained on this task)."""
        return [self.spec.student_prompt(t, "full") for t in texts]

    def trained_prompts(self, texts: list[str]) -> list[list[dict]]:
        return [[{"role": "system", "content": self.student_system}, {"role": "user", "content": t}] for t in texts]

    # ------------------------------------------------------------------ answers kept between evals
    answers: Path | None = None  # RUN/eval/answers; None: nothing kept (every answer asked again)
    reused: list[str] = field(default_factory=list)  # which answer sets came from an earlier eval

    def _model_key(self, model: str) -> dict:
        """What makes a model's answers differ: for the base its folder and weight files; for the
        teacher what eval asks it with (eval asks at temperature 0). An embedded teacher's ports
        change every start and are left out; a remote server's address is part of the key."""
        if model == "base":
            d = Path(self.base)
            files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in d.iterdir() if f.is_file()) \
                if d.is_dir() else []
            return {"base": str(d.resolve()), "files": files}
        t = self.spec.teacher
        remote = sorted(self.endpoint.base_urls) if self.endpoint is not None and self.endpoint.kind != "embedded" else None
        return {"teacher": t.model, "endpoint": t.endpoint, "urls": remote, "max_tokens": t.max_tokens,
                "structured_output": t.structured_output}

    def reuse(self, model: str, name: str, inputs: Any, compute: Callable[[], Any]) -> Any:
        """`compute()`, or the answers an earlier eval of this run got for exactly the same model and
        inputs. Why: the base and the teacher do not change between evals of one run (a loop round,
        a retrain, `eval --force`), and re-asking them is most of an eval's time with the teacher on
        every row (742 s of the 1.5B here on 400 rows) or, with a hosted teacher, its bill. The
        student is always scored afresh. The file holds answers only, under RUN/eval (which only
        eval reads), keyed by a hash of model and inputs; any change asks again."""
        if self.answers is None:
            return compute()
        key = sha256_json({"model": self._model_key(model), "name": name, "inputs": inputs})
        path = self.answers / f"{name}.json"
        try:
            got = read_json(path, HeldoutError)
        except HeldoutError:  # a damaged cache file is asked again, never trusted
            got = None
        if isinstance(got, dict) and got.get("key") == key:
            self.reused.append(name)
            value = got["value"]
            return tuple(value) if got.get("tuple") else value
        value = compute()
        atomic_write_json(path, {"key": key, "tuple": isinstance(value, tuple), "value": value})
        return value


def eval_stage(spec: TaskSpec, run: Path, endpoint: Endpoint | None = None, force: bool = False) -> dict:
    """Score on the verified held-out set; writes eval/metrics.json, a manifest, and the model card.

    What is scored and how is the task format's (heldout/formats: `evaluate`); every format's
    metrics give each model a `score` (its headline metric, named in `metric`), `score_ci` and the
    `rows` it stands on, which is what `decide`, the report and the table read.

    With DPO, SFT and SFT+DPO are both scored; `student` is the adapter the train stage kept
    (chosen on its validation rows, never here), with a `kept` field saying which and why.
    Prompts: each adapter is scored with exactly the prompt it was trained with (`trained_prompt`);
    the base model and the teacher, never trained on this task, get the full prompt.
    """
    from distilforge.stage import scoped

    spec = scoped(spec, "eval")  # only the spec blocks PIPELINE declares for this stage
    from distilforge.card import write_card
    from distilforge.models import student_base_dir
    from heldout.formats import task_format

    fmt = task_format(spec)
    r = Run(run)
    d = r.heldout
    info = verify(spec.heldout, spec, d)  # refuses on any change
    train_m = read_manifest(r.train)
    if not train_m:
        raise HeldoutError(f"{r.train}: no trained student (run `distilforge train` first)")
    base_name = train_m.get("base_model") or spec.student.base
    base = train_m.get("base_dir") if Path(train_m.get("base_dir") or "/nonexistent").exists() else None
    base = base or student_base_dir(base_name)  # the base the adapter was trained on, not today's spec
    adapters = _student_adapters(run, train_m)
    mode, student_system = trained_prompt(spec, train_m)
    cfg = {"eval": spec.eval.model_dump(), "teacher": spec.teacher.model if spec.eval.teacher else None,
           "type": spec.type, "labels": spec.label_names, "system": spec.system_prompt("full"), "student": base_name,
           "student_prompt": mode, "student_system": student_system}
    dev = _dev_split(r)  # the traffic stage's dev split (real inputs), scored next to the locked test set
    inputs = {"heldout": info["sha256"], "adapter": train_m["adapter_sha256"],
              **({"dpo_adapter": train_m["dpo"]["adapter_sha256"]} if train_m.get("dpo") else {}),
              **({"traffic_dev": dev[1]} if dev else {})}
    st = Stage(r.eval, "eval", inputs, cfg)
    if st.is_current() and not force:
        console.print("eval: inputs unchanged, skipped")
        return read_manifest(r.eval)
    st.begin()
    rows = load_locked(d)
    rows = rows.select(ev.sample_rows(len(rows), spec.eval.max_rows))
    kept = train_m.get("kept") or {"which": "sft", "why": "SFT only (trained before DPO support)", "selected_on": None}
    ctx = EvalContext(spec, rows, base, adapters, kept, mode, student_system,
                      endpoint if spec.eval.teacher else None, dev if dev and len(dev[0]) else None,
                      answers=r.eval / "answers")
    metrics = {"type": spec.type, "metric": fmt.headline_metric, "n": len(rows), "heldout_sha256": info["sha256"],
               "adapter_sha256": train_m["adapter_sha256"], "row_ids": list(rows["id"]), **fmt.evaluate(ctx)}
    for m in metrics["models"].values():  # predictions stay out of metrics.json; no held-out text anywhere
        m.pop("predictions", None)
    metrics["reused_answers"] = ctx.reused  # answer sets an earlier eval of this run already had
    if ctx.reused:
        console.print(f"eval: answers reused from an earlier eval of the same rows, unchanged models: "
                      f"{', '.join(ctx.reused)} ({ctx.answers})")
    atomic_write_json(r.metrics, metrics)
    out = st.finish(n=len(rows), metric=fmt.headline_metric, reused_answers=ctx.reused,
                    score={k: v["score"] for k, v in metrics["models"].items()},
                    **({"accuracy": {k: v["accuracy"] for k, v in metrics["models"].items()}}
                       if fmt.headline_metric == "accuracy" else {}),
                    kept=kept, metrics_sha256=sha256_json(metrics))
    write_card(run, metrics)
    print_table(metrics)
    return out


def _dev_split(r: Run):
    """(dev rows, hash) when the traffic stage wrote a dev split, re-hashed (an edited split is refused)."""
    m = read_manifest(r.traffic)
    if not m or "dev" not in (m.get("outputs") or {}):
        return None
    return verified_output(r.traffic, "dev", f"distilforge traffic {r.root}")


def print_table(metrics: dict) -> None:
    """The headline table: each model's `score` (the format's metric), CI, the rows it stands on,
    and the format's secondary numbers (`table`); then the dev split, when scored, apart."""
    name_of = {"accuracy": "accuracy", "micro_f1": "micro field-F1", "win_or_tie": "win or tie vs teacher"}
    metric = name_of.get(metrics.get("metric", "accuracy"), metrics.get("metric", "accuracy"))
    models = metrics["models"]
    extra = list(dict.fromkeys(k for m in models.values() for k in (m.get("table") or {})))
    t = Table(title=f"held-out {metric} (n={metrics['n']}, locked)")
    for col in ("model", metric, "95% CI", "rows", *extra):
        t.add_column(col)
    for name in ("base", "teacher", "student_sft", "student_dpo", "student"):
        m = models.get(name)
        if m:
            lo, hi = m["score_ci"] if m.get("score_ci") else (float("nan"), float("nan"))
            shown = f"student (kept: {m['kept']['which']})" if name == "student" and m.get("kept") else name
            cells = [f"{(m.get('table') or {}).get(k):.3f}" if isinstance((m.get("table") or {}).get(k), float)
                     else str((m.get("table") or {}).get(k, "")) for k in extra]
            score = f"{m['score']:.3f}" if m.get("score") is not None else "-"
            t.add_row(shown, score, f"[{lo:.3f}, {hi:.3f}]", str(m.get("rows", metrics["n"])), *cells)
    Console().print(t)
    dev = metrics.get("dev")
    if dev:  # a separate table: another yardstick (real traffic, teacher or gold labels), not the locked test set
        t = Table(title=f"{dev['what']} {metric} (n={dev['n']}, real traffic; not the locked test set)")
        for col in ("model", metric, "95% CI"):
            t.add_column(col)
        for name in ("base", "student"):
            lo, hi = dev[name]["score_ci"]
            t.add_row(name, f"{dev[name]['score']:.3f}", f"[{lo:.3f}, {hi:.3f}]")
        Console().print(t)
