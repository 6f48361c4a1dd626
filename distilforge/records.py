"""What one stage hands the next as JSON, read back as typed records instead of `.get() or {}` chains.

Results that cross stage boundaries: `eval/metrics.json` (the held-out scores, written by
heldout/stages.py `eval_stage` and heldout/served.py `endpoint_eval`), `decide/decision.json`
(the verdict, written by decision/cli.py `decide_run` from decision/economics.py `decide`), and
the stage manifests other packages read: `train/manifest.json` (`TrainResult`, training/stages.py
`train_stage`) and `generate/manifest.json` (`GenerationResult`, curation/stages.py
`generate_stage` plus the counts of curation/generation/generate.py `generate`). The writers keep building
plain dicts, so the bytes on disk are what they always were; these records are how a reader
(decide, the report, the model card, export) sees them.

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
from distilforge.manifest import MANIFEST, read_json
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
    def read(cls, run: str | Path | Run, error: type[Exception] = ValueError, hint: str = ""):
        """The record in `run`, or None when its file is absent (or an empty object); a broken file
        raises `error` with one line naming it (invalid JSON: `hint` appended, what to do)."""
        return cls.read_path(cls.path(run), error, hint)

    @classmethod
    def read_path(cls, p: str | Path, error: type[Exception] = ValueError, hint: str = ""):
        """`read` for a file at `p` (a record stored outside the run layout's named paths)."""
        raw = read_json(p, error, hint)
        if not raw:
            return None
        return validated(cls, raw, str(p), error)


# ---------------------------------------------------------------- eval/metrics.json

class Tokens(_Record):
    """Teacher tokens: spent scoring the held-out rows (evaluate.score_teacher), or generating the
    rows (generate manifest `tokens`: prompt and completion only)."""

    prompt: Optional[int] = None
    completion: Optional[int] = None
    calls: Optional[int] = None  # requests
    servers: Optional[int] = None  # replicas that answered
    seconds: Optional[Num] = None  # wall time


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


class DevScores(_Record):
    """metrics.json `dev`: base and the kept student on the traffic stage's dev split (real inputs,
    teacher or gold labels; curation/traffic.py). Another yardstick than the locked test set."""

    what: Optional[str] = None  # "dev (teacher labels)" | "dev (gold labels)"
    label_source: Optional[str] = None  # "teacher" | "gold"
    n: Optional[int] = None
    dev_sha256: Optional[str] = None
    student: Optional[ModelScore] = None  # accuracy, accuracy_ci, macro_f1
    base: Optional[ModelScore] = None


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
    dev: Optional[DevScores] = None  # the traffic dev split, when the run has one


# ---------------------------------------------------------------- decide/decision.json

class Costs(_Record):
    hosted_per_task_usd: Optional[Num] = None  # teacher API price of one task
    finetune_per_task_usd: Optional[Num] = None  # marginal serving cost of one task
    generation_usd: Optional[Num] = None
    training_usd: Optional[Num] = None
    other_upfront_usd: Optional[Num] = None
    serving_fixed_usd: Optional[Num] = None
    serving_hours: Optional[Num] = None  # over the whole horizon
    finetune_fixed_usd: Optional[Num] = None  # generation + training + other + fixed serving
    lifetime_tasks: Optional[Num] = None  # tasks/month x months
    hosted_total_usd: Optional[Num] = None
    finetune_total_usd: Optional[Num] = None
    savings_usd: Optional[Num] = None
    savings_fraction: Optional[Num] = None  # of the hosted total
    break_even_tasks: Optional[Num] = None  # lifetime tasks where both totals are equal
    break_even_tasks_per_month: Optional[Num] = None
    volume_for_margin_tasks: Optional[Num] = None  # lifetime tasks where fine-tuning saves `margin`


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


# ---------------------------------------------------------------- stage manifests

class StageOutput(_Record):
    """One dataset a stage saved (manifest `outputs`)."""

    path: Optional[str] = None  # relative to the stage folder
    rows: Optional[int] = None
    sha256: Optional[str] = None


class StageManifest(_RunFile):
    """`<stage>/manifest.json` as distilforge/manifest.py `Stage.finish` writes it (each stage adds its
    own fields: the subclasses below type the ones other packages read). `_at` names the stage folder."""

    _at = ""

    stage: Optional[str] = None
    fingerprint: Optional[str] = None
    inputs: dict[str, Any] = {}  # upstream name -> the hash it was run on
    config_sha256: Optional[str] = None
    outputs: dict[str, StageOutput] = {}
    started: Optional[str] = None
    seconds: Optional[Num] = None  # the whole stage, wall clock

    @classmethod
    def path(cls, run: str | Path | Run) -> Path:
        return getattr(Run(run), cls._at) / MANIFEST

    @classmethod
    def in_folder(cls, stage_dir: str | Path, error: type[Exception] = ValueError):
        """The manifest of the stage folder `stage_dir` (None when that stage has not finished)."""
        return cls.read_path(Path(stage_dir) / MANIFEST, error)


class HeldoutLock(_RunFile):
    """`heldout/lock.json` (heldout/lock.py `lock`): which file was locked and the hash of its rows.
    Every stage that must not see those rows compares against `sha256`."""

    _at = "lock_json"

    source: Optional[str] = None  # as the spec wrote it
    source_sha256: Optional[str] = None  # of the file when it was locked
    text_column: Optional[str] = None
    label_column: Optional[str] = None
    labels: dict[str, Any] = {}  # task label -> locked rows
    max_per_label: Optional[int] = None
    n: Optional[int] = None  # rows locked
    sha256: Optional[str] = None  # of the locked rows (what verify recomputes)
    rows: list[Any] = []  # {id, sha256} per locked row


# ---------------------------------------------------------------- train/manifest.json

class SftRun(_Record):
    """train manifest `sft`: the SFT sub-stage."""

    adapter: Optional[str] = None  # relative to train/
    adapter_sha256: Optional[str] = None
    seconds: Optional[Num] = None
    tokens: Optional[int] = None
    tokens_per_second: Optional[Num] = None
    resumed_from: Optional[str] = None  # checkpoint folder name


class DpoRun(_Record):
    """train manifest `dpo` (absent when DPO did not run)."""

    adapter: Optional[str] = None
    adapter_sha256: Optional[str] = None
    log_history: list[dict[str, Any]] = []
    seconds: Optional[Num] = None
    train_loss: Optional[Num] = None
    steps: Optional[int] = None
    pairs: Optional[int] = None
    pairs_source: Optional[str] = None
    beta: Optional[Num] = None
    loss_type: Optional[str] = None
    reference: Optional[str] = None
    resumed_from: Optional[str] = None


class KeptAdapter(_Record):
    """Which adapter the train stage kept and why (training/stages.py `choose_adapter`)."""

    which: Optional[str] = None  # "sft" | "dpo"
    why: Optional[str] = None
    selected_on: Optional[str] = None
    validation: Optional[dict[str, dict[str, Any]]] = None  # sft/dpo -> {accuracy, gold_logprob}


class TrainResult(StageManifest):
    """`train/manifest.json`: the kept adapter, what it was trained on, and how."""

    _at = "train"

    data_source: Optional[str] = None  # "curate" | "review_export"
    data_sha256: Optional[str] = None
    rows: Optional[int] = None
    train_rows: Optional[int] = None
    val_ids: list[Any] = []  # rows held back for choosing SFT vs DPO
    base_model: Optional[str] = None
    base_dir: Optional[str] = None
    adapter: Optional[str] = None  # the kept adapter, relative to train/
    adapter_sha256: Optional[str] = None
    merged: Optional[str] = None
    device: Optional[str] = None
    train_seconds: Optional[Num] = None  # SFT + DPO inside the trainers
    train_loss: Optional[Num] = None
    steps: Optional[int] = None
    log_history: list[dict[str, Any]] = []  # SFT's trainer log
    heldout_lock_sha256: Optional[str] = None
    sft: Optional[SftRun] = None
    dpo: Optional[DpoRun] = None
    kept: KeptAdapter = KeptAdapter()
    training: dict[str, Any] = {}  # the spec's training block as trained
    peak_rss_mb: Optional[Num] = None


# ---------------------------------------------------------------- generate/manifest.json

class GenerationCaps(_Record):
    """The spend caps the generation ran under (a flag, else the spec's generation block; None = no cap)."""

    max_cost_usd: Optional[Num] = None
    max_tokens: Optional[Num] = None


class GenerationResult(StageManifest):
    """`generate/manifest.json`: the teacher's rows, what they cost, and why generation stopped."""

    _at = "generate"

    teacher: dict[str, Any] = {}  # the endpoint, secrets left out
    teacher_model: Optional[str] = None
    requests: Optional[int] = None  # rows collected (failed ones included)
    ok: Optional[int] = None
    failed: Optional[int] = None
    tokens: Optional[Tokens] = None  # prompt / completion over the collected rows
    cost_usd: Optional[Num] = None
    price_per_m: dict[str, Any] = {}  # input / output, USD per million tokens
    spent: dict[str, Any] = {}  # the ledger's totals: prompt_tokens, completion_tokens, tokens, cost_usd, requests
    caps: GenerationCaps = GenerationCaps()
    failures: dict[str, int] = {}  # failed rows by reason kind
    first_failure: Optional[str] = None
    teacher_agreement: Optional[dict[str, Any]] = None
    prefs: Optional[dict[str, Any]] = None  # pairs, judged, hard_negatives
    forecast: Optional[dict[str, Any]] = None  # the dry run's tokens, cost_usd, method
    # curation/generation/generate.py `generate`'s counts
    planned_requests: Optional[int] = None
    shards: Optional[int] = None
    skipped_shards: Optional[int] = None
    committed_shards: Optional[int] = None
    pending_shards: Optional[int] = None
    stopped_by: Optional[str] = None  # the cap that stopped requests, None when none did
    strategies: dict[str, int] = {}
    preferences: Optional[dict[str, Any]] = None
