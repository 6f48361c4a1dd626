"""Classification (a router, an intent classifier): one label, or several (`multi_label`), per input.

The student learns to write the label name; the locked rows carry gold labels; the score is
accuracy by label likelihood (heldout/evaluate.py), so no free-text parsing flatters or punishes
a model.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from heldout.formats.base import TaskFormat


class ClassificationFormat(TaskFormat):
    type = "classification"
    template = "classification_v3"
    batch_template = "classification_batch_v1"
    has_labels = True

    # ------------------------------------------------------------------ generation
    def answer_schema(self) -> dict:
        return {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}

    def parse_generated(self, obj: dict) -> tuple[dict | None, str]:
        v = obj.get("message")
        text = " ".join(v.split()) if isinstance(v, str) and v.strip() else None
        return ({"text": text, "answer": ""}, "") if text else (None, "JSON without a non-empty 'message'")

    def example_pool(self, label: str) -> list:
        return [e for e in self.spec.examples if e.label == label] or list(self.spec.examples)

    def target_problem(self, label: str, contrast: str) -> str:
        names = self.spec.label_names
        if label not in names:
            return f"label: '{label}' is not one of the task's labels"
        if contrast and (contrast not in names or contrast == label):
            return f"contrast: '{contrast}' is not another of the task's labels"
        return ""

    # ------------------------------------------------------------------ answers
    def validate_answer(self, raw: str | None) -> tuple[str | None, str]:
        """A classification answer → (label(s), "") or (None, reason). Tolerates quotes/case/period
        and a JSON answer {"label": ...}."""
        if raw is None or not raw.strip():
            return None, "empty output"
        s = raw.strip()
        try:
            obj = json.loads(s)
            if isinstance(obj, dict):
                s = str(obj.get("label", obj.get("intent", "")))
        except json.JSONDecodeError:
            pass
        names = {n.lower(): n for n in self.spec.label_names}
        if self.spec.multi_label:
            parts = [p.strip().strip("\"'`.").lower() for p in s.split(",")]
        else:
            parts = [s.strip("\"'`. ").lower()]
        got = [names.get(p) for p in parts if p]
        if not got or None in got:
            return None, f"wrong label: {s[:60]!r} is not in the label set"
        return ", ".join(sorted(set(got))), ""

    def completion(self, label: str, answer: str) -> str:
        return label

    def answer_request_schema(self) -> dict | None:
        if self.spec.multi_label:
            return None
        return {"type": "object", "properties": {"label": {"type": "string", "enum": self.spec.label_names}},
                "required": ["label"]}

    def candidate_agreement(self, answer: str | None, row: dict) -> float | None:
        return None if answer is None else float(answer == row.get("label"))

    # ------------------------------------------------------------------ curation
    def agreement_enabled(self) -> bool:
        return not self.spec.multi_label

    def hard_negatives(self, rows: list[dict], confusable: Callable[[], dict[str, list[str]]]) -> list[dict]:
        """One pair per row: chosen = its label, rejected = the next confusable label (cycled per label)."""
        if self.spec.multi_label or not rows:
            return []
        near, seen, out = confusable(), {}, []
        for r in rows:
            if r["label"] not in near:
                raise ValueError(f"row {r['id']}: label '{r['label']}' is not one of the task's labels")
            n = seen.get(r["label"], 0)
            seen[r["label"]] = n + 1
            out.append({"row": r, "rejected": near[r["label"]][n % len(near[r["label"]])],
                        "why": "confusable label (nearest label description)"})
        return out

    def dpo_validation_split(self) -> bool:
        return True

    # ------------------------------------------------------------------ review
    def guideline_lines(self) -> list[str]:
        lines = ["## Labels", ""] + [f"- **{lab.name}**: {lab.description}" for lab in self.spec.labels] + [""]
        if self.spec.multi_label:
            lines += ["A message may carry several labels (comma-separated).", ""]
        return lines

    def correction_hint(self) -> str:
        return " It must be one of the labels above."

    def label_question(self) -> dict | None:
        return {"labels": list(self.spec.label_names), "multi": self.spec.multi_label}

    def suggested_labels(self, row: dict) -> list[str] | str | None:
        label = row.get("label")
        if not label:
            return None
        names = [x.strip() for x in str(label).split(",")] if self.spec.multi_label else [label]
        if not all(n in self.spec.label_names for n in names):
            return None
        return names if self.spec.multi_label else label

    # ------------------------------------------------------------------ held-out
    def heldout_target(self, value: Any) -> str:
        return str(value)

    def max_tokens(self) -> int:
        return 64
