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
    batch_template = "classification_batch_v2"
    has_labels = True

    # ------------------------------------------------------------------ generation
    def answer_schema(self) -> dict:
        return {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}

    def parse_generated(self, obj: dict) -> tuple[dict | None, str]:
        v = obj.get("message")
        text = " ".join(v.split()) if isinstance(v, str) and v.strip() else None
        return ({"text": text, "answer": ""}, "") if text else (None, "JSON without a non-empty 'message'")

    completion_guess = 0.5

    def answer_tokens_guess(self, row_tokens: float) -> float:
        return 6.0  # a label name

    def generation_jobs(self) -> list[tuple[str, str, int]]:
        return [(lab.name, lab.description, self.spec.generation.per_label) for lab in self.spec.labels]

    def label_descriptions(self) -> dict[str, str]:
        return {lab.name: lab.description for lab in self.spec.labels}

    def row_label(self, label: str, description: str, rng) -> tuple[str, str]:
        """Multi-label tasks: half the rows also carry a second label (and its situation)."""
        if self.spec.multi_label and rng.random() < 0.5:
            other = rng.choice([x for x in self.spec.label_names if x != label])
            return ", ".join(sorted([label, other])), f"{description}; and also: {self.label_descriptions()[other]}"
        return label, description

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

    def answer_inputs(self, endpoint, texts: list[str], desc: str = "asking the teacher") -> tuple[list[str | None], dict]:
        """The label question the teacher eval asks (heldout/evaluate.py `score_teacher`: JSON label,
        `teacher.structured_output`, fallback re-asks); None where the answer names no label."""
        from heldout import evaluate as ev

        t = self.spec.teacher
        preds, tokens = ev.score_teacher(endpoint, self.spec.system_prompt("full"), texts, self.spec.label_names,
                                         t.structured_output, t.timeout_s, t.max_retries)
        return [None if p == "<invalid>" else p for p in preds], tokens

    # ------------------------------------------------------------------ scoring
    def evaluate(self, ctx) -> dict:
        """Accuracy by label likelihood for base and student(s) (heldout/evaluate.py `score_local`),
        the teacher through its endpoint on a label-stratified subset (`eval.teacher_max_per_label`),
        paired bootstraps on the same rows, and the dev split when there is one."""
        from heldout import evaluate as ev

        spec, rows = ctx.spec, ctx.rows
        gold, texts, labels = list(rows["label"]), list(rows["text"]), spec.label_names
        full, trained = ctx.full_prompts(texts), ctx.trained_prompts(texts)
        models: dict[str, dict] = {}
        base = ctx.reuse("base", "base-test", {"prompts": full, "labels": labels},
                         lambda: ev.score_local(ctx.base, None, full, labels, "scoring base"))
        models["base"] = {**ev.summarize(base, gold, labels), "prompt": "full"}
        for name, path in ctx.adapters.items():
            models[name] = {**ev.summarize(ev.score_local(ctx.base, str(path), trained, labels, f"scoring {name}"),
                                           gold, labels), "prompt": ctx.student_mode}
        if "student" not in models:
            models["student"] = {**models[f"student_{ctx.kept['which']}"]}
        models["student"]["kept"] = ctx.kept
        t_idx = ev.stratified_rows(gold, spec.eval.teacher_max_per_label)
        if ctx.endpoint is not None:
            t, t_texts = spec.teacher, [texts[i] for i in t_idx]
            preds, tokens = ctx.reuse("teacher", "teacher-test", {"system": spec.system_prompt("full"), "texts": t_texts,
                                                                  "labels": labels},
                                      lambda: ev.score_teacher(ctx.endpoint, spec.system_prompt("full"), t_texts, labels,
                                                               t.structured_output, t.timeout_s, t.max_retries))
            models["teacher"] = {**ev.summarize(preds, [gold[i] for i in t_idx], labels), "prompt": "full",
                                 "tokens": tokens, "model": ctx.endpoint.model, "rows": len(t_idx),
                                 "row_ids": [rows[i]["id"] for i in t_idx] if len(t_idx) < len(gold) else None}
        for m in models.values():
            m.update(score=m["accuracy"], score_ci=m["accuracy_ci"], table={"macro-F1": m["macro_f1"]})
            m.setdefault("rows", len(gold))
        comparisons = {}
        if "teacher" in models:
            st = [models["student"]["correct"][i] for i in t_idx]
            comparisons["student_vs_teacher"] = {
                **ev.paired_bootstrap(st, models["teacher"]["correct"]), "rows": len(t_idx),
                # the student on the teacher's rows: what `decide` compares when the teacher has a subset
                "student_score": round(sum(st) / len(st), 4), "student_score_ci": ev.bootstrap_ci(st),
                "teacher_score": models["teacher"]["accuracy"]}
        comparisons["student_vs_base"] = ev.paired_bootstrap(models["student"]["correct"], models["base"]["correct"])
        if "student_dpo" in models:
            comparisons["dpo_vs_sft"] = ev.paired_bootstrap(models["student_dpo"]["correct"],
                                                            models["student_sft"]["correct"])
        out = {"labels": labels, "models": models, "comparisons": comparisons,
               "per_label": {m: v["per_label"] for m, v in models.items()}}
        if ctx.dev is not None:
            out["dev"] = self._dev_scores(ctx)
        return out

    def _dev_scores(self, ctx) -> dict:
        """Base and the kept student on the dev split. Its labels are the teacher's (or the user's
        gold): a different yardstick from the locked test set, so it is recorded and shown apart.
        Prompts as on the test set: the full one for the base, the trained one for the student."""
        from heldout import evaluate as ev

        ds, h = ctx.dev
        labels, gold = self.spec.label_names, list(ds["label"])
        source = ds["label_source"][0]
        student = ctx.adapters.get("student") or ctx.adapters[f"student_{ctx.kept['which']}"]
        out = {"what": f"dev ({source} labels)", "label_source": source, "n": len(ds), "dev_sha256": h,
               "row_ids": list(ds["id"])}
        for name, adapter, prompts in (("base", None, ctx.full_prompts(ds["text"])),
                                       ("student", str(student), ctx.trained_prompts(ds["text"]))):
            def answer(adapter=adapter, prompts=prompts, name=name):
                return ev.score_local(ctx.base, adapter, prompts, labels, f"scoring {name} on dev")
            preds = (ctx.reuse("base", "base-dev", {"prompts": prompts, "labels": labels}, answer)
                     if adapter is None else answer())
            s = ev.summarize(preds, gold, labels)
            out[name] = {k: s[k] for k in ("accuracy", "accuracy_ci", "macro_f1")}
            out[name].update(score=s["accuracy"], score_ci=s["accuracy_ci"])
        # the student's answer per dev row (row_ids order; labels, no text): blind spots rank the dev
        # clusters by its errors and target the label pairs it confuses (labeling/dev_errors.py)
        out["student"]["predictions"] = s["predictions"]
        return out
