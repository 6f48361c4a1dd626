"""Fine-tune vs stay-on-the-hosted-model economics: pure arithmetic, no I/O, no plotting.

Why pure: the verdict is the toolkit's whole point, so every number behind it must be
reproducible by hand from the recorded inputs (tests do exactly that). decision/cli.py gathers the
inputs from a run directory and a config; this module only turns inputs into a decision.

Cost model over the horizon (lifetime volume V = tasks/month x months):
  hosted(V)    = V * c_h,      c_h = (tokens_in * price_in + tokens_out * price_out) / 1e6
  finetune(V)  = F + V * c_s,  F   = generation + GPU $/h * GPU hours + other upfront
                                     + serving $/h * serving hours (a fixed cost: the box runs
                                       whether or not requests come)
                               c_s = (tokens_in + tokens_out) * serving $/1M tokens / 1e6
The student is assumed to see the same prompt and emit an answer as long as the hosted one
(`tokens per task` applies to both); give `serving_per_m_tokens` accordingly.
Break-even volume V0 = F / (c_h - c_s) (none when c_h <= c_s). The margin rule needs
finetune(V) <= (1 - margin) * hosted(V), i.e. V >= F / ((1 - margin) c_h - c_s).

Measured serving (replaces the always-on box when it is known): a serve benchmark
(benchmarks/serving.py) or a served eval measures tasks per core-hour (or per GPU-hour) of the
exported student; with the user's price of a core-hour / GPU-hour the serving cost becomes per
task, c_s = price per core-hour / measured tasks per core-hour (the cheaper of CPU and GPU when
both are known), and the fixed serving term is 0: capacity is assumed to follow load (billed
core-hours = tasks / measured throughput). The decision records the assumption it replaced.

GPU cost is never guessed: a CPU run's time is not scaled into GPU hours. Without a GPU rate and
hours (given, or measured on a GPU by the train stage) the fine-tune cost is unknown and the
verdict says `needs input`.

Quality rule (CI-aware non-inferiority on the locked held-out set), with tol = quality_tolerance,
on the task's headline score (`metric`: accuracy for classification, micro field-F1 for
extraction; the `student_accuracy` / `teacher_accuracy` inputs hold that score whatever its name):
  worse        : student CI upper bound < teacher score - tol (the data show it is worse)
  inconclusive : not worse, but the student's point score < teacher score - tol
                 (the CI still allows "equal": more held-out data / a better student needed)
  ok           : student point score >= teacher score - tol (which implies the CI upper
                 bound is too, i.e. the looser "upper bound >= teacher" rule also holds)
Instruction tasks (`metric` win_or_tie) have no teacher score: the teacher's replies are the
reference the student's are judged against (`eval.judge`: both orders, or graded; heldout/pairwise.py). "At least equal"
is then "the student wins at least as often as it loses": with w = (wins + ties / 2) / n (the
tie-half win rate; w >= 0.5 exactly when wins >= losses), the same rule reads with 0.5 in the
teacher's place: worse when w's CI upper bound < 0.5 - tol, ok when w >= 0.5 - tol, else
inconclusive.

Verdict, first match wins:
  1. quality worse                                   -> stay hosted (however cheap)
  2. pre-check `no` on prompting / retrieval          -> stay hosted (says which)
  3. any needed input unknown                        -> needs input (lists them)
  4. fine-tune never cheaper per task (c_s >= c_h)   -> stay hosted
  5. savings < margin at the planned volume          -> need more data / more volume (volume)
  6. quality inconclusive                            -> need more data / more volume (data)
  7. otherwise                                       -> fine-tune
Pre-check questions are phrased so that `yes` favours fine-tuning; an unanswered one is noted in
the verdict line but does not block it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from distilforge.card import pairwise_method
from distilforge.errors import UserError

METRICS = ("accuracy", "micro_f1", "win_or_tie")  # eval's headline metrics (heldout/formats)
HOURS_PER_MONTH = 730.0  # 24 * 365 / 12: an always-on serving box

FINE_TUNE = "fine-tune"
STAY = "stay hosted"
MORE = "need more data / more volume"
NEEDS_INPUT = "needs input"

PRECHECK_QUESTIONS = {
    "prompting_fails": "Does prompting (better instructions, few-shot) fail consistently on this task?",
    "retrieval_tools_insufficient": "Do retrieval or tools still fail to fix it?",
    "volume_justifies": "Does the expected volume justify the upfront fine-tune cost?",
}


class EconomicsError(UserError, ValueError):
    """Bad economics input, phrased as the one line a user should see."""


@dataclass
class PreCheck:
    key: str
    answer: bool | None = None  # None = not answered
    evidence: str | None = None  # a link / path / sentence backing the answer
    source: str = "user"  # "user" or "computed"

    @property
    def question(self) -> str:
        return PRECHECK_QUESTIONS.get(self.key, self.key)

    def to_dict(self) -> dict:
        return {"key": self.key, "question": self.question, "answer": _yes_no(self.answer),
                "evidence": self.evidence, "source": self.source}


@dataclass
class EconInputs:
    """Everything the verdict depends on; `None` means "not known" (never silently zero)."""

    hosted_in_per_m: float | None = None
    hosted_out_per_m: float | None = None
    tokens_in_per_task: float | None = None
    tokens_out_per_task: float | None = None
    tasks_per_month: float | None = None
    months: float | None = None
    generation_cost_usd: float | None = None
    gpu_per_hour: float | None = None
    gpu_hours: float | None = None
    serving_per_hour: float | None = None
    serving_hours: float | None = None  # over the whole horizon; default always-on
    serving_per_m_tokens: float | None = None
    core_hour_usd: float | None = None  # user's price of one CPU core for an hour (serving)
    serving_gpu_hour_usd: float | None = None  # user's price of one serving GPU for an hour
    tasks_per_core_hour: float | None = None  # measured: serve benchmark / served eval
    tasks_per_gpu_hour: float | None = None  # measured on a GPU
    serving_measured: dict | None = None  # what was measured, where (shown in the report)
    other_upfront_usd: float = 0.0
    # quality on the locked held-out set: the headline score named by `metric` (eval's `score`)
    student_accuracy: float | None = None
    student_ci: tuple[float, float] | None = None
    teacher_accuracy: float | None = None
    teacher_ci: tuple[float, float] | None = None
    metric: str = "accuracy"  # accuracy | micro_f1 | win_or_tie
    pairwise: dict | None = None  # win_or_tie: the student vs the teacher (wins, ties, losses, n, ...)
    n_heldout: int | None = None
    # When the teacher was scored on a subset of the locked rows (eval.teacher_max_per_label /
    # teacher_max_rows), the student's score above is its score on those same rows, so both numbers
    # stand on one sample; `student_all_rows` keeps its score on every scored row, for the record.
    same_rows: int | None = None
    student_all_rows: float | None = None
    student_model: str | None = None
    margin: float = 0.20
    quality_tolerance: float = 0.0
    prechecks: dict[str, PreCheck] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # field -> where its value came from

    def validate(self) -> None:
        for name in ("hosted_in_per_m", "hosted_out_per_m", "tokens_in_per_task", "tokens_out_per_task",
                     "tasks_per_month", "generation_cost_usd", "gpu_per_hour", "gpu_hours",
                     "serving_per_hour", "serving_hours", "serving_per_m_tokens", "other_upfront_usd",
                     "core_hour_usd", "serving_gpu_hour_usd"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or math.isnan(v) or v < 0):
                raise EconomicsError(f"{name}: must be a number >= 0, got {v!r}")
        for name in ("tasks_per_core_hour", "tasks_per_gpu_hour"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or math.isnan(v) or v <= 0):
                raise EconomicsError(f"{name}: a measured throughput must be > 0, got {v!r}")
        if self.months is not None and not self.months > 0:
            raise EconomicsError(f"months: must be > 0, got {self.months!r}")
        if not 0 <= self.margin < 1:
            raise EconomicsError(f"margin: must be in [0, 1), got {self.margin!r}")
        if not 0 <= self.quality_tolerance < 1:
            raise EconomicsError(f"quality_tolerance: must be in [0, 1), got {self.quality_tolerance!r}")
        for name in ("student_accuracy", "teacher_accuracy"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise EconomicsError(f"{name}: must be in [0, 1], got {v!r}")
        for name in ("student_ci", "teacher_ci"):
            v = getattr(self, name)
            if v is not None and (len(v) != 2 or not 0 <= v[0] <= v[1] <= 1):
                raise EconomicsError(f"{name}: must be [lo, hi] with 0 <= lo <= hi <= 1, got {v!r}")
        if self.metric not in METRICS:
            raise EconomicsError(f"metric: '{self.metric}' is not one of {', '.join(METRICS)}")
        if self.pairwise is not None:
            bad = [k for k in ("wins", "ties", "losses") if not isinstance(self.pairwise.get(k), int)
                   or isinstance(self.pairwise.get(k), bool) or self.pairwise[k] < 0]
            if bad:
                raise EconomicsError(f"pairwise: {', '.join(bad)} must be counts >= 0, got {self.pairwise!r}")
        for key in self.prechecks:
            if key not in PRECHECK_QUESTIONS:
                raise EconomicsError(f"precheck.{key}: unknown question (known: {', '.join(PRECHECK_QUESTIONS)})")


def _yes_no(b: bool | None) -> str | None:
    return None if b is None else ("yes" if b else "no")


def hosted_cost_per_task(inp: EconInputs) -> float | None:
    if None in (inp.hosted_in_per_m, inp.hosted_out_per_m, inp.tokens_in_per_task, inp.tokens_out_per_task):
        return None
    return (inp.tokens_in_per_task * inp.hosted_in_per_m + inp.tokens_out_per_task * inp.hosted_out_per_m) / 1e6


def measured_serving(inp: EconInputs) -> dict | None:
    """Per-task serving cost from measured throughput and a core-/GPU-hour price, when both are known.

    {"per_task_usd", "unit": "core" | "gpu", "price_per_hour", "tasks_per_hour"}; the cheaper unit
    when both are measured and priced; None when no measured-and-priced unit exists."""
    options = []
    if inp.core_hour_usd is not None and inp.tasks_per_core_hour:
        options.append({"unit": "core", "price_per_hour": inp.core_hour_usd, "tasks_per_hour": inp.tasks_per_core_hour,
                        "per_task_usd": inp.core_hour_usd / inp.tasks_per_core_hour})
    if inp.serving_gpu_hour_usd is not None and inp.tasks_per_gpu_hour:
        options.append({"unit": "gpu", "price_per_hour": inp.serving_gpu_hour_usd, "tasks_per_hour": inp.tasks_per_gpu_hour,
                        "per_task_usd": inp.serving_gpu_hour_usd / inp.tasks_per_gpu_hour})
    return min(options, key=lambda o: o["per_task_usd"]) if options else None


def _assumed_serving(inp: EconInputs) -> str | None:
    """The always-on / per-token assumption, in words (what a measurement replaces)."""
    bits = []
    if inp.serving_per_hour is not None:
        hours = inp.serving_hours if inp.serving_hours is not None else (
            inp.months * HOURS_PER_MONTH if inp.months is not None else None)
        bits.append(f"${inp.serving_per_hour:g}/h " + ("always-on" if inp.serving_hours is None else f"for {hours:,.0f} h")
                    + (f" = {_money(inp.serving_per_hour * hours)} over the horizon" if hours is not None else ""))
    if inp.serving_per_m_tokens is not None:
        bits.append(f"${inp.serving_per_m_tokens:g} per 1M tokens")
    return " + ".join(bits) or None


def serving_costs(inp: EconInputs) -> tuple[float | None, float | None, float | None]:
    """(fixed serving $ over the horizon, serving $ per task, serving hours used); None = unknown.

    A measured throughput with a price (`measured_serving`) wins over the assumed box."""
    m = measured_serving(inp)
    if m is not None:
        return 0.0, m["per_task_usd"], None
    if inp.serving_per_hour is None and inp.serving_per_m_tokens is None:
        return None, None, None
    hours = None
    fixed = 0.0
    if inp.serving_per_hour is not None:
        hours = inp.serving_hours
        if hours is None:
            if inp.months is None:
                return None, None, None
            hours = inp.months * HOURS_PER_MONTH
        fixed = inp.serving_per_hour * hours
    per_task = 0.0
    if inp.serving_per_m_tokens is not None:
        if inp.tokens_in_per_task is None or inp.tokens_out_per_task is None:
            return fixed, None, hours
        per_task = (inp.tokens_in_per_task + inp.tokens_out_per_task) * inp.serving_per_m_tokens / 1e6
    return fixed, per_task, hours


def training_cost(inp: EconInputs) -> float | None:
    if inp.gpu_per_hour is None or inp.gpu_hours is None:
        return None
    return inp.gpu_per_hour * inp.gpu_hours


# Above this share of ties the judge did not separate the replies (a position-biased small judge
# answers "A" in both orders: every row a tie), so "wins >= losses" would be 0 >= 0, not evidence.
MAX_TIE_SHARE = 0.75


def win_rate(pw: dict) -> tuple[float, tuple[float, float] | None]:
    """The tie-half win rate of a pairwise record and its CI (eval's when recorded)."""
    n = pw["wins"] + pw["ties"] + pw["losses"]
    ci = pw.get("win_rate_tie_half_ci")
    return (pw["wins"] + pw["ties"] / 2) / n, (tuple(ci) if ci and len(ci) == 2 else None)


def _pairwise_status(inp: EconInputs) -> str:
    pw = inp.pairwise
    if not pw or not pw["wins"] + pw["ties"] + pw["losses"]:
        return "unknown"
    w, ci = win_rate(pw)
    bar = 0.5 - inp.quality_tolerance
    if (ci[1] if ci else w) < bar:
        return "worse"
    if pw["ties"] > MAX_TIE_SHARE * (pw["wins"] + pw["ties"] + pw["losses"]):
        return "inconclusive"  # a judge that cannot tell the replies apart (e.g. always "A") proves nothing
    # wins >= losses, in counts (no float rounding at exactly 0.5); a tolerance lowers the bar
    if pw["wins"] >= pw["losses"] or w >= bar:
        return "ok"
    return "inconclusive"


def quality_status(inp: EconInputs) -> str:
    """"ok" / "inconclusive" / "worse" / "unknown" (see the module docstring for the rule)."""
    if inp.metric == "win_or_tie":
        return _pairwise_status(inp)
    if inp.student_accuracy is None or inp.teacher_accuracy is None:
        return "unknown"
    bar = inp.teacher_accuracy - inp.quality_tolerance
    hi = inp.student_ci[1] if inp.student_ci else inp.student_accuracy
    if hi < bar:
        return "worse"
    if inp.student_accuracy < bar:
        return "inconclusive"
    return "ok"


def break_even_volume(fixed: float, c_hosted: float, c_student: float, margin: float = 0.0) -> float | None:
    """Smallest lifetime volume where fine-tune total <= (1 - margin) * hosted total; None if never."""
    denom = (1 - margin) * c_hosted - c_student
    if denom <= 0:
        return None
    return fixed / denom


def cost_lines(decision: dict, volumes: list[float]) -> tuple[list[float], list[float]]:
    """Hosted and fine-tune lifetime cost at each volume, from a decision dict (for the plot)."""
    c = decision["costs"]
    ch, cs, fixed = c["hosted_per_task_usd"], c["finetune_per_task_usd"], c["finetune_fixed_usd"]
    if ch is None or cs is None or fixed is None:
        raise EconomicsError("cost_lines: the decision has unknown costs (verdict needs input)")
    return [v * ch for v in volumes], [fixed + v * cs for v in volumes]


def _money(x: float | None) -> str:
    return "?" if x is None else f"{'-' if x < 0 else ''}${abs(x):,.2f}"


def _money6(x: float) -> str:
    return f"${x:.6f}" if x < 0.01 else _money(x)


def _acc(a: float | None, ci) -> str:
    if a is None:
        return "?"
    return f"{a:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _named(inp: EconInputs) -> str:
    """The metric's name before a score ("" for accuracy: the classification lines read as always)."""
    return "" if inp.metric == "accuracy" else f"{inp.metric} "


def _wtl(pw: dict) -> str:
    return f"{pw['wins']} wins / {pw['ties']} ties / {pw['losses']} losses"


def _quality_reason(inp: EconInputs, q: str) -> str:
    """Why the quality is what it is, in one clause of the verdict (worse / inconclusive / ok)."""
    m = _named(inp)
    if inp.metric == "win_or_tie":
        pw = inp.pairwise
        w, ci = win_rate(pw)
        n = pw["wins"] + pw["ties"] + pw["losses"]
        judged = f"against the teacher in {pairwise_method(inp.pairwise)} judging (n={n}): {_wtl(pw)}"
        if q == "worse":
            return (f"student is significantly worse {judged}; tie-half win rate {_acc(w, ci)}, CI upper bound "
                    f"{(ci[1] if ci else w):.3f} < 0.5 - tolerance {inp.quality_tolerance:g}")
        if q == "inconclusive" and pw["ties"] > MAX_TIE_SHARE * n:
            return (f"quality inconclusive: the judge could not tell the replies apart {judged} (over "
                    f"{MAX_TIE_SHARE:.0%} ties); use a stronger judge or more held-out rows")
        if q == "inconclusive":
            return (f"quality inconclusive: the student loses more often than it wins {judged}, but the tie-half "
                    f"win rate's CI {_acc(w, ci)} includes 0.5; more held-out data or a better student is needed")
        return f"wins >= losses {judged}"
    if q == "worse":
        return (f"student is significantly worse: {m}CI upper bound "
                f"{inp.student_ci[1] if inp.student_ci else inp.student_accuracy:.3f}"
                f" < teacher {inp.teacher_accuracy:.3f} - tolerance {inp.quality_tolerance:g}")
    if q == "inconclusive":
        return (f"quality inconclusive: student {m}{_acc(inp.student_accuracy, inp.student_ci)} below teacher "
                f"{inp.teacher_accuracy:.3f} but its CI includes it (n={inp.n_heldout}); more held-out "
                "data or a better student is needed")
    return f"student {m}{_acc(inp.student_accuracy, inp.student_ci)} vs teacher {inp.teacher_accuracy:.3f}"


def _quality_rule(metric: str) -> str:
    if metric == "win_or_tie":
        return ("pairwise vs the teacher, w = (wins + ties/2) / n: ok if wins >= losses (w >= 0.5 - tol); "
                "worse if w's CI upper < 0.5 - tol; else inconclusive")
    return f"ok if student {metric} >= teacher - tol; worse if student CI upper < teacher - tol; else inconclusive"


def decide(inp: EconInputs) -> dict:
    """The decision as a JSON-able dict: verdict, reasons, every input and computed number."""
    inp.validate()
    missing: list[str] = []
    if inp.hosted_in_per_m is None or inp.hosted_out_per_m is None:
        missing.append("hosted price per 1M input/output tokens (--hosted-in-per-m, --hosted-out-per-m)")
    if inp.tokens_in_per_task is None or inp.tokens_out_per_task is None:
        missing.append("tokens per task (measured by eval's teacher calls, or --tokens-in/--tokens-out)")
    if inp.tasks_per_month is None or inp.months is None:
        missing.append("volume (--tasks-per-month, --months)")
    if inp.generation_cost_usd is None:
        missing.append("generation cost (generate stage's tokens, or generation_cost_usd)")
    if training_cost(inp) is None:
        missing.append("fine-tune cost unknown: training GPU $/h and GPU hours (--gpu-per-hour, --gpu-hours; "
                       "a CPU run's time is not scaled)")
    fixed_serving, c_s, serving_hours = serving_costs(inp)
    if fixed_serving is None or c_s is None:
        missing.append("serving cost (--serving-per-hour [--serving-hours], --serving-per-m-tokens, or "
                       "serving.core_hour_usd with a measured serve benchmark)")
    measured = measured_serving(inp)
    serving = {"mode": "measured" if measured else "assumed", "measured": inp.serving_measured,
               "priced": measured, "assumption": _assumed_serving(inp),
               "replaced": _assumed_serving(inp) if measured else None, "note": None}
    if not measured and inp.serving_measured and inp.core_hour_usd is None and inp.serving_gpu_hour_usd is None:
        serving["note"] = "serving throughput was measured but no core-hour / GPU-hour price is given (serving.core_hour_usd)"
    elif not measured and (inp.core_hour_usd is not None or inp.serving_gpu_hour_usd is not None):
        serving["note"] = "a core-hour / GPU-hour price is given but no serving throughput was measured " \
                          "(run benchmarks/serving.py or `eval --endpoint` on the served student)"
    q = quality_status(inp)
    if q == "unknown":
        missing.append("quality: the student's pairwise wins / ties / losses against the teacher from eval "
                       "(RUN/eval/metrics.json)" if inp.metric == "win_or_tie" else
                       f"quality: student and teacher {'accuracy' if inp.metric == 'accuracy' else inp.metric} "
                       "from eval (RUN/eval/metrics.json)")

    c_h = hosted_cost_per_task(inp)
    train = training_cost(inp)
    volume = inp.tasks_per_month * inp.months if inp.tasks_per_month is not None and inp.months else None
    fixed = None
    if None not in (inp.generation_cost_usd, train, fixed_serving):
        fixed = inp.generation_cost_usd + train + inp.other_upfront_usd + fixed_serving
    hosted_total = ft_total = savings = frac = be = be_margin = None
    if c_h is not None and volume is not None:
        hosted_total = volume * c_h
    if None not in (fixed, c_s, c_h):
        be = break_even_volume(fixed, c_h, c_s)
        be_margin = break_even_volume(fixed, c_h, c_s, inp.margin)
        if volume is not None:
            ft_total = fixed + volume * c_s
            savings = hosted_total - ft_total
            frac = savings / hosted_total if hosted_total > 0 else None

    prechecks = {k: PreCheck(k) for k in PRECHECK_QUESTIONS}
    prechecks.update({k: p for k, p in inp.prechecks.items()})
    vol = prechecks["volume_justifies"]
    if vol.answer is None and frac is not None:
        prechecks["volume_justifies"] = PreCheck(
            "volume_justifies", frac >= inp.margin, "decision.json#costs (savings fraction vs margin)", "computed")

    reasons: list[str] = []
    detail = None
    nos = [p for k, p in prechecks.items() if p.answer is False and k != "volume_justifies"]
    if q == "worse":
        verdict = STAY
        reasons.append(_quality_reason(inp, q))
    elif nos:
        verdict = STAY
        reasons += [f"pre-check answered no: {p.question} (evidence: {p.evidence or 'none given'})" for p in nos]
    elif missing:
        verdict = NEEDS_INPUT
        reasons += [f"missing: {m}" for m in missing]
    elif c_s >= c_h:
        verdict = STAY
        reasons.append(f"fine-tuned per-task cost {_money(c_s)} >= hosted {_money(c_h)}: never cheaper at any volume")
    elif frac is None or frac < inp.margin or prechecks["volume_justifies"].answer is False:
        verdict, detail = MORE, "volume"
        pct = "?" if frac is None else f"{frac:.0%}"
        need = "never" if be_margin is None else f"{be_margin:,.0f} tasks"
        reasons.append(f"savings {pct} < margin {inp.margin:.0%} at {volume:,.0f} tasks; the margin needs {need}")
    elif q == "inconclusive":
        verdict, detail = MORE, "data"
        reasons.append(_quality_reason(inp, q))
    else:
        verdict = FINE_TUNE
        reasons.append(f"saves {_money(savings)} ({frac:.0%} >= margin {inp.margin:.0%}) and quality is at least "
                       f"equal ({_quality_reason(inp, q)})")
    unanswered = [k for k, p in prechecks.items() if p.answer is None]

    line = f"VERDICT: {verdict}"
    if detail:
        line += f" ({detail})"
    if savings is not None and frac is not None:
        line += (f" | savings {_money(savings)} ({frac:.0%}) over {inp.months:g} months at "
                 f"{inp.tasks_per_month:,.0f} tasks/month")
    costs_known = None not in (fixed, c_s, c_h)
    line += f" | break-even {f'{be:,.0f} tasks' if be is not None else ('never' if costs_known else '?')}"
    if inp.metric == "win_or_tie":
        line += f" | student vs hosted: {_wtl(inp.pairwise) if inp.pairwise else '?'} ({pairwise_method(inp.pairwise)})"
    else:
        line += (f" | student {_named(inp)}{_acc(inp.student_accuracy, inp.student_ci)} vs hosted "
                 f"{_acc(inp.teacher_accuracy, inp.teacher_ci)}")
        if inp.same_rows:
            line += f" on the teacher's {inp.same_rows} rows"
            if inp.student_all_rows is not None:
                line += f" (student on every scored row: {inp.student_all_rows:.3f})"
    if measured:
        per = measured["tasks_per_hour"] / 3600
        line += (f" | serving measured: {per:,.2f} tasks/s per {measured['unit']} at ${measured['price_per_hour']:g}/"
                 f"{measured['unit']}-hour = {_money6(measured['per_task_usd'])}/task"
                 + (f" (replaces {serving['replaced']})" if serving["replaced"] else ""))
    if unanswered:
        line += f" | pre-check unanswered: {', '.join(unanswered)}"

    inputs = asdict(inp)
    inputs.pop("prechecks")
    inputs["student_ci"] = list(inp.student_ci) if inp.student_ci else None
    inputs["teacher_ci"] = list(inp.teacher_ci) if inp.teacher_ci else None
    return {
        "verdict": verdict,
        "verdict_detail": detail,
        "verdict_line": line,
        "reasons": reasons,
        "missing": missing,
        "inputs": inputs,
        "costs": {
            "hosted_per_task_usd": c_h,
            "finetune_per_task_usd": c_s,
            "generation_usd": inp.generation_cost_usd,
            "training_usd": train,
            "other_upfront_usd": inp.other_upfront_usd,
            "serving_fixed_usd": fixed_serving,
            "serving_hours": serving_hours,
            "finetune_fixed_usd": fixed,
            "lifetime_tasks": volume,
            "hosted_total_usd": hosted_total,
            "finetune_total_usd": ft_total,
            "savings_usd": savings,
            "savings_fraction": frac,
            "break_even_tasks": be,
            "break_even_tasks_per_month": be / inp.months if be is not None and inp.months else None,
            "volume_for_margin_tasks": be_margin,
        },
        "quality": {
            "status": q,
            "rule": _quality_rule(inp.metric),
            "metric": inp.metric,
            "student_model": inp.student_model,
            "student_accuracy": inp.student_accuracy,
            "student_ci": inputs["student_ci"],
            "teacher_accuracy": inp.teacher_accuracy,
            "teacher_ci": inputs["teacher_ci"],
            "tolerance": inp.quality_tolerance,
            "n": inp.n_heldout,
            **({"same_rows": inp.same_rows, "student_all_rows": inp.student_all_rows} if inp.same_rows else {}),
            **({"pairwise": inp.pairwise} if inp.pairwise is not None else {}),
        },
        "precheck": [p.to_dict() for p in prechecks.values()],
        "serving": serving,
    }
