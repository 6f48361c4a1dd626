"""The task spec: one YAML file that says what the student must learn and how to make the data.

Everything downstream (generation, curation, training, scoring, the decision) reads this one
object, so a mistake here must be caught early with one line that names the field.
Profiles (`smoke`, `demo`, ...) are partial overrides merged over the base spec, so a user can
validate a config in minutes with the same file they will run for real.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from distilforge.errors import UserError
from distilforge.yamlfile import field_path, read_yaml

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SpecError(UserError, ValueError):
    """A task spec problem, already phrased as the one line a user should see."""


def expand_env(value: str) -> str:
    """Expand `${VAR}` and `${VAR:-default}` (shell semantics: empty counts as unset for `:-`)."""

    def sub(m: re.Match) -> str:
        var, default = m.group(1), m.group(2)
        got = os.environ.get(var)
        if got:
            return got
        if default is not None:
            return default
        raise SpecError(f"environment variable {var} is not set and has no default")

    return _ENV.sub(sub, value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def Cosmetic(default: Any, **kw: Any) -> Any:  # noqa: N802 - used like pydantic's Field
    """A field that changes how a stage runs (speed, caps, logging, where), never what it produces.

    Marked here, in the model, so that the run binding (distilforge/runctx.py) and every stage's
    fingerprint leave the same fields out without a hand-kept list: changing one never reruns a
    stage nor counts as a different spec."""
    return Field(default, json_schema_extra={"cosmetic": True}, **kw)


def _is_cosmetic(info: Any) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("cosmetic"))


def semantic_dump(model: BaseModel) -> dict[str, Any]:
    """`model.model_dump(mode="json")` without cosmetic fields, at any depth: what a stage's
    fingerprint is computed over."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        if _is_cosmetic(info):
            continue
        value = getattr(model, name)
        out[name] = semantic_dump(value) if isinstance(value, BaseModel) else \
            model.model_dump(mode="json", include={name})[name]
    return out


def cosmetic_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted names of every cosmetic field under `model` ("generation.concurrency", "backend")."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        if _is_cosmetic(info):
            out.add(prefix + name)
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out |= cosmetic_paths(info.annotation, f"{prefix}{name}.")
    return out


class Label(_Strict):
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)


class Teacher(_Strict):
    """Where the teacher lives. `embedded` = a llama.cpp server distilforge starts and stops.

    The API key is never in the spec: `api_key_env` names the environment variable that holds it,
    so the spec, the run dir and every log can be shared.
    """

    endpoint: Literal["embedded", "openai"] = "embedded"
    model: str = "qwen2.5-coder-1.5b"
    base_url: str | None = None
    api_key_env: str | None = None
    temperature: float = Field(0.9, ge=0, le=2)
    max_tokens: int = Field(80, gt=0)
    timeout_s: float = Cosmetic(120, gt=0)
    # Transport retries (429 / 5xx / timeouts / dropped connections) done by the openai client:
    # exponential backoff 0.5 s·2^n (max 8 s) minus up to 25 % jitter, Retry-After honoured (<= 2 min).
    max_retries: int = Cosmetic(4, ge=0)
    # "llama.cpp" takes {"type":"json_object","schema":...}; OpenAI takes json_schema. "fallback":
    # the label questions (eval, agreement, traffic) run unconstrained and use the grammar/schema
    # only to re-ask an answer that names no label; generation requests then run unconstrained.
    structured_output: Literal["auto", "llama_cpp", "openai", "none", "fallback"] = "auto"
    # Prices per 1M tokens. None: look the model up in curation/generation/budget.py's PRICES (unknown model: 0, warned).
    price_in_per_m: float | None = Field(None, ge=0)
    price_out_per_m: float | None = Field(None, ge=0)
    # Spreading requests over several servers of the same model. A llama.cpp server answers one
    # request at a time on one thread, so on a box with N free cores N single-thread replicas give
    # ~N x the throughput (measured: 2 replicas of the 1.5B teacher, 2 cores: ~2x). `replicas` is
    # for the embedded teacher; `base_urls` lists more OpenAI-compatible endpoints (a vLLM fleet).
    replicas: int = Field(1, ge=1, le=16)
    base_urls: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _remote_needs_url(self) -> "Teacher":
        if self.endpoint == "openai" and not self.base_url:
            raise ValueError("teacher.base_url is required when teacher.endpoint is 'openai'")
        if self.endpoint == "embedded" and self.base_urls:
            raise ValueError("teacher.base_urls: only for endpoint 'openai' (the embedded teacher uses replicas)")
        if self.endpoint == "openai" and self.replicas > 1:
            raise ValueError("teacher.replicas: only for the embedded teacher (list remote servers in base_urls)")
        return self


DEFAULT_ATTRIBUTES: dict[str, list[str]] = {
    "tone": ["neutral", "frustrated", "polite", "worried", "curt", "confused"],
    "length": ["one short sentence", "two sentences", "a few words only", "three sentences with context"],
    "channel": ["in a mobile chat", "in an email", "in a web form", "as a quick text message"],
    "typos": ["", "", " with a couple of typos", " in lowercase with no punctuation"],
    "persona": ["a student", "a retiree", "a small business owner", "a frequent traveller", "a new customer"],
}


STRATEGIES = ("attributes", "fewshot", "evolve")


class Preferences(_Strict):
    """Teacher-made preference pairs (`RUN/generate/prefs`), off by default: each row costs
    `candidates` answer requests plus one judge request per candidate.

    `judge: auto` picks `yesno` for the embedded teacher (small models cannot use a 1-5 scale:
    the 1.5B rates off-topic text 4-5 and everything 3 with a rubric) and `rubric` otherwise.
    """

    enabled: bool = False
    candidates: int = Field(3, ge=2)  # separate requests: llama-cpp-python ignores n > 1
    temperature: float = Field(1.0, ge=0, le=2)
    judge: Literal["auto", "yesno", "rubric"] = "auto"
    judge_max_tokens: int = Field(96, gt=0)  # rubric rationale; yes/no answers use 4
    min_margin: float = Field(0.5, gt=0)  # score scale 0..2 (0 = invalid answer)
    max_rows: int | None = Field(None, gt=0)  # rows (in plan order) that get judged candidates
    hard_negatives: bool = True  # classification: confusable label; extraction: one field wrong


class Generation(_Strict):
    """How many rows to ask the teacher for, and how to make them differ from one another."""

    per_label: int = Field(20, gt=0)  # classification
    num_rows: int = Field(20, gt=0)  # extraction / instruction
    shard_size: int = Field(10, gt=0)
    seed: int = 0
    concurrency: int = Cosmetic(1, gt=0)  # requests in flight (the embedded server serves one at a time)
    input_description: str = "a user writing to a support assistant"
    prompt_template: str = "auto"  # auto: the newest <type>_vN in curation/prompts (formats.DEFAULT_TEMPLATE)
    attributes: dict[str, list[str]] = Field(default_factory=lambda: copy.deepcopy(DEFAULT_ATTRIBUTES))
    # Share of rows per diversity strategy; `evolve` rewrites earlier rows (Evol-Instruct style),
    # `fewshot` shows seed `examples` from the spec, `attributes` samples tone/length/persona...
    strategies: dict[str, float] = Field(default_factory=lambda: {"attributes": 1.0})
    evolutions: list[str] = Field(default_factory=lambda: [
        "harder: more indirect, the need is implied rather than stated",
        "more specific: add concrete details such as amounts, dates, places or names",
        "noisier: informal, with typos, filler words and an unrelated remark"])
    invalid_retries: int = Field(1, ge=0)  # re-asks for unparsable / schema-invalid answers
    # Classification: one teacher request asks for this many distinct messages of one label and
    # strategy at once (a JSON list), so the prompt is read once per k rows; teacher.max_tokens is
    # then per message. 1: one request per row (evolve rows and other task types always are).
    inputs_per_request: int = Field(1, ge=1, le=16)
    # Generation requests constrain the answer to its JSON schema the way every teacher call does
    # (teacher.structured_output: the one setting for how). False is much faster on llama.cpp (its
    # JSON grammar is checked against the whole 151k-token vocab at every sampled token: ~1.7 s per
    # request for the 1.5B teacher here); answers are then parsed leniently and the rare
    # unparsable one is re-asked (invalid_retries) or kept as a failed row with its reason.
    constrained: bool = True
    max_cost_usd: float | None = Cosmetic(None, ge=0)  # cumulative cap for this run dir (CLI --max-cost)
    max_total_tokens: int | None = Cosmetic(None, gt=0)  # cumulative cap (CLI --max-tokens)
    preferences: Preferences = Preferences()
    # Classification (single-label): the teacher also classifies each ok input blind (the request
    # the teacher eval uses), one short request per row, into the column `teacher_label`; `curate`
    # then drops or relabels rows it disagrees with (curation.teacher_disagreement,
    # curation/agreement.py). Ignored for extraction, instruction and multi-label tasks.
    # Opt-in: its requests are not yet counted by the cost caps or `--dry-run`, and what it buys
    # depends on the pool (docs/outcome.md, dropping disagreeing rows, Banking77-10): +0.068 at 16
    # generated rows a label, -0.035 at 64 (the blind teacher is 89 % accurate, so some of what
    # it drops are its own errors, rows a student needs to go past it).
    teacher_agreement: bool = False

    @model_validator(mode="before")
    @classmethod
    def _structured_output_is_the_teachers(cls, raw: Any) -> Any:
        """Earlier specs set `generation.structured_output` (teacher | auto | llama_cpp | openai |
        none): `none` is `constrained: false`, anything else `constrained: true`."""
        if not isinstance(raw, dict) or "structured_output" not in raw:
            return raw
        raw = dict(raw)
        old = raw.pop("structured_output")
        if old not in ("teacher", "auto", "llama_cpp", "openai", "none"):
            raise ValueError(f"structured_output: '{old}' is not one of teacher, auto, llama_cpp, openai, none "
                             "(it is `constrained: true|false` now)")
        if "constrained" in raw and raw["constrained"] != (old != "none"):
            raise ValueError("'structured_output' and 'constrained' are the same setting with different values")
        raw["constrained"] = old != "none"
        return raw

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(v) - set(STRATEGIES))
        if bad:
            raise ValueError(f"unknown strategy {', '.join(bad)} (one of: {', '.join(STRATEGIES)})")
        if any(w < 0 for w in v.values()) or not any(w > 0 for k, w in v.items() if k != "evolve"):
            raise ValueError("weights must be >= 0 and at least one of attributes/fewshot must be > 0")
        return v


class Example(_Strict):
    """A seed example for few-shot prompts: an input, and its label (classification) or answer."""

    input: str = Field(min_length=1)
    label: str | None = None
    output: Any = None  # extraction: the JSON answer; instruction: the response text


class CurationFilters(_Strict):
    """Row-level filters: heuristics, the LLM-judge score, teacher agreement, per-label balance."""

    min_chars: int = Field(8, ge=0)
    max_chars: int = Field(400, gt=0)
    min_tokens: int = Field(3, ge=0)
    max_tokens: int = Field(120, gt=0)
    max_repetition: float | None = Field(0.3, ge=0, le=1)  # repeated word-bigram share; None = off
    drop_non_printable: bool = True
    language: Literal["en", "es", "fr", "de", "it", "pt", "nl"] | None = "en"
    drop_refusals: bool = True
    drop_meta_commentary: bool = True
    prompt_echo_ngram: int | None = Field(8, ge=3)  # words shared with the instruction / prompt templates
    prompt_echo_descriptions: bool = False  # also check label descriptions (customers reuse their words)
    drop_wrong_voice: bool = True  # written as the bank's agent or the task ("How can I help you?")
    label_leak: bool = True
    label_leak_spaced: bool = False  # also flag "card arrival" for label card_arrival
    # extraction: every extracted string value must occur in the input (reason value_not_in_input)
    values_in_input: bool = True
    # LLM-judge score from generation (column `judge_score`); None = no threshold
    judge_min_score: float | None = 0.5
    judge_missing: Literal["keep", "drop"] = "keep"
    # rows whose blind teacher label (generation.teacher_agreement) differs from the intended one:
    # drop (reason teacher_disagrees), relabel with the teacher's label, or keep (rate reported only)
    teacher_disagreement: Literal["drop", "relabel", "keep"] = "drop"
    # real-traffic likeness (needs `traffic:`): a generated row whose nearest real traffic message
    # (embedding cosine) is below this is dropped (reason unlike_traffic): content-free or off-task
    # rows ("Thank you for your prompt response.") that the word-level filters let through. None = off.
    # docs/outcome.md: 0.5 keeps every real message (their 1st-percentile nearest neighbour is 0.61).
    min_traffic_similarity: float | None = Field(None, gt=0, lt=1)
    # balance
    min_per_label: int = Field(0, ge=0)  # reported when not reached (nothing is invented)
    max_per_label: int | None = Field(None, gt=0)  # best rows kept beyond it
    # which rows `max_per_label` keeps: the best by the quality order (judge score, length), or the
    # ones nearest real traffic (needs `traffic:`): at a fixed training budget, the rows that read
    # most like the messages users send (docs/outcome.md measures both)
    max_per_label_keeps: Literal["best_quality", "most_traffic_like"] = "best_quality"

    @property
    def uses_traffic_reference(self) -> bool:
        """Whether curate compares generated rows with real traffic (traffic.reference_texts)."""
        return self.min_traffic_similarity is not None or (
            self.max_per_label is not None and self.max_per_label_keeps == "most_traffic_like")


class CurationDedup(_Strict):
    """Exact, MinHash (word shingles) and embedding near-duplicate removal."""

    exact: bool = True
    minhash: bool = True
    minhash_threshold: float = Field(0.7, gt=0, le=1)  # word-shingle Jaccard
    minhash_ngram: int = Field(2, ge=1)
    minhash_num_perm: int = Field(128, ge=16)
    semantic: bool = True
    semantic_threshold: float = Field(0.92, gt=0, le=1)  # cosine; see curation/dedup.py
    semantic_exact_below: int = Field(10000, ge=0)  # exact search below, FAISS IVF above
    semantic_nprobe: int = Field(8, ge=1)
    across_labels: bool = True  # False: rows only duplicate rows of their own label


class CurationDecontamination(_Strict):
    """Drop rows that overlap the locked held-out set (13-gram and embedding checks)."""

    enabled: bool = True
    ngram: int = Field(13, ge=8)
    min_tokens: int = Field(6, ge=3)
    # Chosen by measurement (docs/decontamination.md, benchmarks/decontam_threshold.py): the lowest
    # MiniLM cosine that flags <= 2 % of independent real Banking77 train rows (0.90 flagged 33 %).
    cosine: float | None = Field(0.985, gt=0, le=1)  # None = n-gram check only


class Embeddings(_Strict):
    """The sentence-embedding model semantic dedup, decontamination and review vectors share."""

    model: str = "all-MiniLM-L6-v2"  # packaged default; or a local folder / hub id
    batch_size: int = Field(64, gt=0)
    threads: int | None = Cosmetic(None, gt=0)  # None: half the cores, at least one


# Flat `curation:` keys of earlier specs -> (block, field). Still accepted, so older specs and
# profiles keep working; a spec that sets both spellings of one field is refused.
CURATION_FLAT = {
    **{k: ("filters", k) for k in CurationFilters.model_fields},
    "exact_dedup": ("dedup", "exact"), "minhash_dedup": ("dedup", "minhash"),
    "minhash_threshold": ("dedup", "minhash_threshold"), "minhash_ngram": ("dedup", "minhash_ngram"),
    "minhash_num_perm": ("dedup", "minhash_num_perm"), "semantic_dedup": ("dedup", "semantic"),
    "semantic_threshold": ("dedup", "semantic_threshold"), "semantic_exact_below": ("dedup", "semantic_exact_below"),
    "semantic_nprobe": ("dedup", "semantic_nprobe"), "dedup_across_labels": ("dedup", "across_labels"),
    "decontaminate": ("decontamination", "enabled"), "decontam_ngram": ("decontamination", "ngram"),
    "decontam_min_tokens": ("decontamination", "min_tokens"), "decontam_cosine": ("decontamination", "cosine"),
    "embedding_model": ("embeddings", "model"), "embed_batch_size": ("embeddings", "batch_size"),
    "embed_threads": ("embeddings", "threads"),
}


class Curation(_Strict):
    """What `curate` drops and why, one block per step; each step can be switched off. Defaults
    were checked on short Banking-style messages with all-MiniLM-L6-v2."""

    filters: CurationFilters = CurationFilters()
    dedup: CurationDedup = CurationDedup()
    decontamination: CurationDecontamination = CurationDecontamination()
    embeddings: Embeddings = Embeddings()

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not set(raw) & set(CURATION_FLAT):
            return raw
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items() if k not in CURATION_FLAT}
        for k, v in raw.items():
            if k in CURATION_FLAT:
                block, name = CURATION_FLAT[k]
                dest = out.setdefault(block, {})
                if not isinstance(dest, dict):
                    continue  # the block itself is malformed: its own error says so
                if name in dest and dest[name] != v:
                    raise ValueError(f"'{k}' and '{block}.{name}' are the same setting with different values")
                dest[name] = v
        return out


class Student(_Strict):
    """`smollm2-135m` and `tiny-random` are embedded (no download); else a local HF folder.

    `prompt`: the system prompt the student is trained, scored and served with. `short` is the
    format's own minimal prompt (classification: the task name; extraction: the name and the JSON
    keys; instruction: the instruction): the student learns the mapping from the rows, and on CPU
    training time is proportional to tokens per row (the full instruction + label list is most of a
    classification row: benchmarks/results/training_prompt.json). `full` is the teacher's prompt.
    The train stage builds every row's prompt from its text with this setting (changing it retrains
    without regenerating) and records it; eval scores the adapter with what was recorded.
    """

    base: str = "smollm2-135m"
    prompt: Literal["short", "full"] = "short"


DPO_LOSSES = ("sigmoid", "hinge", "ipo", "robust", "sigmoid_norm", "exo_pair", "nca_pair", "bco_pair",
              "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop")


class TrainingDPO(_Strict):
    """Optional DPO stage on top of the SFT adapter (part of the `training` block).

    Off by default: one probe on SmolLM2 (lr 1e-4) grew the reward margin and dropped greedy
    accuracy 54/64 -> 41/64. When on, the SFT and DPO adapters are both scored on a validation
    split of the training rows (never the held-out set) and the better one is kept.
    """

    enabled: bool = False
    beta: float = Field(0.1, gt=0)
    loss_type: str = "sigmoid"
    learning_rate: float = Field(2e-5, gt=0)
    epochs: float = Field(1, gt=0)
    batch_size: int | None = Field(None, gt=0)  # None: training.batch_size
    confusable_k: int = Field(2, ge=1)  # rejected label cycles through the k nearest labels
    val_fraction: float = Field(0.15, ge=0, lt=0.5)  # rows held back to choose SFT vs SFT+DPO

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        if v not in DPO_LOSSES:
            raise ValueError(f"unknown DPO loss '{v}' (one of: {', '.join(DPO_LOSSES)})")
        return v


class Training(_Strict):
    """LoRA SFT (+ optional DPO) hyper-parameters; `distilforge train --config` overrides this block.

    Defaults were checked on CPU with SmolLM2-135M: LoRA needs lr ~2e-4 (TRL's 2e-5 barely moves
    an adapter); gradient checkpointing is off because it costs ~30 % step time on CPU for memory
    a 135M model does not need.
    """

    epochs: float = Field(3, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(256, gt=16)
    packing: bool = False  # BFD packing (implies padding-free); block-diagonal attention, no cross-talk
    padding_free: bool = False
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | str = "all-linear"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA + bf16 when present, else fp32 CPU
    gradient_checkpointing: bool = False
    save_steps: int = Cosmetic(50, gt=0)  # checkpoint interval (for --resume)
    save_total_limit: int = Cosmetic(2, gt=0)
    logging_steps: int = Cosmetic(1, gt=0)
    tensorboard: bool = Cosmetic(True)
    merge: bool = False  # also write a merged (adapter folded in) model
    dpo: TrainingDPO = TrainingDPO()


class Heldout(_Strict):
    source: str
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None  # filter; default = the task's labels
    label_map: dict[str, str] = Field(default_factory=dict)  # source label -> task label
    max_per_label: int | None = Field(None, gt=0)

    @field_validator("source")
    @classmethod
    def _expand(cls, v: str) -> str:
        return expand_env(v)


class Traffic(_Strict):
    """Real production inputs, labelled by the teacher (the `traffic` stage, curation/traffic.py).

    Most users have the traffic they want to move off the hosted model, unlabelled. Teacher-labelled
    real rows beat synthetic ones (Banking77: 318 real rows -> 0.870 held-out accuracy, 72 synthetic
    -> 0.710, teacher 0.97), so they join the generated rows in `curate`. `label_column` is optional:
    when the source has gold labels they only select this task's slice (`labels`/`label_map`, like
    `heldout`: a router's share of the traffic) and score the dev split (`dev_labels: gold`); they
    are never training targets. `max_rows` rows are labelled for training, `dev_rows` others are
    held out as a dev split the student is scored on next to the locked test set.
    """

    source: str  # CSV / JSONL / Parquet file (or what heldout.source accepts); ${VAR:-default} expanded
    text_column: str = "text"
    label_column: str | None = None  # gold labels, when the user has them: slice filter + dev gold only
    labels: list[str] | None = None  # slice filter; default = the task's labels (needs label_column)
    label_map: dict[str, str] = Field(default_factory=dict)  # source label -> task label
    max_rows: int = Field(200, ge=0)  # rows the teacher labels for training
    dev_rows: int = Field(0, ge=0)  # rows held out (disjoint from the training rows) as the dev split
    dev_labels: Literal["teacher", "gold"] = "teacher"
    seed: int = 0

    @field_validator("source")
    @classmethod
    def _expand(cls, v: str) -> str:
        return expand_env(v)

    @model_validator(mode="after")
    def _needs_gold(self) -> "Traffic":
        if self.max_rows + self.dev_rows == 0:
            raise ValueError("max_rows and dev_rows are both 0: nothing to take from the traffic")
        if self.label_column is None:
            for name, set_ in (("labels", self.labels is not None), ("label_map", bool(self.label_map)),
                               ("dev_labels", self.dev_labels == "gold")):
                if set_:
                    raise ValueError(f"{name}: needs label_column (the source's gold labels)")
        return self


class Eval(_Strict):
    teacher: bool = True
    max_rows: int | None = Field(None, gt=0)
    # The teacher is scored through its endpoint, one request per row: on a CPU box that is the
    # slow part, so it may be scored on a seeded random `teacher_max_per_label` rows of each label;
    # `decide` then compares the student on those same rows (heldout/evaluate.py stratified_rows).
    teacher_max_per_label: int | None = Field(None, gt=0)
    # Task types without labels (extraction, instruction): the teacher is scored on a seeded random
    # subset of this many of the scored rows (the report says how many rows each number stands on).
    teacher_max_rows: int | None = Field(None, gt=0)
    # Instruction tasks: how the teacher judges a reply against its own. `pairwise`: "which reply is
    # better, A or B?" asked in both orders, a tie when the orders disagree (position bias cannot
    # score). `graded`: a yes/no "is this reply good?" per reply; a win is yes for the student and
    # no for the teacher. Neither separates replies with the embedded models: the 0.5B and 1.5B
    # answered "A" to every A-or-B question (position bias 1.0) and the 1.5B graded every reply
    # "yes"; both give all ties, which `decide` calls inconclusive. See heldout/pairwise.py.
    judge: Literal["pairwise", "graded"] = "pairwise"
    # The judge's endpoint when it should not be the teacher's: a teacher block (`endpoint: openai`
    # with base_url / model / api_key_env, or another embedded model). None: the teacher judges.
    judge_endpoint: Teacher | None = None
    # Extraction: the untrained base model writes free text until max_tokens (SmolLM2
    # on NLU++: ~3 s a row here, no JSON), so it may be scored on a seeded subset of this many rows.
    base_max_rows: int | None = Field(None, gt=0)
    batch_size: int = Field(16, gt=0)


class Backend(_Strict):
    """Where `curate` runs: in this process (`local`) or on a Ray cluster (`ray`, needs
    `pip install 'distilforge[ray]'`). Same rows, reasons and funnel either way; see docs/scaling.md.

    `address`: an existing cluster (`auto`, `ray://head:10001`); None starts a local Ray with
    `num_cpus`. Semantic dedup clusters rows with k-means (`cluster_rows` per cluster) and
    searches each row in the clusters whose centroid is within `probe_margin` cosine of its
    nearest one, at most `probes` (wider: fewer missed pairs, more work).
    """

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    num_cpus: int | None = Field(None, gt=0)
    encode_actors: int | None = Field(None, gt=0)  # None: one per cluster CPU
    cluster_rows: int = Field(2000, gt=0)
    probes: int = Field(4, ge=1)
    probe_margin: float = Field(0.1, ge=0, le=2)
    # generate on Ray: distilabel's RayPipeline; the generation step runs as this many actor replicas
    # (None: one per teacher endpoint), each spreading its requests over all endpoints.
    generate_replicas: int | None = Field(None, gt=0)


# The spec's configuration blocks. Everything else on the spec is the task definition, which
# every stage may read (distilforge/stage.py); `backend` says where work runs, never what it computes.
BLOCKS = frozenset({"teacher", "generation", "curation", "student", "training", "heldout", "traffic", "eval",
                    "profiles"})


class TaskSpec(_Strict):
    """What every task type shares. A spec is one of the three subclasses below, chosen by `type`
    (a pydantic discriminated union, `validate_spec`): each owns its own fields and prompts, so a
    classification-only setting on an extraction spec is an error naming the field, and code that
    needs labels asks a classification spec for them instead of checking `type` first.
    What differs in behaviour per type lives in heldout/formats/ (one TaskFormat per type)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    type: Literal["classification", "extraction", "instruction"]
    instruction: str = Field(min_length=1)
    examples: list[Example] = Field(default_factory=list)  # seeds for the `fewshot` strategy
    teacher: Teacher = Teacher()
    generation: Generation = Generation()
    curation: Curation = Curation()
    student: Student = Student()
    training: Training = Training()
    heldout: Heldout
    traffic: Traffic | None = None  # real inputs labelled by the teacher; None = off
    eval: Eval = Eval()
    backend: Backend = Cosmetic(Backend())
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _one_base_model(cls, raw: Any) -> Any:
        """`training.base_model` (earlier specs, `train --config` files) is `student.base`: one
        setting, read by train (what to adapt) and eval (what to score as the base)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("training"), dict) or "base_model" not in raw["training"]:
            return raw
        training = dict(raw["training"])
        value = training.pop("base_model")
        raw = {**raw, "training": training}
        if value is not None:
            student = dict(raw.get("student") or {})
            if student.get("base", value) != value:
                raise ValueError(f"'training.base_model' ({value}) and 'student.base' ({student['base']}) are the same "
                                 "setting with different values")
            raw["student"] = {**student, "base": value}
        return raw

    @model_validator(mode="after")
    def _fewshot_needs_examples(self) -> "TaskSpec":
        for i, ex in enumerate(self.examples):
            self.check_example(i, ex)
        if self.curation.filters.min_traffic_similarity is not None and self.traffic is None:
            raise ValueError("curation.filters.min_traffic_similarity: needs a `traffic:` source (the real "
                             "messages generated rows are compared with)")
        if self.curation.filters.max_per_label_keeps == "most_traffic_like":
            if self.traffic is None:
                raise ValueError("curation.filters.max_per_label_keeps: most_traffic_like needs a `traffic:` source "
                                 "(the real messages generated rows are compared with)")
            if self.curation.filters.max_per_label is None:
                raise ValueError("curation.filters.max_per_label_keeps: most_traffic_like chooses which rows "
                                 "max_per_label keeps; set curation.filters.max_per_label too")
        if self.generation.strategies.get("fewshot", 0) > 0 and not self.examples:
            raise ValueError("generation.strategies.fewshot: needs seed `examples` in the spec")
        return self

    def check_example(self, i: int, ex: Example) -> None:
        """Raise ValueError naming `examples.<i>` when a seed example does not fit this task type."""

    @property
    def label_names(self) -> list[str]:
        """The label set; empty for task types without labels."""
        return []

    def task_definition(self) -> dict:
        """The task as data (name, type, instruction, examples and this type's own fields), without
        any configuration block: what generated rows depend on besides `generation` and `teacher`."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in BLOCKS | {"backend"}}

    def student_prompt(self, text: str, mode: Literal["short", "full"] | None = None) -> list[dict]:
        """The conversational prompt the student sees (TRL `prompt` format); `mode` None: `student.prompt`."""
        return [{"role": "system", "content": self.system_prompt(mode or self.student.prompt)},
                {"role": "user", "content": text}]

    def system_prompt(self, mode: Literal["short", "full"] = "full") -> str:
        """The system prompt. `full` (the default): the instruction and the label list or answer
        format, what the teacher and the untrained base model are asked with. `short`: the format's
        own minimal prompt a trained student needs (see `Student`)."""
        raise NotImplementedError


class ClassificationSpec(TaskSpec):
    """A router / intent classifier: one label (or several, `multi_label`) per input."""

    type: Literal["classification"] = "classification"
    labels: list[Label] = Field(default_factory=list)  # at least 2
    multi_label: bool = False  # a row may carry several labels ("a, b")

    @model_validator(mode="after")
    def _two_labels(self) -> "ClassificationSpec":
        if len(self.labels) < 2:
            raise ValueError("labels: a classification task needs at least 2 labels")
        return self

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[Label]) -> list[Label]:
        names = [lab.name for lab in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate label names: {', '.join(dup)}")
        return v

    def check_example(self, i: int, ex: Example) -> None:
        if ex.label not in set(self.label_names):
            raise ValueError(f"examples.{i}.label: '{ex.label}' is not one of the task's labels")

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    def system_prompt(self, mode: Literal["short", "full"] = "full") -> str:
        if mode == "short":
            return self.name
        if self.multi_label:
            return f"{self.instruction}\nAnswer with one or more of: {', '.join(self.label_names)} (comma-separated)."
        return f"{self.instruction}\nAnswer with exactly one of: {', '.join(self.label_names)}."


class ExtractionSpec(TaskSpec):
    """An extractor: a JSON object (`output_schema`, JSON Schema) pulled out of each input."""

    type: Literal["extraction"] = "extraction"
    output_schema: dict[str, Any] | None = None  # required (a JSON Schema of type object)

    @model_validator(mode="before")
    @classmethod
    def _needs_schema(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("output_schema") is None:
            raise ValueError("output_schema: an extraction task needs a JSON Schema for its answers")
        return raw

    @field_validator("output_schema")
    @classmethod
    def _valid_schema(cls, v: dict) -> dict:
        import jsonschema

        try:
            jsonschema.validators.validator_for(v).check_schema(v)
        except jsonschema.SchemaError as e:
            raise ValueError(f"not a valid JSON Schema: {e.message}") from None
        if v.get("type") != "object" or not isinstance(v.get("properties"), dict) or not v["properties"]:
            raise ValueError("must describe an object: type: object with properties")
        return v

    def check_example(self, i: int, ex: Example) -> None:
        import jsonschema

        err = next(iter(jsonschema.validators.validator_for(self.output_schema)(self.output_schema)
                        .iter_errors(ex.output)), None)
        if err is not None:
            raise ValueError(f"examples.{i}.output: does not match output_schema: {err.message}")

    @property
    def fields(self) -> list[str]:
        """The answer's keys, in schema order."""
        return list(self.output_schema["properties"])

    def system_prompt(self, mode: Literal["short", "full"] = "full") -> str:
        if mode == "short":
            return f"{self.name}\nJSON keys: {', '.join(self.fields)}"
        props = self.output_schema["properties"]
        if not any(isinstance(p, dict) and p.get("description") for p in props.values()):
            return (f"{self.instruction}\nAnswer with only a JSON object. Its keys, only for what the message "
                    f"mentions: {', '.join(self.fields)}.")
        # the keys' descriptions tell a teacher which of two near keys a value belongs to (time vs time_to)
        keys = "\n".join(f"- {k}: {p.get('description', '')}".rstrip(": ") for k, p in props.items())
        return (f"{self.instruction}\nAnswer with only a JSON object. Its keys, only for what the message "
                f"mentions:\n{keys}")


class InstructionSpec(TaskSpec):
    """Free-form replies (e.g. a support bot's first answer), judged pairwise against the teacher."""

    type: Literal["instruction"] = "instruction"
    style_guide: str | None = None  # how responses should read

    def system_prompt(self, mode: Literal["short", "full"] = "full") -> str:
        return self.instruction


# `type` picks the class; a spec without one is a classification task (as before the union).
SPEC_TYPES: dict[str, type[TaskSpec]] = {"classification": ClassificationSpec, "extraction": ExtractionSpec,
                                         "instruction": InstructionSpec}
AnyTaskSpec = Annotated[Union[ClassificationSpec, ExtractionSpec, InstructionSpec], Field(discriminator="type")]
_ADAPTER = TypeAdapter(AnyTaskSpec)


def validate_spec(raw: Any) -> TaskSpec:
    """The spec class for `raw["type"]` (default classification), validated (pydantic's
    ValidationError on bad input; `parse_spec` turns it into one line naming the field)."""
    if isinstance(raw, dict) and "type" not in raw:
        raw = {**raw, "type": "classification"}
    return _ADAPTER.validate_python(raw)


def spec_error(e: ValidationError, raw: Any, source: str) -> SpecError:
    """The first error as one line, located without the union's tag (`labels`, not
    `classification.labels`)."""
    err = e.errors()[0]
    tag = raw.get("type", "classification") if isinstance(raw, dict) else None
    loc = err["loc"][1:] if err["loc"][:1] == (tag,) else err["loc"]
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return SpecError(f"{source}: field '{field_path(loc)}': {msg}{more}")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_spec(raw: Any, *, source: str = "<spec>", profile: str | None = None) -> TaskSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: the task spec must be a YAML mapping, got {type(raw).__name__}")
    if profile:
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise SpecError(f"{source}: profiles.{profile}: no such profile (known: {known})")
        raw = _merge({k: v for k, v in raw.items()}, profiles[profile] or {})
    try:
        return validate_spec(raw)
    except ValidationError as e:
        raise spec_error(e, raw, source) from None


def load_spec(path: str | Path, profile: str | None = None) -> TaskSpec:
    raw = read_yaml(path, "task spec", SpecError, mapping=False)
    return parse_spec(raw, source=str(path), profile=profile)


def spec_dict(spec: TaskSpec) -> dict:
    """JSON-able spec without profiles (what a stage's config hash is computed over)."""
    return spec.model_dump(mode="json", exclude={"profiles"})
