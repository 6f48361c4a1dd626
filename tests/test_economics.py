"""Economics formulas and verdict rules against hand-computed cases.

Base case, by hand:
  hosted per task c_h = (500 tok * $1/M + 10 tok * $4/M) = $0.000540
  student per task c_s = (500 + 10) tok * $0.10/M        = $0.000051
  fixed F = generation $20 + GPU $2.5/h * 4 h + serving $0.5/h * 1000 h = 20 + 10 + 500 = $530
  break-even V0 = 530 / (0.000540 - 0.000051) = 1,083,844.58 tasks
  margin 20 %:  V = 530 / (0.8 * 0.000540 - 0.000051) = 530 / 0.000381 = 1,391,076.12 tasks
  volume 100k/month * 24 months = 2.4M: hosted $1296, fine-tune 530 + 122.4 = $652.4,
  savings $643.6 = 49.66 %
"""
from __future__ import annotations

import json

import pytest

from decision.economics import (FINE_TUNE, MORE, NEEDS_INPUT, STAY, EconInputs, EconomicsError, PreCheck,
                               break_even_volume, cost_lines, decide)


def base(**kw) -> EconInputs:
    d = dict(hosted_in_per_m=1.0, hosted_out_per_m=4.0, tokens_in_per_task=500, tokens_out_per_task=10,
             tasks_per_month=100_000, months=24, generation_cost_usd=20.0, gpu_per_hour=2.5, gpu_hours=4,
             serving_per_hour=0.5, serving_hours=1000, serving_per_m_tokens=0.10,
             student_accuracy=0.90, student_ci=(0.87, 0.93), teacher_accuracy=0.89, teacher_ci=(0.86, 0.92),
             n_heldout=400, margin=0.20,
             prechecks={"prompting_fails": PreCheck("prompting_fails", True, "runs/x/eval/metrics.json"),
                        "retrieval_tools_insufficient": PreCheck("retrieval_tools_insufficient", True, "notes.md")})
    d.update(kw)
    return EconInputs(**d)


def test_hand_computed_costs_and_break_even():
    d = decide(base())
    c = d["costs"]
    assert c["hosted_per_task_usd"] == pytest.approx(0.000540)
    assert c["finetune_per_task_usd"] == pytest.approx(0.000051)
    assert c["finetune_fixed_usd"] == pytest.approx(530.0)
    assert c["break_even_tasks"] == pytest.approx(1_083_844.58, abs=0.01)
    assert c["volume_for_margin_tasks"] == pytest.approx(1_391_076.12, abs=0.01)
    assert c["lifetime_tasks"] == 2_400_000
    assert c["hosted_total_usd"] == pytest.approx(1296.0)
    assert c["finetune_total_usd"] == pytest.approx(652.4)
    assert c["savings_usd"] == pytest.approx(643.6)
    assert c["savings_fraction"] == pytest.approx(643.6 / 1296.0)
    assert d["verdict"] == FINE_TUNE
    assert d["verdict_line"].startswith("VERDICT: fine-tune")
    assert "1,083,845 tasks" in d["verdict_line"]
    # at break-even, both lines meet
    h, f = cost_lines(d, [c["break_even_tasks"]])
    assert h[0] == pytest.approx(f[0])
    json.dumps(d)  # everything recorded is JSON-able


def test_break_even_helper():
    assert break_even_volume(100.0, 0.002, 0.001) == pytest.approx(100_000)
    assert break_even_volume(100.0, 0.002, 0.001, margin=0.25) == pytest.approx(200_000)  # 100/(0.0015-0.001)
    assert break_even_volume(100.0, 0.001, 0.001) is None


def test_always_on_serving_default_hours():
    d = decide(base(serving_hours=None, serving_per_m_tokens=None))
    assert d["costs"]["serving_hours"] == 24 * 730
    assert d["costs"]["serving_fixed_usd"] == pytest.approx(0.5 * 24 * 730)


def test_cheaper_but_worse_is_not_fine_tune():
    d = decide(base(student_accuracy=0.80, student_ci=(0.76, 0.84)))
    assert d["costs"]["savings_fraction"] > 0.4  # clearly cheaper ...
    assert d["quality"]["status"] == "worse"
    assert d["verdict"] == STAY  # ... but worse: stay hosted
    assert "significantly worse" in d["reasons"][0]


def test_inconclusive_quality_asks_for_more_data():
    d = decide(base(student_accuracy=0.86, student_ci=(0.80, 0.91)))
    assert d["quality"]["status"] == "inconclusive"
    assert d["verdict"] == MORE and d["verdict_detail"] == "data"


def test_tolerance_allows_slightly_lower_student():
    d = decide(base(student_accuracy=0.88, student_ci=(0.85, 0.91), quality_tolerance=0.02))
    assert d["quality"]["status"] == "ok" and d["verdict"] == FINE_TUNE


def test_low_volume_needs_more_volume():
    d = decide(base(tasks_per_month=10_000, months=6))  # 60k tasks << 1.39M for the margin
    assert d["verdict"] == MORE and d["verdict_detail"] == "volume"
    vol = {p["key"]: p for p in d["precheck"]}["volume_justifies"]
    assert vol["answer"] == "no" and vol["source"] == "computed"


def test_just_above_margin_volume_flips_to_fine_tune():
    v = 1_391_076.12 / 24
    assert decide(base(tasks_per_month=v * 0.99))["verdict"] == MORE
    assert decide(base(tasks_per_month=v * 1.01))["verdict"] == FINE_TUNE


def test_student_never_cheaper_per_task_stays_hosted():
    d = decide(base(serving_per_m_tokens=2.0))  # 510 * 2 / 1e6 = 0.00102 > 0.00054
    assert d["costs"]["break_even_tasks"] is None
    assert d["verdict"] == STAY and "never cheaper" in d["reasons"][0]
    assert "break-even never" in d["verdict_line"]


def test_missing_gpu_cost_needs_input_not_guessed():
    d = decide(base(gpu_per_hour=None))
    assert d["verdict"] == NEEDS_INPUT
    assert any("fine-tune cost unknown" in m for m in d["missing"])
    assert d["costs"]["finetune_total_usd"] is None and d["costs"]["training_usd"] is None


def test_precheck_no_makes_verdict_say_so():
    pc = {"prompting_fails": PreCheck("prompting_fails", False, "https://example.org/prompt-trials")}
    d = decide(base(prechecks=pc))
    assert d["verdict"] == STAY
    assert "pre-check answered no" in d["reasons"][0] and "prompt-trials" in d["reasons"][0]


def test_unanswered_precheck_is_noted():
    d = decide(base(prechecks={}))
    assert d["verdict"] == FINE_TUNE
    assert "pre-check unanswered: prompting_fails, retrieval_tools_insufficient" in d["verdict_line"]


def test_bad_input_names_the_field():
    with pytest.raises(EconomicsError, match="hosted_in_per_m"):
        decide(base(hosted_in_per_m=-1))
    with pytest.raises(EconomicsError, match="margin"):
        decide(base(margin=1.5))
    with pytest.raises(EconomicsError, match="student_ci"):
        decide(base(student_ci=(0.9, 0.8)))


# ------------------------------------------------ gathering inputs from a run (decide_cli)

def _mini_run(tmp_path, device: str):
    from distilforge.atomic import atomic_write_json

    run = tmp_path / "run"
    atomic_write_json(run / "train" / "manifest.json", {"stage": "train", "seconds": 1800.0, "device": device,
                                                         "log_history": []})
    atomic_write_json(run / "generate" / "manifest.json", {"stage": "generate", "cost_usd": 0.0,
                                                            "tokens": {"prompt": 1_000_000, "completion": 500_000}})
    atomic_write_json(run / "eval" / "metrics.json", {"n": 200, "models": {
        "teacher": {"accuracy": 0.9, "accuracy_ci": [0.85, 0.94], "tokens": {"prompt": 40_000, "completion": 1_000, "calls": 200}},
        "student_sft": {"accuracy": 0.91, "accuracy_ci": [0.86, 0.95]}}})
    return run


def test_cpu_train_time_is_never_turned_into_gpu_hours(tmp_path):
    from decision.cli import DecideConfig, decide_run
    from distilforge.atomic import atomic_write_json

    run = _mini_run(tmp_path, "cpu")
    cfg = DecideConfig.model_validate({"hosted": {"price_in_per_m": 1.0, "price_out_per_m": 4.0},
                                       "volume": {"tasks_per_month": 1e6, "months": 12},
                                       "training": {"gpu_per_hour": 2.0}, "serving": {"per_hour": 0.1}})
    d = decide_run(run, cfg)
    assert d["verdict"] == NEEDS_INPUT and d["inputs"]["gpu_hours"] is None
    # measured per task: 40000/200 = 200 in, 1000/200 = 5 out; generation at hosted prices: 1 + 2 = $3
    assert d["inputs"]["tokens_in_per_task"] == 200 and d["inputs"]["tokens_out_per_task"] == 5
    assert d["costs"]["generation_usd"] == pytest.approx(3.0)
    assert d["quality"]["student_model"] == "student_sft"
    assert (run / "decide" / "decision.json").exists()

    # labelling real traffic is teacher work too: 500k in + 100k out at the same prices = $0.90 more
    atomic_write_json(run / "traffic" / "manifest.json", {"stage": "traffic", "teacher": {
        "tokens": {"prompt": 500_000, "completion": 100_000}}})
    d = decide_run(run, cfg)
    assert d["costs"]["generation_usd"] == pytest.approx(3.9)
    assert "traffic/manifest.json" in d["inputs"]["sources"]["generation_cost_usd"]

    gpu = _mini_run(tmp_path / "g", "cuda:0")
    d = decide_run(gpu, cfg)
    assert d["inputs"]["gpu_hours"] == pytest.approx(0.5)  # 1800 s measured on a GPU
    assert d["inputs"]["sources"]["gpu_hours"].startswith("measured")
    assert d["costs"]["training_usd"] == pytest.approx(1.0)
    assert d["verdict"] == FINE_TUNE and (gpu / "decide" / "cost_vs_volume.png").stat().st_size > 1000


def test_a_teacher_scored_on_a_subset_is_compared_on_the_same_rows(tmp_path):
    """The teacher on 100 of 400 rows: quality compares the student's score on THOSE rows (eval's
    comparisons.student_vs_teacher), not its score on all 400; the verdict line says so."""
    from decision.cli import DecideConfig, decide_run
    from distilforge.atomic import atomic_write_json

    run = _mini_run(tmp_path, "cuda:0")
    atomic_write_json(run / "eval" / "metrics.json", {"n": 400, "models": {
        "teacher": {"score": 0.97, "score_ci": [0.94, 1.0], "rows": 100,
                    "tokens": {"prompt": 40_000, "completion": 1_000, "calls": 100}},
        "student": {"score": 0.9025, "score_ci": [0.872, 0.93], "rows": 400}},
        "comparisons": {"student_vs_teacher": {"diff": 0.01, "ci": [-0.03, 0.05], "rows": 100,
                                               "student_score": 0.98, "student_score_ci": [0.95, 1.0],
                                               "teacher_score": 0.97}}})
    cfg = DecideConfig.model_validate({"hosted": {"price_in_per_m": 1.0, "price_out_per_m": 4.0},
                                       "volume": {"tasks_per_month": 1e6, "months": 12},
                                       "training": {"gpu_per_hour": 2.0}, "serving": {"per_hour": 0.1}})
    d = decide_run(run, cfg)
    q = d["quality"]
    assert (q["student_accuracy"], q["student_ci"], q["n"], q["same_rows"]) == (0.98, [0.95, 1.0], 100, 100)
    assert q["student_all_rows"] == 0.9025 and q["status"] == "ok"
    assert "vs hosted 0.970 [0.940, 1.000] on the teacher's 100 rows (student on every scored row: 0.902)" \
        in d["verdict_line"], d["verdict_line"]
    assert "student_vs_teacher" in d["inputs"]["sources"]["quality"]
    # the same metrics with the teacher on every row: the student's own score stands
    m = json.loads((run / "eval" / "metrics.json").read_text())
    m["models"]["teacher"]["rows"] = 400
    atomic_write_json(run / "eval" / "metrics.json", m)
    q = decide_run(run, cfg)["quality"]
    assert q["student_accuracy"] == 0.9025 and "same_rows" not in q and q["status"] == "worse"


def test_config_error_is_one_line_naming_the_field(tmp_path):
    from typer.testing import CliRunner
    import typer

    from decision.cli import decide_cmd

    run = _mini_run(tmp_path, "cpu")
    cfg = tmp_path / "decide.yaml"
    cfg.write_text("hosted:\n  price_in_per_m: 1\n  prise_out_per_m: 4\n")
    app = typer.Typer()
    app.command("decide")(decide_cmd)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["decide", str(run), "--config", str(cfg)])
    assert res.exit_code == 2
    assert "decide.yaml: field 'hosted.prise_out_per_m'" in res.output


# ------------------------------------------------ measured serving (issue 18)

def test_measured_throughput_replaces_the_always_on_box():
    """By hand: 5 tasks/s per core = 18,000 tasks per core-hour; $0.036 per core-hour -> $0.000002 a task.
    Fixed cost drops the $500 box: F = 20 + 10 = $30; break-even 30 / (0.000540 - 0.000002) = 55,762.08."""
    d = decide(base(core_hour_usd=0.036, tasks_per_core_hour=18_000,
                    serving_measured={"source": "RUN/serve/benchmark.json", "quant": "q8_0"}))
    c = d["costs"]
    assert c["finetune_per_task_usd"] == pytest.approx(0.000002)
    assert c["serving_fixed_usd"] == 0 and c["finetune_fixed_usd"] == pytest.approx(30.0)
    assert c["break_even_tasks"] == pytest.approx(30 / 0.000538, abs=0.01)
    s = d["serving"]
    assert s["mode"] == "measured" and s["priced"]["unit"] == "core"
    assert s["replaced"] == "$0.5/h for 1,000 h = $500.00 over the horizon + $0.1 per 1M tokens"
    assert "serving measured: 5.00 tasks/s per core at $0.036/core-hour = $0.000002/task" in d["verdict_line"]
    assert "replaces $0.5/h" in d["verdict_line"]


def test_cheaper_unit_wins_and_price_without_measurement_keeps_the_assumption():
    # by hand: core $0.04 / 3,600 = $0.0000111 a task; GPU $2 / 360,000 = $0.0000056 a task: the GPU wins
    d = decide(base(core_hour_usd=0.04, tasks_per_core_hour=3_600, serving_gpu_hour_usd=2.0, tasks_per_gpu_hour=360_000))
    assert d["serving"]["priced"]["unit"] == "gpu"
    assert d["costs"]["finetune_per_task_usd"] == pytest.approx(2.0 / 360_000)
    d = decide(base(core_hour_usd=0.04))  # a price, nothing measured: the assumed box stays, and it says so
    assert d["serving"]["mode"] == "assumed" and "no serving throughput was measured" in d["serving"]["note"]
    assert d["costs"]["serving_fixed_usd"] == pytest.approx(500.0)
    with pytest.raises(EconomicsError, match="tasks_per_core_hour"):
        decide(base(core_hour_usd=0.04, tasks_per_core_hour=0))


def test_decide_reads_the_serve_benchmark_of_this_adapter_only(tmp_path):
    from distilforge.atomic import atomic_write_json
    from decision.cli import DecideConfig, decide_run

    run = _mini_run(tmp_path, "cpu")
    m = json.loads((run / "train" / "manifest.json").read_text())
    atomic_write_json(run / "train" / "manifest.json", {**m, "adapter_sha256": "a" * 64})
    rows = [{"model": "student", "quant": "q8_0", "device": "cpu", "replicas": r, "tasks_per_s": 4.0 * r * f,
             "tasks_per_s_per_core": 4.0 * f} for r, f in ((1, 1.0), (2, 0.9))]
    rows.append({"model": "student", "quant": "f16", "device": "cpu", "replicas": 1, "tasks_per_s": 9.0,
                 "tasks_per_s_per_core": 9.0})
    atomic_write_json(run / "serve" / "benchmark.json", {"adapter_sha256": "a" * 64, "results": rows})
    cfg = DecideConfig.model_validate({"hosted": {"price_in_per_m": 1.0, "price_out_per_m": 4.0},
                                       "volume": {"tasks_per_month": 1e6, "months": 12},
                                       "training": {"gpu_per_hour": 2.0, "gpu_hours": 1},
                                       "serving": {"per_hour": 0.1, "core_hour_usd": 0.036}})
    d = decide_run(run, cfg)
    # q8_0 (the configured quant, not the faster f16), best per-core row: 4 tasks/s -> 14,400 per core-hour
    assert d["inputs"]["tasks_per_core_hour"] == pytest.approx(14_400)
    assert d["costs"]["finetune_per_task_usd"] == pytest.approx(0.036 / 14_400)
    assert d["serving"]["measured"]["quant"] == "q8_0" and d["serving"]["replaced"].startswith("$0.1/h always-on")
    atomic_write_json(run / "serve" / "benchmark.json", {"adapter_sha256": "b" * 64, "results": rows})
    d = decide_run(run, cfg)  # a benchmark of another student prices nothing
    assert d["serving"]["mode"] == "assumed" and d["inputs"]["tasks_per_core_hour"] is None
