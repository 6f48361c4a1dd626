"""The report's learning-curve section: how the student's locked-test accuracy grows with rows per
label, per kind of training data (benchmarks/outcome.py), with this run's own student on it.

Why in the run's report: a curator reading "student 0.90 from 38 rows a label" wants to know
whether more rows would still pay and which kind (generated, teacher-labelled traffic, gold) to
buy. That answer is a curve measured once per task by the benchmark, not by the run, so the run
carries a copy (`distilforge report RUN --learning-curve benchmarks/results/outcome.json`,
validated and written atomically to RUN/learning_curve.json) and the page reads only that copy.
"""
from __future__ import annotations

import json
from pathlib import Path

from distilforge.atomic import atomic_write_json
from distilforge.card import headline
from distilforge.errors import UserError
from distilforge.layout import Run
from distilforge.manifest import read_json, read_manifest
from decision.report_html import COLORS, esc, img, num, pyplot, table

FILE = "learning_curve.json"
_ORDER = ("synthetic", "agreement", "unfiltered", "traffic", "gold")
_KIND = {"condition": "a string", "size": "an integer"}


def _check(data: object, src: Path) -> dict:
    """The benchmark results shape the section needs; one line naming the field or point if not."""
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise UserError(f"{src}: not a learning-curve results file (needs a 'points' list; "
                        "benchmarks/outcome.py writes one)")
    for i, p in enumerate(data["points"]):
        if not isinstance(p, dict):
            raise UserError(f"{src}: points[{i}]: expected an object")
        for key, kind in (("condition", str), ("size", int), ("accuracy", (int, float))):
            if not isinstance(p.get(key), kind) or isinstance(p.get(key), bool):
                raise UserError(f"{src}: points[{i}].{key}: missing or not {_KIND.get(key, 'a number')}")
        ci = p.get("accuracy_ci")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci)):
            raise UserError(f"{src}: points[{i}].accuracy_ci: expected [lo, hi]")
    return data


def record_learning_curve(run: Path, src: Path) -> Path:
    """Copy a benchmark results file into RUN (validated first: a bad file leaves RUN untouched)."""
    try:
        data = json.loads(Path(src).read_text())
    except FileNotFoundError:
        raise UserError(f"{src}: no such file (run benchmarks/outcome.py first)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{src}: line {e.lineno}: not JSON ({e.msg})") from None
    _check(data, Path(src))
    out = Path(run) / FILE
    atomic_write_json(out, {**data, "copied_from": str(src)})
    return out


def _this_run(run: Path) -> tuple[float | None, float | None]:
    """(rows per label this run's student trained on, its locked-test accuracy), when both exist."""
    r = Run(run)
    spec, metrics, tm = read_json(r.spec_json) or {}, read_json(r.metrics) or {}, read_manifest(r.train) or {}
    labels = len(spec.get("labels") or [])
    rows = tm.get("train_rows") or tm.get("rows")
    acc, _ = headline((metrics.get("models") or {}).get("student"))
    per = rows / labels if rows and labels else None
    return per, acc


def _per_label(p: dict, data: dict) -> float:
    """Where a point sits on the x axis: the rows it really trained on per label (a curated pool
    can fall short of the nominal size: (b) at "32" trained on 227 rows), else the nominal size."""
    n = data.get("n_labels")
    return p["rows"] / n if p.get("rows") and n else p["size"]


def plot_curve(data: dict, run: Path):
    pts = [p for p in data["points"] if p["condition"] != "base"]
    conds = [c for c in _ORDER if any(p["condition"] == c for p in pts)]
    conds += sorted({p["condition"] for p in pts} - set(conds))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.4))
    for i, c in enumerate(conds):
        mine = sorted((p for p in pts if p["condition"] == c), key=lambda p: p["size"])
        xs, ys = [_per_label(p, data) for p in mine], [p["accuracy"] for p in mine]
        lo = [p["accuracy"] - (p.get("accuracy_ci") or [p["accuracy"]] * 2)[0] for p in mine]
        hi = [(p.get("accuracy_ci") or [p["accuracy"]] * 2)[1] - p["accuracy"] for p in mine]
        ax.errorbar([x * (1 + 0.03 * (i - len(conds) / 2)) for x in xs], ys, yerr=[lo, hi], marker="o", capsize=3,
                    label=c, color=COLORS[(i + 1) % len(COLORS)] if i < len(COLORS) - 1 else None)
    base = next((p for p in data["points"] if p["condition"] == "base"), None)
    if base:
        ax.axhline(base["accuracy"], ls=":", color="gray", label=f"untrained base {base['accuracy']:.3f}")
    per, acc = _this_run(run)
    if per and acc is not None:
        ax.plot([per], [acc], "k*", ms=14, label=f"this run: {per:.0f} rows/label, {acc:.3f}")
    ax.set_xscale("log", base=2)
    sizes = sorted({p["size"] for p in pts})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("training rows per label (mean over labels; a curated pool can fall short of the size asked)")
    ax.set_ylabel("accuracy on the locked test rows")
    ax.set_title("learning curve (bars: bootstrap 95 % CI)")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def sec_learning_curve(run: Path) -> str:
    p = Path(run) / FILE
    data = read_json(p)
    if not data:
        return ('<p class="not-run">No learning curve in this run: <code>distilforge report RUN --learning-curve '
                'benchmarks/results/outcome.json</code> adds the measured one (benchmarks/outcome.py).</p>')
    data = _check(data, p)
    # one curve: the first draw (seed 0); repeats (`outcome.py --seed N`) are a table in docs/outcome.md
    data = {**data, "points": [x for x in data["points"] if not x.get("seed")]}
    if not [x for x in data["points"] if x["condition"] != "base"]:
        return f'<p class="not-run">The learning curve in <code>{esc(p)}</code> has no measured points yet.</p>'
    mode = data.get("mode")
    warn = ('<p class="error">Smoke run of the benchmark (<code>--quick</code>): a random toy student, its numbers '
            'say nothing about quality.</p>' if mode == "quick" else "")
    sizes = sorted({x["size"] for x in data["points"] if x["condition"] != "base"})
    conds = [c for c in _ORDER if any(x["condition"] == c for x in data["points"])]
    what = data.get("what") or {}
    by = {(x["condition"], x["size"]): x for x in data["points"]}

    def cell(x: dict | None) -> str:
        if not x:
            return "-"
        ci = x.get("accuracy_ci") or []
        return num(x["accuracy"], "{:.3f}") + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if len(ci) == 2 else "") + (
            f" ({x['rows']} rows, {x['cpu_minutes']} CPU-min)" if x.get("rows") and x.get("cpu_minutes") is not None else "")

    rows = [[f"{c}: {what.get(c, '')}", *[cell(by.get((c, s))) for s in sizes]] for c in conds]
    n = next((x.get("n") for x in data["points"] if x.get("n")), "?")
    note = (f"<p>From <code>{esc(data.get('copied_from') or p)}</code> ({esc(data.get('task', ''))}, {esc(n)} locked "
            f"rows scored per point; command <code>{esc(data.get('command', ''))}</code>). Each point is a seeded "
            "per-label subset of one pool, trained with this task's training block and scored like "
            "<code>eval</code>. The star is this run's student.</p>")
    return (warn + note + img(plot_curve(data, run), "learning curve")
            + table(["condition", *[f"{s} / label" for s in sizes]], rows))
