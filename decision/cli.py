"""`decide`, `report` and `abtest`: thin CLI layers over `decide_run`, `report.render_report` and
`abtest.readout_files`.

Where the decision's inputs come from, in order (each one's source is recorded in decision.json):
command-line flag > `--config decide.yaml` > measured in the run (eval's teacher token counts,
generate's cost/tokens, a GPU train run's time) > the spec's teacher prices. Nothing is invented:
an input found nowhere stays unknown and the verdict says `needs input`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import BaseModel, ConfigDict, Field

from distilforge.atomic import atomic_path, atomic_write_json
from distilforge.card import headline, judge_of, metric_of, pairwise_of
from distilforge.layout import Run
from distilforge.manifest import read_json
from distilforge.records import Decision, GenerationResult, Metrics, ModelScore, StageManifest, TrainResult
from distilforge.runctx import check_run, cli_errors, fail, prepare
from distilforge.yamlfile import read_yaml, validated
from decision import abtest as ab
from decision.economics import EconInputs, EconomicsError, PreCheck, decide

STUDENT_KEYS = ("student", "student_dpo", "student_sft")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Hosted(_Strict):
    model: Optional[str] = None
    price_in_per_m: Optional[float] = Field(None, ge=0)
    price_out_per_m: Optional[float] = Field(None, ge=0)


class _Tokens(_Strict):
    input: Optional[float] = Field(None, ge=0)  # prompt tokens of one task
    output: Optional[float] = Field(None, ge=0)  # answer tokens of one task


class _Volume(_Strict):
    tasks_per_month: Optional[float] = Field(None, ge=0)
    months: Optional[float] = Field(None, gt=0)  # how long the task runs (the horizon)


class _Training(_Strict):
    gpu_per_hour: Optional[float] = Field(None, ge=0)  # USD
    gpu_hours: Optional[float] = Field(None, ge=0)  # None: the train stage's own time when it ran on a GPU


class _Serving(_Strict):
    per_hour: Optional[float] = Field(None, ge=0)
    hours: Optional[float] = Field(None, ge=0)
    per_m_tokens: Optional[float] = Field(None, ge=0)
    core_hour_usd: Optional[float] = Field(None, ge=0)  # with a measured throughput: cost per task
    gpu_hour_usd: Optional[float] = Field(None, ge=0)
    benchmark: Optional[str] = None  # serve benchmark JSON; None = RUN/serve/benchmark.json
    quant: str = "q8_0"  # which measured student GGUF the cost is for


class _Answer(_Strict):
    answer: Optional[bool] = None
    evidence: Optional[str] = None


class _Precheck(_Strict):
    prompting_fails: _Answer = _Answer()
    retrieval_tools_insufficient: _Answer = _Answer()
    volume_justifies: _Answer = _Answer()


class DecideConfig(_Strict):
    """The `decide.yaml` schema (see examples/banking77/decide.yaml)."""

    hosted: _Hosted = _Hosted()
    tokens_per_task: _Tokens = _Tokens()
    volume: _Volume = _Volume()
    generation_cost_usd: Optional[float] = Field(None, ge=0)
    training: _Training = _Training()
    serving: _Serving = _Serving()
    other_upfront_usd: float = Field(0.0, ge=0)
    margin: float = Field(0.20, ge=0, lt=1)
    quality_tolerance: float = Field(0.0, ge=0, lt=1)
    student_model: Optional[str] = None
    precheck: _Precheck = _Precheck()


def load_config(path: str | Path | None) -> DecideConfig:
    if path is None:
        return DecideConfig()
    raw = read_yaml(path, "decide config", EconomicsError)
    return validated(DecideConfig, raw, str(path), EconomicsError)


def _read_json(path: Path) -> dict | None:
    return read_json(path, EconomicsError)


def pick_student(models: dict, wanted: str | None = None) -> str | None:
    if wanted:
        if wanted not in models:
            raise EconomicsError(f"student_model: '{wanted}' not in eval metrics (have: {', '.join(models)})")
        return wanted
    return next((k for k in STUDENT_KEYS if k in models), None)


def _score(m: ModelScore, where: str) -> tuple[float | None, tuple[float, float] | None]:
    """A model's headline score and CI (`score` / `score_ci`; `accuracy` / `accuracy_ci` in metrics
    written before every entry carried `score`), the CI checked to be [lo, hi]."""
    value, ci = headline(m)
    name = "accuracy_ci" if getattr(m, "score", None) is None and m.accuracy is not None else "score_ci"
    if ci is None:
        return value, None
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        raise EconomicsError(f"{where}: {name} must be [lo, hi], got {ci!r}")
    return value, (float(ci[0]), float(ci[1]))


def _same_rows(inp: EconInputs, metrics: Metrics, key: str, src: dict) -> None:
    """A teacher scored on a subset is compared with the student on that subset: the student's
    score on all rows against the teacher's on a sample would compare two samples (on the Banking77
    demo the student scored 0.980 on one 100-row subset and 0.877 on the other 300 rows). Only the
    kept student has its same-rows score in `comparisons.student_vs_teacher`."""
    same = metrics.comparisons.get("student_vs_teacher") or {}
    t_rows, ci = getattr(metrics.models["teacher"], "rows", None), same.get("student_score_ci")
    if (key != "student" or same.get("student_score") is None or not t_rows or not metrics.n
            or t_rows >= metrics.n or not ci or len(ci) != 2):
        return
    inp.student_all_rows = inp.student_accuracy
    inp.student_accuracy, inp.student_ci = float(same["student_score"]), (float(ci[0]), float(ci[1]))
    inp.same_rows = inp.n_heldout = int(t_rows)
    src["quality"] = (f"measured: eval/metrics.json comparisons.student_vs_teacher (the student on the teacher's "
                      f"{t_rows} rows) vs models.teacher")


_PAIRWISE_KEYS = ("n", "wins", "ties", "losses", "win_rate", "tie_rate", "loss_rate", "win_rate_tie_half",
                  "win_rate_tie_half_ci", "unparsable", "position_bias")


def gather_inputs(run: str | Path, cfg: DecideConfig, overrides: dict[str, Any] | None = None) -> EconInputs:
    """Collect the economics inputs for `run` (flags in `overrides` win; None = not given)."""
    r = Run(run)
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    src: dict[str, str] = {}
    inp = EconInputs(margin=cfg.margin, quality_tolerance=cfg.quality_tolerance,
                     other_upfront_usd=cfg.other_upfront_usd, sources=src)

    def put(name: str, cfg_value: Any, cfg_where: str, measured: Any = None, measured_where: str = "") -> None:
        for value, where in ((ov.get(name), f"flag --{name.replace('_', '-')}"), (cfg_value, f"config {cfg_where}"),
                             (measured, measured_where)):
            if value is not None:
                setattr(inp, name, float(value))
                src[name] = where
                return

    spec = _read_json(r.spec_json) or {}
    teacher = spec.get("teacher") or {}
    sp_in, sp_out = teacher.get("price_in_per_m"), teacher.get("price_out_per_m")
    spec_priced = bool(sp_in or sp_out)
    put("hosted_in_per_m", cfg.hosted.price_in_per_m, "hosted.price_in_per_m",
        sp_in if spec_priced else None, "spec.json teacher.price_in_per_m")
    put("hosted_out_per_m", cfg.hosted.price_out_per_m, "hosted.price_out_per_m",
        sp_out if spec_priced else None, "spec.json teacher.price_out_per_m")

    metrics = Metrics.read(r, EconomicsError) or Metrics()
    models = metrics.models
    tok = models["teacher"].tokens if "teacher" in models else None
    calls = (tok and tok.calls) or metrics.n
    m_in = m_out = None
    if calls and tok and tok.prompt is not None and tok.completion is not None:
        m_in, m_out = tok.prompt / calls, tok.completion / calls
    where = f"measured: eval/metrics.json models.teacher.tokens over {calls} calls"
    put("tokens_in_per_task", cfg.tokens_per_task.input, "tokens_per_task.input", m_in, where)
    put("tokens_out_per_task", cfg.tokens_per_task.output, "tokens_per_task.output", m_out, where)
    put("tasks_per_month", cfg.volume.tasks_per_month, "volume.tasks_per_month")
    put("months", cfg.volume.months, "volume.months")

    gen = GenerationResult.read(r, EconomicsError) or GenerationResult()
    g_cost, g_where = None, ""
    if gen.cost_usd:
        g_cost, g_where = gen.cost_usd, "measured: generate/manifest.json cost_usd"
    elif gen.tokens and inp.hosted_in_per_m is not None and inp.hosted_out_per_m is not None:
        t = gen.tokens
        g_cost = ((t.prompt or 0) * inp.hosted_in_per_m + (t.completion or 0) * inp.hosted_out_per_m) / 1e6
        g_where = "generate/manifest.json tokens priced at the hosted rates (the teacher ran at $0)"
    # Labelling real traffic is teacher work for the dataset too: priced the same way, never dropped.
    traffic = StageManifest.in_folder(r.traffic, EconomicsError)
    t_tok = ((traffic.model_extra or {}).get("teacher") or {}).get("tokens") if traffic else None
    if t_tok and inp.hosted_in_per_m is not None and inp.hosted_out_per_m is not None:
        t_cost = ((t_tok.get("prompt") or 0) * inp.hosted_in_per_m + (t_tok.get("completion") or 0) * inp.hosted_out_per_m) / 1e6
        g_cost = (g_cost or 0.0) + t_cost
        g_where = " + ".join(w for w in (g_where, "traffic/manifest.json labelling tokens at the hosted rates") if w)
    put("generation_cost_usd", cfg.generation_cost_usd, "generation_cost_usd", g_cost, g_where)

    train = TrainResult.read(r, EconomicsError) or TrainResult()
    device = str(train.device or "").lower()
    gpu_measured = None
    if train.seconds is not None and ("cuda" in device or "gpu" in device):
        gpu_measured = float(train.seconds) / 3600  # a GPU run's own time; CPU time is never scaled
    put("gpu_per_hour", cfg.training.gpu_per_hour, "training.gpu_per_hour")
    put("gpu_hours", cfg.training.gpu_hours, "training.gpu_hours", gpu_measured,
        f"measured: train/manifest.json seconds on device {device!r}")
    put("serving_per_hour", cfg.serving.per_hour, "serving.per_hour")
    put("serving_hours", cfg.serving.hours, "serving.hours")
    put("serving_per_m_tokens", cfg.serving.per_m_tokens, "serving.per_m_tokens")
    put("core_hour_usd", cfg.serving.core_hour_usd, "serving.core_hour_usd")
    put("serving_gpu_hour_usd", cfg.serving.gpu_hour_usd, "serving.gpu_hour_usd")
    measured = measured_throughput(r.root, cfg, train.adapter_sha256)
    if measured:
        inp.tasks_per_core_hour = measured.get("tasks_per_core_hour")
        inp.tasks_per_gpu_hour = measured.get("tasks_per_gpu_hour")
        inp.serving_measured = measured
        src["tasks_per_core_hour"] = f"measured: {measured['source']}"
    for name in ("margin", "quality_tolerance", "other_upfront_usd"):
        if name in ov:
            setattr(inp, name, float(ov[name]))
            src[name] = f"flag --{name.replace('_', '-')}"

    key = pick_student(models, ov.get("student_model") or cfg.student_model)
    inp.metric = metric_of(metrics)
    if key and "teacher" in models:
        s, t = models[key], models["teacher"]
        inp.student_model = key
        inp.student_accuracy, inp.student_ci = _score(s, f"{r.metrics}: models.{key}")
        inp.teacher_accuracy, inp.teacher_ci = _score(t, f"{r.metrics}: models.teacher")
        inp.n_heldout = metrics.n
        src["quality"] = f"measured: eval/metrics.json models.{key} vs models.teacher"
        if inp.metric == "win_or_tie":  # the teacher is the reference: its wins / losses decide
            pw = pairwise_of(s)
            inp.pairwise = {k: pw[k] for k in _PAIRWISE_KEYS if k in pw} if pw else None
            if inp.pairwise is not None:  # how the judge judged: both orders (pairwise) or graded
                inp.pairwise["method"] = judge_of(metrics)["method"]
        else:
            _same_rows(inp, metrics, key, src)

    for k, ans in cfg.precheck.model_dump().items():
        if ans["answer"] is not None:
            inp.prechecks[k] = PreCheck(k, ans["answer"], ans["evidence"], "user")
    return inp


_QUANT_ORDER = ("q8_0", "q4_k_m", "f16")


def measured_throughput(run: Path, cfg: DecideConfig, adapter: str | None) -> dict | None:
    """The student's measured serving throughput, from a serve benchmark or else a served eval.

    Only measurements of the run's kept adapter count (a benchmark of another student would price
    the wrong model). From a benchmark: the wanted quantization (else q8_0, q4_k_m, f16), its best
    tasks/s per core over the concurrency levels measured. From a served eval: tasks/s of its one
    sequential client over the front's cores (a lower bound: one client never fills N replicas)."""
    p = Path(cfg.serving.benchmark) if cfg.serving.benchmark else Run(run).serve_benchmark
    b = _read_json(p)
    if b and (adapter is None or b.get("adapter_sha256") == adapter):
        rows = [r for r in b.get("results") or [] if r.get("model") == "student" and r.get("tasks_per_s")]
        for q in (cfg.serving.quant, *_QUANT_ORDER):
            mine = [r for r in rows if r.get("quant") == q]
            if mine:
                out: dict[str, Any] = {"source": str(p), "quant": q}
                cpu = [r for r in mine if r.get("device", "cpu") == "cpu" and r.get("tasks_per_s_per_core")]
                gpu = [r for r in mine if r.get("device") == "cuda"]
                if cpu:
                    best = max(cpu, key=lambda r: r["tasks_per_s_per_core"])
                    out.update(tasks_per_core_hour=best["tasks_per_s_per_core"] * 3600, cpu=best)
                if gpu:
                    best = max(gpu, key=lambda r: r["tasks_per_s"])
                    out.update(tasks_per_gpu_hour=best["tasks_per_s"] * 3600, gpu=best)
                if cpu or gpu:
                    return out
    for ep in sorted(Run(run).endpoint_results.glob("*.json")):
        e = _read_json(ep) or {}
        tp = e.get("throughput") or {}
        if e.get("adapter_sha256") == adapter and tp.get("tasks_per_s") and tp.get("cores"):
            row = {"tasks_per_s": tp["tasks_per_s"], "cores": tp["cores"], "concurrency": tp.get("concurrency"),
                   "tasks_per_s_per_core": tp["tasks_per_s"] / tp["cores"]}
            return {"source": str(ep), "quant": (e.get("meta") or {}).get("quant"), "cpu": row,
                    "tasks_per_core_hour": row["tasks_per_s_per_core"] * 3600}
    return None


def decide_run(run: str | Path, config: str | Path | DecideConfig | None = None,
               overrides: dict[str, Any] | None = None) -> dict:
    """Decide for `run`; writes RUN/decide/decision.json and cost_vs_volume.png; returns the dict."""
    run = Path(run)
    if not run.is_dir():
        raise EconomicsError(f"{run}: no such run directory")
    cfg = config if isinstance(config, DecideConfig) else load_config(config)
    d = decide(gather_inputs(run, cfg, overrides))
    d["run"] = str(run)
    d["config_file"] = None if config is None or isinstance(config, DecideConfig) else str(config)
    d["hosted_model"] = cfg.hosted.model
    d["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r = Run(run)
    r.decide.mkdir(parents=True, exist_ok=True)
    if d["costs"]["finetune_fixed_usd"] is not None and d["costs"]["hosted_per_task_usd"] is not None \
            and d["costs"]["finetune_per_task_usd"] is not None:
        from decision.report import plot_cost_vs_volume

        with atomic_path(r.cost_plot) as tmp:
            tmp.write_bytes(plot_cost_vs_volume(Decision.model_validate(d)))
        d["plot"] = r.cost_plot.relative_to(r.root).as_posix()
    atomic_write_json(r.decision, d)
    return d


@cli_errors
def decide_cmd(
    run: Annotated[Path, typer.Argument(help="run directory")],
    config: Annotated[Optional[Path], typer.Option("--config", help="decide.yaml with the economics inputs")] = None,
    hosted_in_per_m: Annotated[Optional[float], typer.Option("--hosted-in-per-m", help="hosted $ per 1M input tokens")] = None,
    hosted_out_per_m: Annotated[Optional[float], typer.Option("--hosted-out-per-m", help="hosted $ per 1M output tokens")] = None,
    tokens_in_per_task: Annotated[Optional[float], typer.Option("--tokens-in", help="input tokens per task (default: measured by eval)")] = None,
    tokens_out_per_task: Annotated[Optional[float], typer.Option("--tokens-out", help="output tokens per task (default: measured by eval)")] = None,
    tasks_per_month: Annotated[Optional[float], typer.Option("--tasks-per-month")] = None,
    months: Annotated[Optional[float], typer.Option("--months", help="horizon in months")] = None,
    gpu_per_hour: Annotated[Optional[float], typer.Option("--gpu-per-hour", help="training GPU $ per hour")] = None,
    gpu_hours: Annotated[Optional[float], typer.Option("--gpu-hours", help="training GPU hours")] = None,
    serving_per_hour: Annotated[Optional[float], typer.Option("--serving-per-hour", help="serving $ per hour")] = None,
    serving_hours: Annotated[Optional[float], typer.Option("--serving-hours", help="serving hours over the horizon (default always-on)")] = None,
    serving_per_m_tokens: Annotated[Optional[float], typer.Option("--serving-per-m-tokens", help="serving $ per 1M tokens")] = None,
    core_hour_usd: Annotated[Optional[float], typer.Option("--core-hour-usd", help="serving $ per CPU core-hour (priced at the measured throughput)")] = None,
    serving_gpu_hour_usd: Annotated[Optional[float], typer.Option("--gpu-hour-usd", help="serving $ per GPU-hour (priced at a measured GPU throughput)")] = None,
    generation_cost_usd: Annotated[Optional[float], typer.Option("--generation-cost", help="override the measured generation cost ($)")] = None,
    margin: Annotated[Optional[float], typer.Option("--margin", help="required savings fraction (default 0.2)")] = None,
) -> None:
    """Decide fine-tune vs stay hosted; writes RUN/decide/decision.json and prints the verdict line."""
    overrides = {k: v for k, v in locals().items() if k not in ("run", "config")}
    check_run(run)  # a missing RUN, or a file, is refused before anything is written
    try:
        d = decide_run(run, config, overrides)
    except (ValueError, OSError) as e:  # EconomicsError is a ValueError; a library's too: one line, rc 2
        fail(str(e))
    typer.echo(d["verdict_line"])
    for r in d["reasons"]:
        typer.echo(f"  - {r}")
    typer.echo(f"wrote {Run(run).decision}")


@cli_errors
def report_cmd(run: Annotated[Path, typer.Argument(help="run directory")],
               learning_curve: Annotated[Optional[Path], typer.Option(
                   "--learning-curve", help="a benchmarks/outcome.py results file: copied into RUN, shown with "
                   "this run's student on it")] = None) -> None:
    """Render RUN/report.html: one self-contained page that opens offline."""
    from decision.report import render_report
    from decision.report_curve import record_learning_curve

    check_run(run)  # a missing RUN, or a file, is refused before anything is written
    if learning_curve is not None:
        record_learning_curve(run, learning_curve)
    try:
        out = render_report(run)
    except (ValueError, OSError) as e:  # not one of ours: still one line, rc 2
        fail(str(e))
    typer.echo(f"wrote {out}")


@cli_errors
def abtest_cmd(
    a: Annotated[str, typer.Argument(help="arm A log (JSONL or CSV), e.g. hosted; with --shadow: arm A's endpoint URL")],
    b: Annotated[str, typer.Argument(help="arm B log (JSONL or CSV), e.g. fine-tuned; with --shadow: arm B's endpoint URL")],
    metric: Annotated[str, typer.Option("--metric", help="column with the per-request outcome/metric")] = "outcome",
    kind: Annotated[str, typer.Option("--kind", help="auto | rate | mean")] = "auto",
    mde: Annotated[Optional[float], typer.Option("--mde", help="minimum detectable effect (absolute)")] = None,
    power: Annotated[float, typer.Option("--power")] = 0.8,
    alpha: Annotated[float, typer.Option("--alpha")] = 0.05,
    planned_n: Annotated[Optional[int], typer.Option("--planned-n", help="planned sample size per arm")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="also write the readout as JSON here")] = None,
    shadow: Annotated[Optional[Path], typer.Option("--shadow", help="shadow mode: replay these inputs (JSONL, "
                                                   "{\"text\", \"label\"?}) through endpoints A and B")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="shadow: the run whose task prompt and labels to use")] = None,
    log: Annotated[Optional[Path], typer.Option("--log", help="shadow: where both arms' answers go (JSONL)")] = None,
    structured: Annotated[str, typer.Option("--structured", help="shadow: output constraint sent to both arms: "
                                            "none | llama_cpp | openai (a served student constrains itself)")] = "none",
) -> None:
    """A/B readout: effect, 95% CI, p-value, needed sample size, peeking warning.
    With --shadow: replay inputs through two endpoints, log both answers, read out agreement/latency/accuracy."""
    if shadow is not None:
        _shadow(a, b, shadow, run, log, structured, alpha, out)
        return
    try:
        r = ab.readout_files(a, b, metric=metric, kind=kind, mde=mde, power=power, alpha=alpha, planned_n=planned_n)
    except (ValueError, OSError) as e:  # ABTestError is a ValueError; a library's too: one line, rc 2
        fail(str(e))
    typer.echo(r["readout_line"])
    if r["required_n_per_arm"] is not None:
        typer.echo(f"  needed per arm for mde {mde:g} at power {power:g}: {r['required_n_per_arm']}")
    for w in r["warnings"]:
        typer.echo(f"  WARNING {w}", err=True)
    if out is not None:
        atomic_write_json(out, r)
        typer.echo(f"wrote {out}")


def _shadow(a: str, b: str, inputs: Path, run: Optional[Path], log: Optional[Path], structured: str, alpha: float,
            out: Optional[Path]) -> None:
    if run is None:
        fail("--shadow needs --run RUN (the task prompt and labels both arms are asked with)")
    spec = prepare(run)
    if not spec.label_names:  # both arms are asked for a label
        fail(f"--shadow: only classification tasks are compared so far ('{spec.name}' is {spec.type})")
    log = log or Run(run).shadow_log
    r = ab.shadow(inputs, a, b, system_prompt=spec.system_prompt(), labels=spec.label_names, log=log,
                  structured=structured, alpha=alpha)  # an ABTestError ends in one line, rc 2 (cli_errors)
    typer.echo(r["readout_line"])
    target = out or log.with_suffix(".readout.json")
    atomic_write_json(target, r)
    typer.echo(f"wrote {log} and {target}")


if __name__ == "__main__":  # python -m decision.cli decide|report|abtest ...
    _app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    _app.command("decide")(decide_cmd)
    _app.command("report")(report_cmd)
    _app.command("abtest")(abtest_cmd)
    _app(args=sys.argv[1:])
