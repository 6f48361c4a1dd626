"""TaskFormat: everything that differs by task type, in one object per type.

Stages never branch on `spec.type`; they ask the spec's format (`task_format(spec)`). A capability a
type lacks is then a method that raises `Unsupported` here, named in one place, instead of a
silent gap in some stage. The formats sit in `heldout` (the lowest stage package) because scoring
is the part every type must have and every later stage may import them.

What a format owns, in pipeline order:
- generation: the teacher's answer schema, parsing a generated row, template columns, seed examples;
- answers: validating an answer (a candidate, a reviewer's correction) and the SFT completion text;
- curation: the per-row checks only this type needs; DPO hard negatives;
- review: the Argilla guideline section, the label question and its suggestion;
- held-out: reading a locked row's target; scoring (`evaluate`) and the headline number.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    from distilforge.spec import Example, TaskSpec

Check = tuple[str, Callable[[dict], "str | None"]]  # (reason, row -> problem text, or None when fine)


class Unsupported(NotImplementedError):
    """This task type has no such capability (yet): the message names the type and the method."""


class TaskFormat:
    type: ClassVar[str]
    template: ClassVar[str]  # default generation template in curation/prompts (`generation.prompt_template: auto`)
    batch_template: ClassVar[str | None] = None  # template asking for several inputs per request
    has_labels: ClassVar[bool] = False  # rows carry a `label` a curator can filter and balance by
    headline_metric: ClassVar[str] = "accuracy"  # the metrics key `decide` and the report lead with
    heldout_has_target: ClassVar[bool] = True  # locked rows carry a reference answer (`heldout.label_column`)

    def __init__(self, spec: TaskSpec):
        self.spec = spec

    def _no(self, what: str) -> Unsupported:
        return Unsupported(f"task type '{self.type}' has no {what} (heldout/formats/{self.type}.py)")

    # ------------------------------------------------------------------ generation
    def answer_schema(self) -> dict:
        """JSON Schema of one generated row as the teacher writes it."""
        raise self._no("generation answer schema")

    def parse_generated(self, obj: dict) -> tuple[dict | None, str]:
        """A parsed JSON answer → ({text, answer}, "") or (None, reason). Never raises."""
        raise self._no("generation parser")

    def prompt_columns(self) -> dict:
        """Extra template columns this type fills (schema_text, style_guide)."""
        return {}

    def generation_jobs(self) -> list[tuple[str, str, int]]:
        """(label, its description, rows to ask for) per group of generated rows; one unlabelled group
        of `generation.num_rows` for types without labels."""
        return [("", "", self.spec.generation.num_rows)]

    def label_descriptions(self) -> dict[str, str]:
        return {}

    def row_label(self, label: str, description: str, rng) -> tuple[str, str]:
        """The label (and situation) one generated row is asked for, from its group's."""
        return label, description

    # Share of `teacher.max_tokens` a generated row's answer uses, before calibration (dry-run forecast).
    completion_guess: ClassVar[float] = 0.9

    def answer_tokens_guess(self, row_tokens: float) -> float:
        """Tokens of one answer to a row's input (preference candidates), from a row's tokens."""
        return row_tokens * 0.7

    def example_pool(self, label: str) -> list[Example]:
        """Seed examples to show for a row of `label` (types without labels: all of them)."""
        return list(self.spec.examples)

    def example_line(self, ex: Example) -> str:
        return f"- {ex.input}"

    def target_problem(self, label: str, contrast: str) -> str:
        """Why a targets.yaml item's label / contrast label does not fit this task ('' if it does)."""
        return "contrast: only classification tasks have label pairs to contrast" if contrast else ""

    # ------------------------------------------------------------------ answers
    def validate_answer(self, raw: str | None) -> tuple[str | None, str]:
        """An answer (a teacher candidate, a reviewer's correction) → (canonical answer, "") or
        (None, why it cannot be trained on)."""
        if raw is None or not raw.strip():
            return None, "empty output"
        return raw.strip(), ""

    def validate_correction(self, raw: str | None) -> tuple[str | None, str]:
        """A reviewer's typed correction: the same check as a teacher answer unless a format makes
        typing easier (extraction: keys left out are null)."""
        return self.validate_answer(raw)

    def completion(self, label: str, answer: str) -> str:
        """The SFT completion text: what the student learns to write."""
        return answer

    def answer_request_schema(self) -> dict | None:
        """Schema to constrain a teacher asked to answer one input (preference candidates), or None."""
        return None

    def candidate_agreement(self, answer: str | None, row: dict) -> float | None:
        """How far a valid candidate answer agrees with the row's own target (0..1), or None when
        this type has no single right answer to compare with."""
        return None

    # ------------------------------------------------------------------ curation
    def row_checks(self, filters) -> list[Check]:
        """Per-row checks only this type needs (the `curation.filters` block), run with the heuristics."""
        return []

    def agreement_enabled(self) -> bool:
        """Whether `generation.teacher_agreement` applies to this type (the teacher answers blind)."""
        return False

    def hard_negatives(self, rows: list[dict], confusable: Callable[[], dict[str, list[str]]]) -> list[dict]:
        """DPO hard negatives built from ok rows without asking the teacher: [{"row", "rejected"
        (a wrong completion), "why"}]. `confusable()` gives each label its nearest labels by
        description (computed by curation only when a format asks)."""
        return []

    def dpo_validation_split(self) -> bool:
        """Whether SFT vs SFT+DPO can be chosen on a validation split scored by this type."""
        return False

    # ------------------------------------------------------------------ review (Argilla)
    def guideline_lines(self) -> list[str]:
        """The task-specific section of the reviewers' guidelines (markdown lines)."""
        return []

    def correction_hint(self) -> str:
        return ""

    def label_question(self) -> dict | None:
        """{"labels": [...], "multi": bool} for a label question pre-filled with the teacher's label."""
        return None

    def suggested_labels(self, row: dict) -> list[str] | str | None:
        """The teacher's label as a suggestion for `label_question`, or None."""
        return None

    # ------------------------------------------------------------------ held-out
    def heldout_target(self, value: Any) -> str:
        """A held-out source row's target value → the canonical string the lock hashes and stores."""
        raise self._no("held-out reader")

    def max_tokens(self) -> int:
        """Tokens a served or scored answer may need."""
        return 512

    def teacher_response_format(self, endpoint_kind: str) -> dict | None:
        """`response_format` for asking the teacher to answer an input, from `teacher.structured_output`
        and `answer_request_schema` (None: unconstrained, the answer is validated after)."""
        schema, mode = self.answer_request_schema(), self.spec.teacher.structured_output
        if schema is None or mode in ("none", "fallback"):
            return None
        if mode == "auto":
            mode = "llama_cpp" if endpoint_kind == "embedded" else "openai"
        if mode == "llama_cpp":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}

    def teacher_max_tokens(self) -> int:
        return max(self.spec.teacher.max_tokens, self.max_tokens())

    def teacher_raw(self, endpoint, texts: list[str], desc: str = "asking the teacher") -> tuple[list[str], dict]:
        """The teacher's raw answer to each input as the task asks it (full system prompt,
        temperature 0, `teacher_response_format`) and the tokens spent: what eval scores as written."""
        from heldout.answers import ask_teacher

        t = self.spec.teacher
        msgs = [self.spec.student_prompt(x, "full") for x in texts]
        return ask_teacher(endpoint, msgs, max_tokens=self.teacher_max_tokens(),
                           response_format=self.teacher_response_format(endpoint.kind),
                           timeout=t.timeout_s, max_retries=t.max_retries, desc=desc)

    def answer_inputs(self, endpoint, texts: list[str], desc: str = "asking the teacher") -> tuple[list[str | None], dict]:
        """`teacher_raw`, validated: canonical answers, None where it gave nothing usable. What the
        traffic stage and teacher agreement ask, the same question the eval's teacher row answers."""
        raw, tokens = self.teacher_raw(endpoint, texts, desc)
        return [self.validate_answer(a)[0] for a in raw], tokens

    def evaluate(self, ctx: Any) -> dict:
        """Score base, student and teacher on the locked rows (heldout/stages.py eval_stage)."""
        raise self._no("held-out scorer")


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
