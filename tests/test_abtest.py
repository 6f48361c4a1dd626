"""A/B formulas against hand-computed cases, plus log parsing and the peeking warning.

Rates, A 100/1000 vs B 130/1000, by hand:
  diff 0.03; pooled p 0.115, SE0 = sqrt(0.115 * 0.885 * 0.002) = 0.0142671 -> z = 2.10274,
  p = 2 (1 - Phi(2.10274)) = 0.035486; Wald SE = sqrt(0.09/1000 + 0.1131/1000) = 0.0142513,
  CI 0.03 -+ 1.959964 * 0.0142513 = [0.002068, 0.057932].
Means, A = 1..5, B = 2,4,..,10: diff 3, var 2.5 / 10, SE = sqrt(0.5 + 2) = 1.581139,
  t = 1.897367, Welch df = 2.5^2 / (0.5^2/4 + 2^2/4) = 5.882353.
Sample size, p1 = 0.10 -> 0.12, alpha 0.05, power 0.8: 3841 per arm (the textbook figure);
  means, sd 1, mde 0.5: 2 * (1.959964 + 0.841621)^2 / 0.25 = 62.79 -> 63.
"""
from __future__ import annotations

import json

import pytest

from decision.abtest import (ABTestError, compare_means, compare_proportions, load_arm, readout, readout_files,
                            sample_size_means, sample_size_proportions)


def test_two_proportion_z_test_by_hand():
    c = compare_proportions(100, 1000, 130, 1000)
    assert c.effect == pytest.approx(0.03)
    assert c.stat == pytest.approx(2.10274, abs=1e-4)
    assert c.p_value == pytest.approx(0.035486, abs=1e-5)
    assert c.ci[0] == pytest.approx(0.002068, abs=1e-5)
    assert c.ci[1] == pytest.approx(0.057932, abs=1e-5)


def test_welch_by_hand():
    c = compare_means([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert c.effect == 3
    assert c.stat == pytest.approx(1.897367, abs=1e-5)
    assert c.df == pytest.approx(5.882353, abs=1e-5)
    # the t quantile / tail: p must sit between the normal-approximation p and a df=5 bound
    assert 0.0578 < c.p_value < 0.12
    stats = pytest.importorskip("scipy.stats")
    ref = stats.ttest_ind([2, 4, 6, 8, 10], [1, 2, 3, 4, 5], equal_var=False)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    h = stats.t.ppf(0.975, 5.882353) * 1.581139
    assert c.ci[0] == pytest.approx(3 - h, abs=1e-4) and c.ci[1] == pytest.approx(3 + h, abs=1e-4)


def test_sample_sizes_by_hand():
    assert sample_size_proportions(0.10, 0.02) == 3841
    assert sample_size_means(1.0, 0.5) == 63
    with pytest.raises(ABTestError, match="baseline"):
        sample_size_proportions(0.99, 0.05)


def test_readout_detects_rate_and_warns_when_peeking():
    a = [1] * 100 + [0] * 900
    b = [1] * 130 + [0] * 870
    r = readout(a, b, mde=0.02, planned_n=5000)
    assert r["kind"] == "rate" and r["test"] == "two-proportion z-test"
    assert r["significant"] is True
    assert r["required_n_per_arm"] == 3841
    assert any(w.startswith("peeking") for w in r["warnings"])
    assert any(w.startswith("underpowered") for w in r["warnings"])
    assert "WARNING" in r["readout_line"]
    r2 = readout(a, b, planned_n=1000)
    assert not any(w.startswith("peeking") for w in r2["warnings"])


def test_files_jsonl_and_csv(tmp_path):
    pa, pb = tmp_path / "a.jsonl", tmp_path / "b.csv"
    pa.write_text("\n".join(json.dumps({"outcome": v, "latency_ms": 100 + i}) for i, v in enumerate([1, 0, 1, 1, 0])) + "\n")
    pb.write_text("outcome,latency_ms\n" + "\n".join(f"{v},{200 + i}" for i, v in enumerate([1, 1, 1, 0, 1])) + "\n")
    r = readout_files(pa, pb)
    assert r["kind"] == "rate" and r["arms"]["A"]["rate"] == 0.6 and r["arms"]["B"]["rate"] == 0.8
    m = readout_files(pa, pb, metric="latency_ms")
    assert m["kind"] == "mean" and m["effect"] == pytest.approx(100.0)


def test_bad_logs_name_file_line_and_field(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"outcome": 1}\n{"outcome": "maybe"}\n')
    with pytest.raises(ABTestError, match=r"a.jsonl:line 2: field 'outcome'"):
        load_arm(p)
    p.write_text('{"outcome": 1}\n{"other": 0}\n')
    with pytest.raises(ABTestError, match=r"a.jsonl:line 2: no field 'outcome'"):
        load_arm(p)
    q = tmp_path / "b.csv"
    q.write_text("x\n1\n")
    with pytest.raises(ABTestError, match="no column 'outcome'"):
        load_arm(q)


def test_abtest_cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from decision.cli import abtest_cmd

    pa, pb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    pa.write_text("\n".join(json.dumps({"outcome": int(i < 100)}) for i in range(1000)))
    pb.write_text("\n".join(json.dumps({"outcome": int(i < 130)}) for i in range(1000)))
    app = typer.Typer()
    app.command("abtest")(abtest_cmd)
    app.command("noop")(lambda: None)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["abtest", str(pa), str(pb), "--mde", "0.02", "--planned-n", "4000", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "p = 0.03549" in res.output and "needed per arm for mde 0.02 at power 0.8: 3841" in res.output
    assert "WARNING peeking" in res.output
    assert json.loads(out.read_text())["required_n_per_arm"] == 3841


def test_shadow_inputs_are_checked_line_by_line(tmp_path):
    from decision.abtest import ABTestError, load_inputs, shadow

    p = tmp_path / "in.jsonl"
    p.write_text('{"text": "card not here", "label": "card_arrival"}\n"a bare string"\n\n{"id": 7, "text": "x"}\n')
    rows = load_inputs(p)
    assert [r["id"] for r in rows] == ["line-1", "line-2", "7"] and rows[0]["label"] == "card_arrival"
    p.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(ABTestError, match=r"in.jsonl:line 2: field 'text'"):
        load_inputs(p)
    p.write_text('{"text": "ok"}\n{"text": "fine"}\n')
    with pytest.raises(ABTestError, match="arm A: shadow mode needs an endpoint URL"):
        shadow(p, "a.jsonl", "http://127.0.0.1:9/v1", system_prompt="s", labels=["a"], log=tmp_path / "l.jsonl")
