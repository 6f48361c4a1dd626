"""Instruction: free-form replies (a support bot's first answer). There is no single right reply,
so the locked rows are real inputs without references, and the score is a position-swapped
pairwise judgement of the student's reply against the teacher's (heldout/pairwise.py), plus
cheap reference-free reply checks (length, refusals, asking for card numbers).
"""
from __future__ import annotations

from typing import Any

from heldout.formats.base import TaskFormat


class InstructionFormat(TaskFormat):
    type = "instruction"
    template = "instruction_v1"
    headline_metric = "win_or_tie"
    heldout_has_target = False  # real inputs, no reference replies: scored against the teacher's

    # ------------------------------------------------------------------ generation
    def answer_schema(self) -> dict:
        s = {"type": "string"}
        return {"type": "object", "properties": {"prompt": s, "response": s}, "required": ["prompt", "response"]}

    def parse_generated(self, obj: dict) -> tuple[dict | None, str]:
        v, resp = obj.get("prompt"), obj.get("response")
        prompt = " ".join(v.split()) if isinstance(v, str) and v.strip() else None
        if not prompt:
            return None, "JSON without a non-empty 'prompt'"
        if not isinstance(resp, str) or not resp.strip():
            return None, "JSON without a non-empty 'response'"
        return {"text": prompt, "answer": resp.strip()}, ""

    def prompt_columns(self) -> dict:
        return {"style_guide": self.spec.style_guide or ""}

    # ------------------------------------------------------------------ review
    def guideline_lines(self) -> list[str]:
        return ["## Style guide", "", self.spec.style_guide.strip(), ""] if self.spec.style_guide else []

    # ------------------------------------------------------------------ held-out
    def heldout_target(self, value: Any) -> str:
        return ""  # real inputs without reference replies: nothing to hash but the text
