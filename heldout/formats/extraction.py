"""Extraction: a JSON object (the spec's `output_schema`) pulled out of each input.

The student learns one surface form, the canonical JSON (`canonical`: schema key order, compact,
nulls dropped since null and absent mean the same), so the loss is spent on values, not spacing.
Generated answers must match the schema and ground every string value in the input.
Scoring: heldout/extraction_score.py (validity, exact match, per-field F1).
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Any, Callable

from heldout.extraction_score import canonical, micro_f1_rows, parse_prediction, paired_bootstrap_f1, score
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


def _nullable(prop: dict) -> bool:
    t = prop.get("type")
    return t == "null" or (isinstance(t, list) and "null" in t) or None in (prop.get("enum") or [])


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


class ExtractionFormat(TaskFormat):
    type = "extraction"
    template = "extraction_v2"  # v1: per-request style before the shared schema (curation/prompts/README.md)
    headline_metric = "micro_f1"
    completion_guess = 0.8

    def answer_tokens_guess(self, row_tokens: float) -> float:
        return row_tokens * 0.6

    @property
    def schema(self) -> dict:
        return self.spec.output_schema

    def canonical(self, obj: dict) -> str:
        """The one surface form the student learns and answers are stored in:
        heldout/extraction_score.py `canonical` (schema key order, nulls dropped, compact), except
        that a key the schema requires stays, as null, so the stored answer still validates."""
        text = canonical(obj, self.schema)
        required = set(self.schema.get("required") or [])
        if not required:
            return text
        kept = json.loads(text)
        full = {k: kept.get(k) for k in self.schema["properties"] if k in kept or k in required}
        return json.dumps(full | {k: v for k, v in kept.items() if k not in full}, ensure_ascii=False,
                          separators=(",", ":"))

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
        """Lenient like the scorer (a ```json fence or a line around the object is fine: small
        teachers without a grammar write them), then schema-checked and canonical."""
        if raw is None or not raw.strip():
            return None, "empty output"
        obj, err = parse_prediction(raw)
        if obj is None:
            return None, err or f"not JSON: {raw[:60]!r}"
        bad = schema_error(self.schema, obj)
        return (None, bad) if bad else (self.canonical(obj), "")

    def correction_hint(self) -> str:
        return (" Type the whole JSON object; a key you leave out means null (no value in the message). "
                "It must fit the schema above, or the row is not trained on.")

    def validate_correction(self, raw: str | None) -> tuple[str | None, str]:
        """A curator types only the keys that have a value: a required key left out is null when the
        schema allows null for it (the scorer reads absent and null alike), then the answer check."""
        obj, _ = parse_prediction(raw or "")
        if isinstance(obj, dict):
            props = self.schema.get("properties") or {}
            for k in self.schema.get("required") or []:
                if k not in obj and _nullable(props.get(k) or {}):
                    obj[k] = None
            raw = dumps(obj)
        return self.validate_answer(raw)

    def answer_request_schema(self) -> dict | None:
        return self.schema

    def agreement_enabled(self) -> bool:
        """The teacher extracts each generated input blind; curate compares (null == absent)."""
        return True

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
        def grounded(r: dict) -> str | None:
            comp = r.get("completion") or []
            return self.ungrounded(r["text"], comp[0]["content"] if comp else "") or None
        return [("value_not_in_input", grounded)] if filters.values_in_input else []

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
                if c != v and not schema_error(self.schema, out):
                    return out
        return None

    def hard_negatives(self, rows: list[dict], confusable: Callable[[], dict]) -> list[dict]:
        out = []
        for r in rows:
            ans = json.loads(r["completion"][0]["content"])
            seed = json.dumps([self.spec.generation.seed, r["id"]], sort_keys=True, ensure_ascii=False)
            bad = self.wrong_field(ans, random.Random(hashlib.sha256(seed.encode()).hexdigest()))
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
        schema's keys (absent = null; other keys are not part of this task). One that breaks the
        schema is refused: no valid prediction could match it."""
        try:
            obj = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError as e:
            raise ValueError(f"expected a JSON object, got text that is not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        obj = {k: obj.get(k) for k in self.schema["properties"]}
        bad = schema_error(self.schema, obj)  # a gold answer no valid prediction could match
        if bad:
            raise ValueError(bad)
        return self.canonical(obj)

    def max_tokens(self) -> int:
        return 256

    # ------------------------------------------------------------------ scoring
    def evaluate(self, ctx) -> dict:
        """Base, student(s) and teacher write an answer per locked row; each is scored against the
        row's gold object (heldout/extraction_score.py): JSON validity, exact match, field F1.

        Local models decode greedily with no grammar (validity as the student would serve it); the
        teacher answers a seeded random subset (`eval.teacher_max_rows`) as the task asks it (full
        prompt, response_format from `teacher.structured_output`). Every model may write `max_tokens`,
        what a served answer gets (an answer cut off there is invalid when served too). The headline
        is the raw view's micro field-F1 (an invalid answer extracts nothing); comparisons are paired
        bootstraps of that same number on the same rows."""
        from heldout import evaluate as ev
        from heldout.answers import generate_local, json_object_done

        spec, rows = ctx.spec, ctx.rows
        texts, gold = list(rows["text"]), [json.loads(x) for x in rows["label"]]
        # not less than a served answer gets: a tighter cap cut SmolLM2 base's long all-keys answers into
        # invalid ones; each row stops at its first complete JSON object (the scorer reads no further)
        n_new = self.max_tokens()
        models: dict[str, dict] = {}
        b_idx = ev.sample_rows(len(texts), spec.eval.base_max_rows)  # the untrained base: slow, often a subset
        b_prompts = ctx.full_prompts([texts[i] for i in b_idx])
        base = ctx.reuse("base", "base-test", {"prompts": b_prompts, "max_new": n_new},
                         lambda: generate_local(ctx.base, None, b_prompts, n_new, "answering: base", done=json_object_done))
        models["base"] = self._scored(base, [gold[i] for i in b_idx], "full")
        if len(b_idx) < len(gold):
            models["base"]["row_ids"] = [rows[i]["id"] for i in b_idx]
        for name, path in ctx.adapters.items():
            models[name] = self._scored(generate_local(ctx.base, str(path), ctx.trained_prompts(texts), n_new,
                                                       f"answering: {name}", done=json_object_done), gold,
                                        ctx.student_mode)
        if "student" not in models:
            models["student"] = {**models[f"student_{ctx.kept['which']}"]}
        models["student"]["kept"] = ctx.kept
        t_idx = ev.sample_rows(len(texts), spec.eval.teacher_max_rows)
        if ctx.endpoint is not None:
            t_texts = [texts[i] for i in t_idx]
            raw, tokens = ctx.reuse("teacher", "teacher-test", {"system": spec.system_prompt("full"), "texts": t_texts},
                                    lambda: self.teacher_raw(ctx.endpoint, t_texts, "answering: teacher"))
            models["teacher"] = {**self._scored(raw, [gold[i] for i in t_idx], "full"), "tokens": tokens,
                                 "model": ctx.endpoint.model,
                                 "row_ids": [rows[i]["id"] for i in t_idx] if len(t_idx) < len(gold) else None}
        per_row = {name: m.pop("_rows") for name, m in models.items()}
        cmp = {}
        if "teacher" in models:
            st = [per_row["student"][i] for i in t_idx]
            score_st, ci_st = micro_f1_rows(st)
            cmp["student_vs_teacher"] = {**paired_bootstrap_f1(st, per_row["teacher"]), "rows": len(t_idx),
                                         "student_score": score_st, "student_score_ci": ci_st,
                                         "teacher_score": models["teacher"]["score"]}
        cmp["student_vs_base"] = {**paired_bootstrap_f1([per_row["student"][i] for i in b_idx], per_row["base"]),
                                  "rows": len(b_idx)}
        if "student_dpo" in models:
            cmp["dpo_vs_sft"] = {**paired_bootstrap_f1(per_row["student_dpo"], per_row["student_sft"]),
                                 "rows": len(gold)}
        out = {"fields": self.spec.fields, "models": models, "comparisons": cmp}
        if ctx.dev is not None:
            out["dev"] = self._dev_scores(ctx, n_new)
        return out

    def _scored(self, raw: list[str], gold: list[dict], prompt: str) -> dict:
        """One model's metrics entry. No text: per-row validity, exact match and field counts, and
        why answers were invalid by kind (a schema error names the field, never the value); the
        per-row list with the error messages stays under `_rows` for the comparisons only."""
        s = score(raw, gold, self.schema)
        per_row = s.pop("rows")
        why: dict[str, int] = {}
        for r in per_row:
            if r["error"]:
                k = ": ".join(r["error"].split(": ")[:2]) if r["error"].startswith("schema:") else r["error"]
                why[k] = why.get(k, 0) + 1
        return {**s, "invalid_reasons": why,
                "per_row": {k: [int(r[k]) for r in per_row] for k in ("valid", "exact", "tp", "fp", "fn")},
                "score": s["raw"]["micro_f1"], "score_ci": s["raw"]["micro_f1_ci"], "rows": len(gold),
                "prompt": prompt, "_rows": per_row,
                "table": {"JSON valid": s["json_validity"], "exact match": s["raw"]["exact_match"],
                          "macro-F1": s["raw"]["macro_f1"]}}

    def _dev_scores(self, ctx, n_new: int) -> dict:
        """Base and the kept student on the traffic dev split (its labels: the teacher's canonical
        answers or the source's gold), scored like the locked rows but recorded apart."""
        from heldout import evaluate as ev
        from heldout.answers import generate_local, json_object_done

        ds, h = ctx.dev
        texts, gold = list(ds["text"]), [json.loads(x) for x in ds["label"]]
        source = ds["label_source"][0]
        student = ctx.adapters.get("student") or ctx.adapters[f"student_{ctx.kept['which']}"]
        out = {"what": f"dev ({source} labels)", "label_source": source, "n": len(ds), "dev_sha256": h,
               "row_ids": list(ds["id"])}
        b_idx = ev.sample_rows(len(texts), self.spec.eval.base_max_rows)
        for name, adapter, idx, prompts in (("base", None, b_idx, ctx.full_prompts([texts[i] for i in b_idx])),
                                            ("student", str(student), range(len(texts)), ctx.trained_prompts(texts))):
            def answer(adapter=adapter, prompts=prompts, name=name):
                return generate_local(ctx.base, adapter, prompts, n_new, f"answering: {name} on dev", done=json_object_done)
            got = (ctx.reuse("base", "base-dev", {"prompts": prompts, "max_new": n_new}, answer)
                   if adapter is None else answer())
            s = score(got, [gold[i] for i in idx], self.schema)
            out[name] = {"score": s["raw"]["micro_f1"], "score_ci": s["raw"]["micro_f1_ci"],
                         "macro_f1": s["raw"]["macro_f1"], "exact_match": s["raw"]["exact_match"],
                         "json_validity": s["json_validity"]}
        return out
