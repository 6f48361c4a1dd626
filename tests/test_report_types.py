"""The report, `decide` and the model card on extraction and instruction runs.

Eval's metrics.json is written through the task format (heldout/formats): every model entry has
`score` (the headline metric named by metrics `metric`), `score_ci`, `rows` and `table`; an
extraction entry adds heldout/extraction_score.py's validity / exact-match / per-field views, an
instruction entry its win / tie / loss record against the teacher (heldout/pairwise.py) and reply
check rates, and the instruction teacher has no score (its replies are the reference). The
metrics below are hand-built to that shape, so every number the page and the verdict show is
known here.
"""
from __future__ import annotations

import base64
import io
import json
import re

import pytest

from distilforge.atomic import atomic_write_json
from decision.cli import DecideConfig, decide_run
from decision.economics import FINE_TUNE, MORE, STAY, EconInputs, decide
from decision.report import render_html

FIELDS = ["amount", "currency", "merchant"]
SCHEMA = {"type": "object", "properties": {"amount": {"type": ["number", "null"]},
                                           "currency": {"type": ["string", "null"]},
                                           "merchant": {"type": ["string", "null"]}}}
CFG = DecideConfig.model_validate({"hosted": {"price_in_per_m": 1.0, "price_out_per_m": 4.0},
                                   "volume": {"tasks_per_month": 1e6, "months": 12},
                                   "training": {"gpu_per_hour": 2.0}, "serving": {"per_hour": 0.1}})


def _view(f1s: dict[str, float], micro: float, exact: float, n: int) -> dict:
    return {"n": n, "exact_match": exact, "exact_match_ci": [exact - 0.1, min(1.0, exact + 0.1)],
            "micro_precision": micro, "micro_recall": micro, "micro_f1": micro, "micro_f1_ci": [micro - 0.05, micro + 0.05],
            "macro_f1": micro - 0.01, "macro_f1_ci": [micro - 0.06, micro + 0.04],
            "per_field": {f: {"precision": v, "recall": v, "f1": v, "tp": 1, "fp": 0, "fn": 0, "support": 30,
                              "predicted": 30} for f, v in f1s.items()}}


def _extraction_entry(micro: float, f1s: dict[str, float], validity: float, rows: int) -> dict:
    raw = _view(f1s, micro, 0.5, rows)
    return {"n": rows, "json_validity": validity, "json_validity_ci": [validity - 0.1, min(1.0, validity + 0.05)],
            "raw": raw, "valid_only": _view(f1s, min(1.0, micro + 0.05), 0.6, int(rows * validity)),
            "invalid_reasons": {"no JSON object in the answer": 2} if validity < 1 else {},
            "score": micro, "score_ci": raw["micro_f1_ci"], "rows": rows, "prompt": "full",
            "table": {"JSON valid": validity, "exact match": 0.5, "macro-F1": micro - 0.01}}


def _run(tmp_path, name: str, spec: dict, metrics: dict):
    """A finished run of another task type: spec, a GPU train manifest, generation cost, eval metrics."""
    run = tmp_path / name
    atomic_write_json(run / "spec.json", {"name": name, **spec, "teacher": {"model": "qwen2.5-coder-1.5b"},
                                          "student": {"base": "smollm2-135m"}})
    atomic_write_json(run / "train" / "manifest.json", {"stage": "train", "seconds": 1800.0, "device": "cuda:0",
                                                         "adapter_sha256": "ad" * 32, "log_history": []})
    atomic_write_json(run / "generate" / "manifest.json", {"stage": "generate", "cost_usd": 0.0,
                                                            "tokens": {"prompt": 1_000_000, "completion": 500_000}})
    atomic_write_json(run / "eval" / "metrics.json", {"adapter_sha256": "ad" * 32, "heldout_sha256": "cd" * 32,
                                                       **metrics})
    return run


def extraction_run(tmp_path, student: float = 0.82, ci=None):
    ent = _extraction_entry(student, {"amount": 0.91, "currency": 0.88, "merchant": 0.64}, 0.9, 40)
    if ci:
        ent["score_ci"] = ent["raw"]["micro_f1_ci"] = ci
    teacher = _extraction_entry(0.80, {"amount": 0.95, "currency": 0.97, "merchant": 0.52}, 1.0, 25)
    teacher |= {"tokens": {"prompt": 25 * 200, "completion": 25 * 20, "calls": 25}, "model": "qwen2.5-coder-1.5b"}
    metrics = {"type": "extraction", "metric": "micro_f1", "n": 40, "fields": FIELDS, "models": {
        "base": _extraction_entry(0.21, {"amount": 0.4, "currency": 0.1, "merchant": 0.05}, 0.35, 40),
        "teacher": teacher, "student": ent},
        "comparisons": {"student_vs_teacher": {"metric": "micro_f1", "diff": 0.02, "ci": [-0.05, 0.09],
                                               "p_value": 0.6, "rows": 25}}}
    return _run(tmp_path, "extract", {"type": "extraction", "output_schema": SCHEMA}, metrics)


def instruction_run(tmp_path, wins: int = 12, ties: int = 5, losses: int = 3, ci=(0.52, 0.82), method=None):
    n = wins + ties + losses
    pw = {"n": n, "wins": wins, "ties": ties, "losses": losses, "win_rate": wins / n, "tie_rate": ties / n,
          "loss_rate": losses / n, "win_rate_tie_half": (wins + ties / 2) / n, "win_rate_tie_half_ci": list(ci),
          "unparsable": 1, "position_bias": 0.25, "per_row": [{"outcome": "win", "verdicts": ["A", "B"]}] * n}
    checks = {"n": n, "mean_words": 41.5, "length_ok": 0.95, "length_ok_ci": [0.85, 1.0], "refusal": 0.05,
              "refusal_ci": [0.0, 0.15], "pii_ask": 0.0, "pii_ask_ci": [0.0, 0.0]}
    score = (wins + ties) / n
    metrics = {"type": "instruction", "metric": "win_or_tie", "n": n, "models": {
        "base": {"score": 0.3, "score_ci": [0.1, 0.5], "rows": n, "table": {"length ok": 0.6},
                 "vs_teacher": {**pw, "wins": 2, "ties": 4, "losses": 14}, "reply_checks": {**checks, "refusal": 0.3}},
        "teacher": {"score": None, "score_ci": None, "rows": n, "table": {"length ok": 1.0}, "reply_checks": checks,
                    "tokens": {"prompt": n * 120, "completion": n * 60, "calls": n}},
        "student": {"score": score, "score_ci": [score - 0.15, min(1.0, score + 0.1)], "rows": n,
                    "table": {"length ok": 0.95}, "vs_teacher": pw, "reply_checks": checks}}}
    if method:
        metrics["judge"] = {"model": "qwen2.5-coder-1.5b", "method": method, "calls": n}
    return _run(tmp_path, "reply", {"type": "instruction", "style_guide": "Two to four short sentences."}, metrics)


def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert m, sid
    return m.group(1)


def _spread(b64: str) -> float:
    import numpy as np
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"), dtype=float).std())


# ------------------------------------------------ extraction

def test_extraction_report_has_the_headline_with_rows_and_a_per_field_table(tmp_path):
    run = extraction_run(tmp_path)
    html = render_html(run)
    ev = _section(html, "eval")
    assert 'class="error"' not in ev + _section(html, "summary") + _section(html, "economics")
    assert "<th>micro field-F1</th>" in ev and "<th>rows</th>" in ev
    assert "<td>teacher</td><td>0.800</td><td>[0.750, 0.850]</td><td>25</td>" in ev  # scored on 25 of 40 rows
    assert "<td>student</td><td>0.820</td><td>[0.770, 0.870]</td><td>40</td>" in ev
    assert "per-field F1" in ev and "confusion" not in ev
    # the merchant field: student 0.64 vs teacher 0.52 vs base 0.05 (columns in model order)
    assert "<td>merchant</td><td>0.050</td><td>0.520</td><td>0.640</td>" in ev
    assert "JSON valid" in ev and "no JSON object in the answer: 2" in ev
    assert "student_vs_teacher" in ev and "+0.020" in ev
    charts = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', ev)
    assert charts and all(_spread(c) > 5 for c in charts)
    assert "fields</td><td>amount, currency, merchant" in _section(html, "summary")


def test_extraction_decide_reads_the_micro_f1_score(tmp_path):
    d = decide_run(extraction_run(tmp_path), CFG)
    q = d["quality"]
    assert q["metric"] == "micro_f1" and q["student_accuracy"] == 0.82 and q["teacher_accuracy"] == 0.80
    assert q["status"] == "ok" and d["verdict"] == FINE_TUNE
    assert "student micro_f1 0.820 [0.770, 0.870] vs hosted 0.800 [0.750, 0.850]" in d["verdict_line"]
    assert "micro_f1" in d["reasons"][0]
    # far below the teacher, CI and all: stay hosted, whatever the savings
    d = decide_run(extraction_run(tmp_path / "w", student=0.55, ci=[0.45, 0.65]), CFG)
    assert d["quality"]["status"] == "worse" and d["verdict"] == STAY
    assert "micro_f1 CI upper bound 0.650 < teacher 0.800" in d["reasons"][0]
    html = render_html(tmp_path / "w" / "extract")
    assert "worse: student micro field-F1 0.550" in _section(html, "economics")


def test_extraction_card_shows_the_score_and_per_field_f1(tmp_path):
    from distilforge.card import front_matter, render_card

    run = extraction_run(tmp_path)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    card = render_card(run, metrics)
    assert "| model | micro field-F1 | 95% CI | rows |" in card
    assert "| teacher | 0.800 | [0.750, 0.850] | 25 |" in card
    assert "| merchant | 0.050 | 0.520 | 0.640 |" in card  # base, teacher, student
    res = front_matter(run, metrics)["model-index"][0]["results"][0]
    (m,) = res["metrics"]
    assert (m["type"], m["value"], m["name"]) == ("f1", 0.82, "micro field-F1")
    assert m["args"] == {"ci_95": pytest.approx([0.77, 0.87]), "n": 40, "ci_method": "bootstrap", "average": "micro"}


# ------------------------------------------------ instruction

def test_instruction_report_has_the_win_rate_plot_and_reply_checks(tmp_path):
    html = render_html(instruction_run(tmp_path))
    ev = _section(html, "eval")
    assert 'class="error"' not in ev
    assert "<th>win or tie vs teacher</th>" in ev
    assert "<td>teacher</td><td>reference (the replies judged against)</td><td></td><td>20</td>" in ev
    plot = re.search(r'alt="win rate vs teacher" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', ev)
    assert plot and _spread(plot.group(1)) > 5
    assert "<td>student</td><td>20</td><td>12</td><td>5</td><td>3</td>" in ev  # wins / ties / losses
    assert "<td>base</td><td>20</td><td>2</td><td>4</td><td>14</td>" in ev
    assert "reply checks" in ev and "asks for a secret" in ev and "0.950 [0.850, 1.000]" in ev


@pytest.mark.parametrize("wins, ties, losses, ci, status, verdict", [
    (12, 5, 3, (0.52, 0.82), "ok", FINE_TUNE),
    (6, 6, 6, (0.35, 0.65), "ok", FINE_TUNE),  # wins == losses: parity
    (5, 5, 10, (0.25, 0.55), "inconclusive", MORE),  # loses more, but the CI still includes 0.5
    (2, 4, 14, (0.10, 0.35), "worse", STAY)])
def test_instruction_decide_needs_wins_at_least_losses(tmp_path, wins, ties, losses, ci, status, verdict):
    d = decide_run(instruction_run(tmp_path, wins, ties, losses, ci), CFG)
    q = d["quality"]
    assert q["metric"] == "win_or_tie" and q["teacher_accuracy"] is None
    assert (q["pairwise"]["wins"], q["pairwise"]["ties"], q["pairwise"]["losses"]) == (wins, ties, losses)
    assert "per_row" not in q["pairwise"]  # counts and rates only
    assert q["status"] == status and d["verdict"] == verdict
    assert f"{wins} wins / {ties} ties / {losses} losses (pairwise)" in d["verdict_line"]
    if status == "ok":
        assert "wins >= losses against the teacher" in d["reasons"][0]
    elif status == "worse":
        assert "significantly worse against the teacher" in d["reasons"][0]
    else:
        assert "loses more often than it wins" in d["reasons"][0]
    sec = _section(render_html(tmp_path / "reply"), "economics")
    assert f"{status}: student vs teacher (pairwise): {wins} wins / {ties} ties / {losses} losses" in sec


def test_graded_judge_is_named_graded_in_the_verdict(tmp_path):
    """A run judged by graded yes / no (eval.judge: graded) must not be called pairwise in the verdict."""
    d = decide_run(instruction_run(tmp_path, 6, 6, 6, (0.35, 0.65), method="graded"), CFG)
    assert d["quality"]["pairwise"]["method"] == "graded"
    assert "6 wins / 6 ties / 6 losses (graded)" in d["verdict_line"] and "(pairwise)" not in d["verdict_line"]
    sec = _section(render_html(tmp_path / "reply"), "economics")
    assert "student vs teacher (graded): 6 wins" in sec


def test_pairwise_rule_by_hand():
    base = dict(hosted_in_per_m=1.0, hosted_out_per_m=4.0, tokens_in_per_task=500, tokens_out_per_task=10,
                tasks_per_month=100_000, months=24, generation_cost_usd=20.0, gpu_per_hour=2.5, gpu_hours=4,
                serving_per_hour=0.5, serving_hours=1000, serving_per_m_tokens=0.10, metric="win_or_tie")
    pw = {"wins": 4, "ties": 2, "losses": 5}  # w = 5/11 < 0.5, no CI recorded: the point is the bound
    assert decide(EconInputs(**base, pairwise=pw))["quality"]["status"] == "worse"
    assert decide(EconInputs(**base, pairwise={**pw, "win_rate_tie_half_ci": [0.3, 0.6]}))["quality"]["status"] \
        == "inconclusive"
    # a tolerance of 0.05 on the tie-half scale: 5/11 = 0.4545 >= 0.45
    assert decide(EconInputs(**base, pairwise=pw, quality_tolerance=0.05))["quality"]["status"] == "ok"
    # a judge that never separates the replies (a small one answering "A" in both orders): all ties is
    # not parity, whatever "wins >= losses" says
    tied = decide(EconInputs(**base, pairwise={"wins": 1, "ties": 38, "losses": 1, "win_rate_tie_half_ci": [0.45, 0.55]}))
    assert tied["quality"]["status"] == "inconclusive" and any("could not tell the replies apart" in r for r in tied["reasons"])
    d = decide(EconInputs(**base))
    assert d["verdict"] == "needs input" and any("pairwise wins / ties / losses" in m for m in d["missing"])
    from decision.economics import EconomicsError

    with pytest.raises(EconomicsError, match="pairwise: losses"):
        decide(EconInputs(**base, pairwise={"wins": 1, "ties": 0, "losses": -1}))


def test_instruction_card_shows_win_tie_loss_and_reply_checks(tmp_path):
    from distilforge.card import front_matter, render_card

    run = instruction_run(tmp_path)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    card = render_card(run, metrics)
    assert "| teacher | reference |" in card and "student vs teacher: 12 wins, 5 ties, 3 losses" in card
    assert "| student | 0.950 | 0.050 | 0.000 | 41.5 |" in card
    m = front_matter(run, metrics)["model-index"][0]["results"][0]["metrics"][0]
    assert m["type"] == "win_or_tie" and m["value"] == 0.85 and (m["args"]["wins"], m["args"]["losses"]) == (12, 3)


# ------------------------------------------------ data sections without labels

def _unlabelled_data(run, n: int = 30):
    """Generated and curated rows the way a type without labels writes them: `label` is "" on every
    row and the curation funnel counts them under the one nameless label."""
    import datasets

    from distilforge.manifest import Stage

    status = ["failed" if i == 4 else "ok" for i in range(n)]
    rows = {"id": [f"g{i}" for i in range(n)], "label": [""] * n, "text": [f"row {i}" for i in range(n)],
            "strategy": [("paraphrase", "persona", "edge_case")[i % 3] for i in range(n)],
            "prompt_tokens": [120] * n, "completion_tokens": [40] * n, "status": status, "error": [""] * n}
    gen = Stage(run / "generate", "generate", {}, {}).begin()
    gen.save("rows", datasets.Dataset.from_dict(rows))
    gen.finish(tokens={"prompt": 120 * n, "completion": 40 * n}, cost_usd=0.0, requests=n, teacher_model="t")
    kept = [i for i in range(n) if status[i] == "ok"][:-5]
    cur = Stage(run / "curate", "curate", {"rows": "x"}, {}).begin()
    cur.save("curated", datasets.Dataset.from_dict({k: [rows[k][i] for i in kept] for k in ("id", "label", "text",
                                                                                           "strategy")}))
    cur.finish(funnel=[{"step": "near_dedup", "in": n - 1, "out": len(kept), "dropped": n - 1 - len(kept),
                        "per_label": {"": len(kept)}, "seconds": 0.1}])


@pytest.mark.parametrize("make", [extraction_run, instruction_run])
def test_data_sections_without_labels_show_all_rows_not_a_nameless_bucket(tmp_path, make):
    run = make(tmp_path)
    _unlabelled_data(run)
    html = render_html(run)
    funnel, dist, gen = (_section(html, s) for s in ("funnel", "distribution", "generation"))
    assert 'class="error"' not in funnel + dist + gen
    assert "<tr><td>all rows</td><td>30</td><td>29</td><td>24</td></tr>" in funnel
    assert "<th>label</th>" not in funnel and "<td></td><td>30</td>" not in funnel
    assert "has no labels" in funnel and "has no labels" in dist and "has no labels" in gen
    (plot,) = re.findall(r'alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dist)
    assert plot[0] == "strategy distribution" and _spread(plot[1]) > 5
    assert "tokens per label" not in gen and "<td>rows</td><td>30</td>" in gen


def test_learning_curve_section_from_a_results_file(tmp_path):
    """`report --learning-curve FILE` copies a benchmarks/outcome.py results file into RUN (a bad one is
    refused with the point and field named, RUN untouched) and the page plots it with this run's student."""
    from conftest import cli
    from decision.report_curve import FILE

    labels = [{"name": f"l{i}"} for i in range(10)]
    run = _run(tmp_path, "intents", {"type": "classification", "labels": labels},
               {"type": "classification", "metric": "accuracy", "n": 400,
                "models": {"student": {"score": 0.8875, "score_ci": [0.855, 0.92], "rows": 400}}})
    atomic_write_json(run / "train" / "manifest.json", {"stage": "train", "train_rows": 240, "seconds": 10.0})
    html = render_html(run)
    assert "--learning-curve" in _section(html, "curve")  # says how to add one, does not fail
    pts = [{"condition": c, "size": s, "accuracy": a, "accuracy_ci": [a - 0.04, a + 0.04], "rows": 10 * s,
            "cpu_minutes": 1.5} for c, s, a in (("gold", 8, 0.61), ("gold", 16, 0.7345), ("traffic", 8, 0.5925))]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"points": [*pts, {"condition": "gold", "size": "32", "accuracy": 0.9}]}))
    res = cli("report", run, "--learning-curve", bad)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == f"error: {bad}: points[3].size: missing or not an integer"
    assert not (run / FILE).exists()
    good = tmp_path / "outcome.json"
    good.write_text(json.dumps({"mode": "full", "task": "t.yaml", "points": [*pts, {"condition": "base", "size": 0,
                                                                                    "accuracy": 0.3175}]}))
    res = cli("report", run, "--learning-curve", good)
    assert res.returncode == 0, res.stderr
    sec = _section((run / "report.html").read_text(), "curve")
    assert "0.735 [0.695, 0.775] (160 rows, 1.5 CPU-min)" in sec and "0.593" in sec and "--quick" not in sec
    b64 = re.search(r'src="data:image/png;base64,([^"]+)"', sec).group(1)
    assert _spread(b64) > 5  # a drawn chart, not a blank image
    from decision.report_curve import _this_run

    assert _this_run(run) == (24.0, 0.8875)  # the star: 240 rows over 10 labels, the student's score
    from decision.report_curve import _per_label

    short = {"condition": "agreement", "size": 32, "accuracy": 0.85, "rows": 227}
    assert _per_label(short, {"n_labels": 10}) == 22.7  # plotted where it trained, not at the nominal 32
    assert _per_label(short, {}) == 32 and _per_label({**short, "rows": None}, {"n_labels": 10}) == 32
