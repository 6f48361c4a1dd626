"""Instruction: free-form replies (a support bot's first answer). There is no single right reply,
so the locked rows are real inputs without references, and the score is a judgement of the
student's reply against the teacher's on each input (heldout/pairwise.py), plus cheap
reference-free reply checks (length within the style guide's bounds, refusals, asking for a card
number or PIN).

The headline is the win-or-tie rate against the teacher: how often the student's reply is at
least as good as the teacher's. The judge is the teacher's endpoint. `eval.judge: pairwise` (the
default) asks it an A-or-B question in both orders, a tie when the orders disagree; `graded` a
yes/no question about each reply alone. The embedded models separate replies neither way (the
0.5B and 1.5B answer "A" to every A-or-B prompt; the 1.5B grades every reply "yes"), so with them
every row is a tie and `decide` says inconclusive (heldout/pairwise.py says what was measured).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from distilforge.errors import UserError

from heldout.formats.base import TaskFormat


class NoReference(UserError):
    """An instruction eval without the teacher: its replies are the only reference there is."""


class InstructionFormat(TaskFormat):
    type = "instruction"
    template = "instruction_v2"  # v1: per-request style before the shared format (curation/prompts/README.md)
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

    def teacher_max_tokens(self) -> int:
        return self.spec.teacher.max_tokens  # a reply as long as the style guide wants, not a served cap

    # ------------------------------------------------------------------ held-out
    def heldout_target(self, value: Any) -> str:
        return ""  # real inputs without reference replies: nothing to hash but the text

    def reply_style(self):
        """Length bounds for `reply_checks`, read from the style guide's wording."""
        from heldout.pairwise import ReplyStyle

        return ReplyStyle.from_guide(self.spec.style_guide)

    # ------------------------------------------------------------------ scoring
    def evaluate(self, ctx) -> dict:
        """Teacher replies (the reference) on the scored rows (`eval.max_rows`, then a seeded subset
        of `eval.teacher_max_rows`), base and student replies (greedy, local), each judged against
        the teacher's; win / tie / loss with bootstrap CIs and the reply checks per model.
        Nothing here quotes a held-out input or a reply: only rates, counts and row ids."""
        from distilforge.teacher import teacher_endpoint
        from heldout import evaluate as ev
        from heldout.answers import generate_local
        from heldout.pairwise import compare, compare_grades, endpoint_ask, grade, reply_check_rates

        spec = ctx.spec
        if ctx.endpoint is None:
            raise NoReference("instruction eval needs the teacher: its replies are the reference the student is "
                              "judged against (set eval.teacher: true and give the eval a teacher endpoint)")
        idx = ev.sample_rows(len(ctx.rows), spec.eval.teacher_max_rows)
        rows = ctx.rows.select(idx) if len(idx) < len(ctx.rows) else ctx.rows
        texts, t = list(rows["text"]), spec.teacher
        row_ids = list(rows["id"]) if len(idx) < len(ctx.rows) else None
        teacher, tokens = ctx.reuse("teacher", "teacher-test", {"system": spec.system_prompt("full"), "texts": texts},
                                    lambda: self.teacher_raw(ctx.endpoint, texts, "teacher replies"))
        replies = {"base": ctx.reuse("base", "base-test", {"prompts": ctx.full_prompts(texts), "max_new": t.max_tokens},
                                     lambda: generate_local(ctx.base, None, ctx.full_prompts(texts), t.max_tokens,
                                                            "base replies"))}
        for name, path in ctx.adapters.items():
            replies[name] = generate_local(ctx.base, str(path), ctx.trained_prompts(texts), t.max_tokens,
                                           f"{name} replies")
        usage: dict = {"calls": 0, "prompt": 0, "completion": 0, "seconds": 0.0}
        judged = [{"instruction": spec.instruction, "input": x} for x in texts]
        method, jcfg = spec.eval.judge, spec.eval.judge_endpoint or t
        with (teacher_endpoint(jcfg) if spec.eval.judge_endpoint else nullcontext(ctx.endpoint)) as judge_ep:
            ask = endpoint_ask(judge_ep, timeout=jcfg.timeout_s, max_retries=jcfg.max_retries, usage=usage)
            if method == "graded":
                guide = spec.style_guide
                teacher_grades = grade(ask, judged, teacher, style_guide=guide, desc="judging teacher replies")
                vs = {name: compare_grades(grade(ask, judged, r, style_guide=guide, desc=f"judging {name} replies"),
                                           teacher_grades) for name, r in replies.items()}
            else:
                vs = {name: compare(ask, judged, r, teacher, desc=f"judging {name} vs teacher")
                      for name, r in replies.items()}
        checks = reply_check_rates({**replies, "teacher": teacher}, self.reply_style())
        prompt = {"base": "full", **{name: ctx.student_mode for name in ctx.adapters}}
        models: dict[str, dict] = {name: self._model_entry(vs[name], checks[name], prompt[name], len(texts))
                                   for name in replies}
        if "student" not in models:
            models["student"] = {**models[f"student_{ctx.kept['which']}"]}
        models["student"]["kept"] = ctx.kept
        models["teacher"] = {"score": None, "score_ci": None, "rows": len(texts), "prompt": "full",
                             "checks": checks["teacher"], "table": self._check_cells(checks["teacher"]),
                             "tokens": tokens, "model": ctx.endpoint.model}
        if method == "graded":
            models["teacher"]["judge_yes_rate"] = next(iter(vs.values()))["teacher_yes_rate"]
        for m in models.values():
            if row_ids is not None:
                m["row_ids"] = row_ids
        outcomes = {name: [r["outcome"] != "loss" for r in v["per_row"]] for name, v in vs.items()}
        if "student" not in outcomes:
            outcomes["student"] = outcomes[f"student_{ctx.kept['which']}"]
        comparisons = {f"{name}_vs_teacher": {k: v for k, v in res.items() if k != "per_row"}
                       for name, res in vs.items()}
        if "student" not in vs:
            comparisons["student_vs_teacher"] = comparisons[f"student_{ctx.kept['which']}_vs_teacher"]
        comparisons["student_vs_base"] = {**ev.paired_bootstrap(outcomes["student"], outcomes["base"]),
                                          "what": "difference of win-or-tie rates vs the teacher, same rows"}
        if "student_dpo" in outcomes:
            comparisons["dpo_vs_sft"] = ev.paired_bootstrap(outcomes["student_dpo"], outcomes["student_sft"])
        judge = {"model": judge_ep.model, "endpoint": judge_ep.kind, "is_teacher": judge_ep is ctx.endpoint,
                 "method": method, "calls": usage["calls"],
                 "tokens": {"prompt": usage["prompt"], "completion": usage["completion"]},
                 "seconds": usage["seconds"]}
        return {"models": models, "comparisons": comparisons, "judge": judge,
                "reply_style": {"min_words": self.reply_style().min_words, "max_words": self.reply_style().max_words}}

    @staticmethod
    def _check_cells(c: dict) -> dict:
        return {"asks secrets": c["pii_ask"], "refusal": c["refusal"], "length ok": c["length_ok"]}

    def _model_entry(self, res: dict, checks: dict, prompt: str, n: int) -> dict:
        """One model's metrics entry: the headline (win or tie vs the teacher) and its parts."""
        vs = {k: v for k, v in res.items() if k != "per_row"}
        return {"score": res["win_or_tie_rate"], "score_ci": res["win_or_tie_rate_ci"], "rows": n, "prompt": prompt,
                "vs_teacher": vs, "checks": checks,
                "table": {"win": res["win_rate"], "tie": res["tie_rate"], "loss": res["loss_rate"],
                          **self._check_cells(checks)}}
