"""benchmarks/outcome.py's report over repeats: the main tables stay on seed 0's points, and
curated vs unfiltered across seeds is one row per size with the per-seed differences, their mean
and SD, so one lucky draw cannot pass for an effect."""
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _outcome():
    spec = importlib.util.spec_from_file_location("outcome_bench", REPO / "benchmarks" / "outcome.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["outcome_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def _pt(cond, size, seed, correct):
    acc = sum(map(int, correct)) / len(correct)
    return {"key": f"{cond}/{size}/seed{seed}", "condition": cond, "size": size, "seed": seed, "rows": 10 * size,
            "accuracy": acc, "accuracy_ci": [acc - 0.05, acc + 0.05], "n": len(correct), "correct": correct,
            "scored_rows_sha256": "abc", "cpu_minutes": 1.0, "student": "s"}


def test_repeats_table_and_seed0_tables(tmp_path):
    ob = _outcome()
    n = 100
    row = lambda k: "1" * k + "0" * (n - k)  # noqa: E731
    pts = [_pt("synthetic", 16, 0, row(80)), _pt("unfiltered", 16, 0, row(70)),
           _pt("synthetic", 16, 1, row(75)), _pt("unfiltered", 16, 1, row(77)),
           _pt("synthetic", 16, 2, row(82)), _pt("unfiltered", 16, 2, row(76)),
           _pt("synthetic", 32, 0, row(90)), _pt("unfiltered", 32, 0, row(85))]  # 32: one seed, no repeat row
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"mode": "full", "n_labels": 10, "points": pts}))
    text = ob.report(f)
    main = text.split("CPU-minutes")[0]
    assert "0.800 [0.750, 0.850]" in main and "0.750 [" not in main and "0.820 [" not in main  # seed 0 only in the accuracy table
    rep = [ln for ln in text.splitlines() if ln.startswith("| curated - unfiltered |")]
    assert len(rep) == 1, text
    cells = [c.strip() for c in rep[0].strip("|").split("|")]
    assert cells[1:3] == ["16", "3"]
    assert cells[3] == "+0.100, -0.020, +0.060" and cells[4] == "+0.047" and cells[7] == "2/3"
    lo, hi = (float(x) for x in cells[6].strip("[]").split(","))
    assert lo < 0 < hi  # three seeds this spread do not show an effect, and the interval says so


def test_repeat_profile_trains_with_its_seed():
    ob = _outcome()
    prof = ob.profiles(False, [16, 32], None, None, seed=2)
    assert prof["outcome-train-s2"]["training"]["seed"] == 2
    assert "training" not in prof["outcome-train"] or "seed" not in prof["outcome-train"].get("training", {})
    assert "outcome-train-s0" not in ob.profiles(False, [16], None)


def test_select_pools_keep_size_rows_nearest_real_traffic():
    """`--conditions select`: one pool per size whose curate keeps that many rows a label, the
    ones nearest real traffic; the profile is a valid spec (traffic given, a cap set)."""
    from distilforge.spec import parse_spec
    from distilforge.yamlfile import read_yaml

    ob = _outcome()
    assert not any(k.startswith("outcome-select") for k in ob.profiles(False, [16, 32], None))
    prof = ob.profiles(False, [16, 32], None, select=True)
    for n in (16, 32):
        f = prof[f"outcome-select-{n}"]["curation"]["filters"]
        assert f == {"max_per_label": n, "max_per_label_keeps": "most_traffic_like"}
    raw = read_yaml(ob.TASK, "task spec")
    raw["profiles"] = prof
    spec = parse_spec(raw, source="t.yaml", profile="outcome-select-16")
    assert spec.traffic is not None and spec.curation.filters.uses_traffic_reference
    assert spec.curation.filters.min_traffic_similarity is None  # ranked, not thresholded: equal rows
