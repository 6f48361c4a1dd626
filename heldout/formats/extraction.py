"""Extraction: a JSON object (the spec's `output_schema`) pulled out of each input.

The student learns one surface form, the canonical JSON (`canonical`: schema key order, compact,
nulls dropped since null and absent mean the same), so the loss is spent on values, not spacing.
Generated answers must match the schema and ground every string value in the input.
Scoring: heldout/extraction_score.py (validity, exact match, per-field F1).
"""
from __future__ import annotations

import copy
import json
import random
from typing import Any, Callable

from heldout.extraction_score import canonical
from heldout.formats.base import TaskFormat, dumps


def schema_error(schema: dict, obj: Any) -> str:
    """'' when `obj` is valid, else the validator's message with the failing path."""
    import jsonschema

    v = jsonschema.validators.validator_for(schema)(schema)
    err = next(iter(sorted(v.iter_errors(obj), key=lambda e: list(e.path))), None)
    if err is None:
        return ""
    where = "/".join(map(str, err.path)) or "(root)"
    return f"schema: {where}: {err.message}"


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


class ExtractionFormat(TaskFormat):
    type = "extraction"
    template = "extraction_v1"
    headline_metric = "micro_f1"

    @property
    def schema(self) -> dict:
        return self.spec.output_schema

    def canonical(self, obj: dict) -> str:
        """The one surface form the student learns and answers are stored in:
        heldout/extraction_score.py `canonical` (schema key order, nulls dropped, compact)."""
        return canonical(obj, self.schema)

    # ------------------------------------------------------------------ generation
    def answer_schema(self) -> dict:
        return {"type": "object", "properties": {"input": {"type": "string"}, "output": self.schema},
                "required": ["input", "output"]}

    def parse_generated(self, obj: dict) -> tuple[dict | None, str]:
        v, out = obj.get("input"), obj.get("output")
        text = " ".join(v.split()) if isinstance(v, str) and v.strip() else None
        if not text:
            return None, "JSON without a non-empty 'input'"
        if not isinstance(out, dict):
            return None, "JSON without an 'output' object"
        bad = schema_error(self.schema, out)
        if bad:
            return None, bad
        return {"text": text, "answer": self.canonical(out)}, ""

    def prompt_columns(self) -> dict:
        lines = []
        for k, v in self.schema["properties"].items():
            t = v.get("type", "any")
            t = " or ".join(t) if isinstance(t, list) else t
            extra = f", one of {', '.join(json.dumps(e) for e in v['enum'])}" if "enum" in v else ""
            desc = f": {v['description']}" if v.get("description") else ""
            lines.append(f"- {k} ({t}{extra}){desc}")
        return {"schema_text": "\n".join(lines)}

    def example_line(self, ex) -> str:
        if ex.output is None:
            return f"- {ex.input}"
        return f"- {ex.input}\n  answer: {dumps(ex.output)}"

    # ------------------------------------------------------------------ answers
    def validate_answer(self, raw: str | None) -> tuple[str | None, str]:
        if raw is None or not raw.strip():
            return None, "empty output"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            return None, f"not JSON: {raw[:60]!r}"
        if not isinstance(obj, dict):
            return None, "not a JSON object"
        bad = schema_error(self.schema, obj)
        return (None, bad) if bad else (self.canonical(obj), "")

    def answer_request_schema(self) -> dict | None:
        return self.schema

    # ------------------------------------------------------------------ curation
    def ungrounded(self, text: str, answer: str) -> str:
        """'' when every extracted string value occurs in the input (case and spacing aside), else
        which did not: a value the teacher made up is a wrong target, however valid its JSON."""
        try:
            obj = json.loads(answer)
        except (json.JSONDecodeError, TypeError):
            return ""  # an invalid answer is the schema check's to report
        if not isinstance(obj, dict):
            return ""
        props, hay = self.schema["properties"], _norm(text)
        for k, v in obj.items():
            if isinstance(v, str) and v.strip() and "enum" not in props.get(k, {}) and _norm(v) not in hay:
                return f"field '{k}': {v[:40]!r} does not occur in the input"
        return ""

    def row_checks(self, filters) -> list:
        def grounded(r: dict) -> str:
            comp = r.get("completion") or []
            return self.ungrounded(r["text"], comp[0]["content"] if comp else "")
        return [("value_not_in_input", grounded)]

    def wrong_field(self, answer: dict, rng: random.Random) -> dict | None:
        """The answer with exactly one field changed, still schema-valid (an extraction hard negative)."""
        props = self.schema["properties"]
        keys = [k for k in props if k in answer]
        rng.shuffle(keys)
        for k in keys:
            v, p = answer[k], props[k]
            cands: list = []
            if "enum" in p:
                cands = [e for e in p["enum"] if e != v]
            elif isinstance(v, bool):
                cands = [not v]
            elif isinstance(v, (int, float)):
                cands = [v * 10 if v else 1, v + 1, round(v / 2, 2) if isinstance(v, float) else v // 2 + 1]
            elif isinstance(v, str) and v:
                digits = [i for i, ch in enumerate(v) if ch.isdigit()]
                if digits:
                    i = rng.choice(digits)
                    cands = [v[:i] + str((int(v[i]) + rng.randint(1, 8)) % 10) + v[i + 1:]]
                else:
                    cands = [v[::-1] if len(v) > 3 else v + "x"]
            for c in cands:
                out = copy.deepcopy(answer)
                out[k] = c
                if not schema_error(self.schema, out):
                    return out
        return None

    def hard_negatives(self, rows: list[dict], confusable: Callable[[], dict]) -> list[dict]:
        out = []
        for r in rows:
            ans = json.loads(r["completion"][0]["content"])
            bad = self.wrong_field(ans, random.Random(f"{self.spec.generation.seed}:{r['id']}"))
            if bad is None:
                continue
            changed = next(k for k in bad if bad[k] != ans.get(k))
            out.append({"row": r, "rejected": self.canonical(bad), "why": f"field '{changed}' changed"})
        return out

    # ------------------------------------------------------------------ review
    def guideline_lines(self) -> list[str]:
        return ["## Answer format", "", "A JSON object with these fields:", "", "```json",
                json.dumps(self.schema, indent=2), "```", ""]

    # ------------------------------------------------------------------ held-out
    def heldout_target(self, value: Any) -> str:
        """A source row's answer object (a dict, or its JSON text) → canonical JSON with only the
        schema's keys (absent = null)."""
        obj = json.loads(value) if isinstance(value, str) else value
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        return self.canonical({k: obj.get(k) for k in self.schema["properties"]})

    def max_tokens(self) -> int:
        return 256
