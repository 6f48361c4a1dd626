"""What one stage hands the next as JSON, read back as typed records instead of `.get() or {}` chains.

Two files cross stage boundaries as results: `eval/metrics.json` (the held-out scores, written by
heldout/stages.py `eval_stage` and heldout/evaluate.py `endpoint_eval`) and `decide/decision.json`
(the verdict, written by decision/cli.py `decide_run` from decision/economics.py `decide`). The
writers keep building plain dicts, so the bytes on disk are what they always were; these records
are how a reader (decide, the report) sees them.

Reading is lenient on purpose: every field a writer may leave out is Optional, a `null` or empty
value reads as the field's default (absent), and unknown fields are kept (`extra="allow"`), so a
file from an older or newer run still reads. A number keeps the type it was written with (int or
float). `read(run)` returns None when the file is absent (or an empty object); invalid JSON or a
field of the wrong type is one error line naming the file (and the field).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Optional, Union

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationInfo, field_validator

from distilforge.layout import Run
from distilforge.manifest import read_json
from distilforge.yamlfile import validated


def _number(v: Any) -> Union[int, float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"a number is expected, got {v!r}")
    return v


# A JSON number as written: an int stays an int (a value passed on is never rewritten from 40 to 40.0).
Num = Annotated[Union[int, float], PlainValidator(_number)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_absent(cls, v: Any, info: ValidationInfo) -> Any:
        """`null`, `{}` and `[]` read as the field's default: a reader never tells "empty" from "absent"."""
        if v is None or (isinstance(v, (dict, list)) and not v):
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)
        return v


class _RunFile(_Record):
    """A record stored at one path of the run layout (`_at` names the `Run` property)."""

    _at: ClassVar[str]

    @classmethod
    def path(cls, run: str | Path | Run) -> Path:
        return getattr(Run(run), cls._at)

    @classmethod
    def read(cls, run: str | Path | Run, error: type[Exception] = ValueError):
        """The record in `run`, or None when its file is absent (or an empty object); a broken file
        raises `error` with one line naming it."""
        p = cls.path(run)
        raw = read_json(p, error)
        if not raw:
            return None
        return validated(cls, raw, str(p), error)


# ---------------------------------------------------------------- eval/metrics.json

class Tokens(_Record):
    """Teacher tokens spent scoring the held-out rows (evaluate.score_teacher)."""

    prompt: Optional[int] = None
    completion: Optional[int] = None
    calls: Optional[int] = None
    servers: Optional[int] = None
    seconds: Optional[Num] = None


class ModelScore(_Record):
    """One scored model in metrics.json `models` (evaluate.summarize, plus per-model extras)."""

    accuracy: Optional[Num] = None
    accuracy_ci: Optional[list[Num]] = None  # [lo, hi] (decide checks the length, naming the file)
    macro_f1: Optional[Num] = None
    per_label: dict[str, dict[str, Any]] = {}  # label -> {accuracy, precision, f1, n}
    confusion: Optional[list[list[int]]] = None  # rows = gold labels; a wider row has an "(other)" column
    correct: Optional[list[int]] = None  # 0/1 per scored row, in row_ids order
    kept: Optional[dict[str, Any]] = None  # `student` only: which adapter the train stage kept and why
    tokens: Optional[Tokens] = None  # `teacher` only
    model: Optional[str] = None  # `teacher` only
    rows: Optional[int] = None  # `teacher` only: how many rows it scored
    row_ids: Optional[list[str]] = None  # `teacher` only: its rows, when a subset


class Metrics(_RunFile):
    """`eval/metrics.json`: every model scored on the locked held-out set."""

    _at = "metrics"

    n: Optional[int] = None
    labels: Optional[list[str]] = None
    heldout_sha256: Optional[str] = None
    adapter_sha256: Optional[str] = None
    row_ids: Optional[list[str]] = None
    models: dict[str, ModelScore] = {}  # base, student, student_sft, student_dpo, teacher
    comparisons: dict[str, dict[str, Any]] = {}  # paired bootstraps: student_vs_base, ...
    per_label: dict[str, Any] = {}
    served: dict[str, dict[str, Any]] = {}  # `eval --endpoint` results next to the student


# ---------------------------------------------------------------- decide/decision.json

class Costs(_Record):
    hosted_per_task_usd: Optional[Num] = None
    finetune_per_task_usd: Optional[Num] = None
    generation_usd: Optional[Num] = None
    training_usd: Optional[Num] = None
    other_upfront_usd: Optional[Num] = None
    serving_fixed_usd: Optional[Num] = None
    serving_hours: Optional[Num] = None
    finetune_fixed_usd: Optional[Num] = None
    lifetime_tasks: Optional[Num] = None
    hosted_total_usd: Optional[Num] = None
    finetune_total_usd: Optional[Num] = None
    savings_usd: Optional[Num] = None
    savings_fraction: Optional[Num] = None
    break_even_tasks: Optional[Num] = None
    break_even_tasks_per_month: Optional[Num] = None
    volume_for_margin_tasks: Optional[Num] = None


class Quality(_Record):
    status: Optional[str] = None  # ok | inconclusive | worse | unknown
    rule: Optional[str] = None
    student_model: Optional[str] = None
    student_accuracy: Optional[Num] = None
    student_ci: Optional[list[Num]] = None
    teacher_accuracy: Optional[Num] = None
    teacher_ci: Optional[list[Num]] = None
    tolerance: Optional[Num] = None
    n: Optional[int] = None


class PrecheckAnswer(_Record):
    key: Optional[str] = None
    question: Optional[str] = None
    answer: Optional[str] = None  # "yes" | "no" | None (unanswered)
    evidence: Optional[str] = None
    source: Optional[str] = None  # "user" | "computed"


class PricedServing(_Record):
    """The measured serving rate decide priced (economics.measured_serving)."""

    unit: Optional[str] = None  # "core" | "gpu"
    price_per_hour: Optional[Num] = None
    tasks_per_hour: Optional[Num] = None
    per_task_usd: Optional[Num] = None


class Serving(_Record):
    mode: Optional[str] = None  # "measured" | "assumed"
    measured: Optional[dict[str, Any]] = None  # what was measured, where
    priced: Optional[PricedServing] = None
    assumption: Optional[str] = None
    replaced: Optional[str] = None  # the assumption a measurement replaced
    note: Optional[str] = None


class Decision(_RunFile):
    """`decide/decision.json`: the fine-tune-or-not verdict and every number behind it."""

    _at = "decision"

    verdict: Optional[str] = None
    verdict_detail: Optional[str] = None
    verdict_line: Optional[str] = None
    reasons: list[str] = []
    missing: list[str] = []
    inputs: dict[str, Any] = {}  # EconInputs as recorded, plus `sources` (input -> where it came from)
    costs: Costs = Costs()
    quality: Quality = Quality()
    precheck: list[PrecheckAnswer] = []
    serving: Optional[Serving] = None
    run: Optional[str] = None
    config_file: Optional[str] = None
    hosted_model: Optional[str] = None
    created: Optional[str] = None
    plot: Optional[str] = None  # relative to RUN, when the costs were all known
