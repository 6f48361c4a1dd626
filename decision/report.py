"""`distilforge report RUN` -> RUN/report.html: the whole run on one page that opens offline.

One file on purpose: it gets mailed, attached to a ticket and opened years later, so charts are
matplotlib PNGs embedded as base64 and there is no script, font or stylesheet to fetch.
Each section reads only its own stage's outputs (the run-directory contract) and, when that
stage did not run, says so instead of failing; a section that cannot be rendered from a broken
file shows the error line rather than taking the whole report down. Held-out data appears only
as counts, the lock hash, metrics and anonymous points on the coverage map: its text is never
read here.

This module holds the page, the summary, the loop rounds, serving and the decision; the data and
training sections live in decision/report_data.py, model quality in decision/report_eval.py and
the shared building blocks (tables, number formats, charts) in decision/report_html.py.
"""
from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any, Callable

from distilforge.atomic import atomic_write_text
from distilforge.card import METRIC_NAMES, headline, pairwise_method
from distilforge.layout import Run
from distilforge.manifest import read_json, read_manifest
from distilforge.records import Decision, PricedServing, TrainResult
from decision.report_curve import sec_learning_curve
from decision.report_data import sec_coverage, sec_distribution, sec_funnel, sec_generation, sec_training
from decision.report_eval import sec_eval
from decision.report_html import esc, img, not_run, num, png_bytes, pyplot, table, usd

__all__ = ["SECTIONS", "esc", "img", "not_run", "plot_cost_vs_volume", "png_bytes", "render_html", "render_report",
           "table"]

SECTIONS = ("summary", "funnel", "distribution", "coverage", "training", "eval", "curve", "rounds", "serving",
            "generation", "economics")
_QUALITY = {"student_accuracy", "student_ci", "teacher_accuracy", "teacher_ci", "n_heldout", "student_model",
            "metric", "pairwise"}

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%}
.not-run{color:#8a6d3b;background:#fcf8e3;padding:.6em;border-left:4px solid #e0c36b}
.error{color:#a94442;background:#f2dede;padding:.6em;border-left:4px solid #c9302c}
.verdict{font-size:1.2em;font-weight:bold;padding:.6em;background:#eef5ee;border-left:4px solid #3c763d}
code{background:#f5f5f5;padding:0 .2em}"""


# ---------------------------------------------------------------- sections

def sec_summary(run: Path) -> str:
    r = Run(run)
    spec = read_json(r.spec_json)
    lock = read_json(r.lock_json)
    dec = Decision.read(r)
    out = []
    if dec:
        out.append(f'<p class="verdict">{esc(dec.verdict_line)}</p>')
    rows = [["run", str(run)]]
    if spec:
        teacher = spec.get("teacher") or {}
        rows += [["task", spec.get("name")], ["type", spec.get("type")],
                 ["labels", ", ".join(str(lab.get("name")) for lab in spec.get("labels") or [])],
                 *([["fields", ", ".join(map(str, (spec.get("output_schema") or {}).get("properties") or {}))]]
                   if spec.get("output_schema") else []),
                 ["teacher", teacher.get("model")], ["student", (spec.get("student") or {}).get("base")]]
    else:
        out.append(not_run("spec resolution", r.spec_json))
    if lock:
        rows += [["held-out rows (locked)", lock.get("n")], ["held-out sha256", lock.get("sha256")]]
    else:
        out.append(not_run("held-out lock", r.lock_json))
    stages = [s for s, d in (("generate", r.generate), ("curate", r.curate), ("review", r.review), ("train", r.train))
              if read_manifest(d)]
    stages += [s for s, f in (("blindspots", r.blindspots_json), ("eval", r.metrics), ("decide", r.decision)) if f.exists()]
    rows.append(["stages present", ", ".join(stages) or "none"])
    return "".join(out) + table(None, rows)


def sec_rounds(run: Path) -> str:
    """`distilforge loop` (app/loop.py): each round's dev and test score; the kept round is the best on dev."""
    p = Run(run) / "loop.json"
    rounds = read_json(p)
    if not rounds:
        return not_run("the loop (`distilforge loop RUN --rounds N`)", p)

    def acc(s: dict | None) -> str:
        v, ci = headline(s)
        ci = ci or []
        return "" if v is None else num(v, "{:.3f}") + (
            f" [{num(ci[0], '{:.3f}')}, {num(ci[1], '{:.3f}')}]" if len(ci) == 2 else "")

    metric = next((x["dev"]["metric"] for x in rounds if (x.get("dev") or {}).get("metric")), "accuracy")

    rows = [[x.get("round"), x.get("rows"), x.get("targets"), acc(x.get("dev")), acc(x.get("test")),
             "kept" if x.get("kept") else ""] for x in rounds]
    note = ("<p>Targets come from blind spots on the dev split; the kept round is the one with the best student "
            f"{esc(METRIC_NAMES.get(metric, metric))} on <b>dev</b>. The locked test score is recorded for reading, "
            "never used to choose.</p>")
    return note + table(["round", "training rows", "new targets", "student on dev", "student on test (locked)", ""], rows)


def plot_cost_vs_volume(d: Decision) -> bytes:
    """PNG: hosted vs fine-tune lifetime cost over volume, break-even and planned volume marked."""
    from decision.economics import cost_lines

    c = d.costs
    be, vol = c.break_even_tasks, c.lifetime_tasks
    top = max([x for x in (be and 2 * be, vol and 1.5 * vol) if x] or [1000.0])
    xs = [top * i / 50 for i in range(51)]
    hosted, ft = cost_lines({"costs": c.model_dump()}, xs)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(xs, hosted, label="stay hosted", color="#dd8452", lw=2)
    ax.plot(xs, ft, label="fine-tune (upfront + serving)", color="#4c72b0", lw=2)
    if be is not None:
        ax.plot([be], [be * c.hosted_per_task_usd], "ko", ms=8)
        ax.annotate(f"break-even {be:,.0f} tasks", (be, be * c.hosted_per_task_usd),
                    textcoords="offset points", xytext=(8, -14))
    if vol:
        ax.axvline(vol, ls="--", color="gray", label=f"planned volume {vol:,.0f}")
    ax.set_xlabel("lifetime tasks")
    ax.set_ylabel("total cost (USD)")
    ax.set_title("cost vs volume")
    ax.legend()
    return png_bytes(fig)


def _evidence(e: Any) -> str:
    s = str(e or "")
    if s.startswith(("http://", "https://")) or (s and ":" not in s and not any(ch.isspace() for ch in s)):
        return f'<a href="{esc(s)}">{esc(s)}</a>'  # a URL or a relative path; anything else stays text
    return esc(s)


def _quality_line(q) -> str:
    """decide's quality check in one line: scores vs the teacher, or the pairwise outcome."""
    metric = getattr(q, "metric", None) or "accuracy"
    pw = getattr(q, "pairwise", None)
    if metric == "win_or_tie":
        got = f"{pw.get('wins')} wins / {pw.get('ties')} ties / {pw.get('losses')} losses" if pw else "not judged"
        return f"{q.status}: {q.student_model} vs teacher ({pairwise_method(pw)}): {got} (n={q.n})"
    name = "" if metric == "accuracy" else f"{METRIC_NAMES.get(metric, metric)} "
    return (f"{q.status}: {q.student_model} {name}{num(q.student_accuracy, '{:.3f}')} "
            f"{q.student_ci} vs teacher {num(q.teacher_accuracy, '{:.3f}')} (n={q.n})")


def sec_economics(run: Path) -> str:
    d = Decision.read(run)
    if not d:
        return not_run("decide (fine-tune vs hosted economics)", Decision.path(run)) + \
            "<p>Run <code>distilforge decide RUN --config decide.yaml</code>, then re-render.</p>"
    c, q = d.costs, d.quality
    parts = [f'<p class="verdict">{esc(d.verdict_line)}</p>',
             "<ul>" + "".join(f"<li>{esc(r)}</li>" for r in d.reasons) + "</ul>"]
    rows = [["hosted cost per task", usd(c.hosted_per_task_usd, 6)],
            ["fine-tuned serving cost per task", usd(c.finetune_per_task_usd, 6)],
            ["generation", usd(c.generation_usd)], ["training (GPU)", usd(c.training_usd)],
            ["other upfront", usd(c.other_upfront_usd)],
            ["serving, fixed over horizon", usd(c.serving_fixed_usd)],
            ["lifetime tasks", num(c.lifetime_tasks)], ["hosted total", usd(c.hosted_total_usd)],
            ["fine-tune total", usd(c.finetune_total_usd)], ["savings", usd(c.savings_usd)],
            ["savings fraction", num(c.savings_fraction, "{:.1%}")],
            ["break-even tasks", num(c.break_even_tasks)],
            ["tasks needed for the margin", num(c.volume_for_margin_tasks)],
            ["quality", _quality_line(q)]]
    parts.append(table(None, rows))
    try:
        data = base64.b64encode(plot_cost_vs_volume(d)).decode()
        parts.append(f'<img class="chart" alt="cost vs volume" src="data:image/png;base64,{data}">')
    except ValueError:
        parts.append('<p class="not-run">No cost-vs-volume plot: some costs are unknown (see missing inputs).</p>')
    parts.append("<h3>pre-check</h3><table><tr><th>question</th><th>answer</th><th>source</th><th>evidence</th></tr>"
                 + "".join(f"<tr><td>{esc(pc.question)}</td><td>{esc(pc.answer or 'unanswered')}</td>"
                           f"<td>{esc(pc.source)}</td><td>{_evidence(pc.evidence)}</td></tr>"
                           for pc in d.precheck) + "</table>")
    inputs = d.inputs
    src = inputs.get("sources") or {}
    parts.append("<h3>inputs</h3>" + table(["input", "value", "source"],
                                           [[k, v, src.get(k) or (src.get("quality", "") if k in _QUALITY else "")]
                                            for k, v in inputs.items() if k != "sources"]))
    return "".join(parts)


def sec_serving(run: Path) -> str:
    """The exported student served: benchmark (latency, tasks/s/core, RSS per quantization, vs the
    teacher), served vs PyTorch accuracy on the same locked rows, and what decide priced from it."""
    r = Run(run)
    tm = TrainResult.read(r)
    adapter = tm.adapter_sha256 if tm else None
    parts = []
    b = read_json(r.serve_benchmark)
    if b and b.get("adapter_sha256") == adapter:
        rows = [[x.get("model"), x.get("quant"), x.get("replicas"), x.get("concurrency"), x.get("p50_ms"), x.get("p95_ms"),
                 x.get("tasks_per_s"), x.get("tasks_per_s_per_core"), x.get("rss_mb"), x.get("file_mb"),
                 f"{x.get('valid_labels')}/{x.get('requests')}"] for x in b.get("results") or []]
        la, lb = (b.get("box") or {}).get("loadavg_before"), (b.get("box") or {}).get("loadavg_after")
        parts.append(f"<p>{esc(b.get('requests'))} requests per configuration, {esc((b.get('box') or {}).get('cpu_count'))} "
                     f"cores, load average {esc(la and round(la[0], 2))} before / {esc(lb and round(lb[0], 2))} after "
                     f"(<code>{esc(b.get('command'))}</code>).</p>")
        parts.append(table(["model", "quant", "replicas", "clients", "p50 ms", "p95 ms", "tasks/s", "tasks/s/core",
                            "RSS MB", "file MB", "valid labels"], rows))
    elif b:
        parts.append('<p class="not-run">serve/benchmark.json measured another adapter: re-run benchmarks/serving.py.</p>')
    else:
        parts.append(not_run("serving benchmark (python benchmarks/serving.py RUN)", r.serve_benchmark))
    eps = [e for e in (read_json(p) for p in sorted(r.endpoint_results.glob("*.json"))) if e]
    eps = [e for e in eps if e.get("adapter_sha256") == adapter]
    if eps:
        rows = []
        for e in eps:
            v = e.get("vs_student") or {}
            if v:
                rows.append(["student (PyTorch)", e.get("n"), f"{v['student_accuracy']:.3f}", v.get("student_accuracy_ci"), ""])
            rows.append([f"{e.get('name')} ({e.get('model')}, {(e.get('meta') or {}).get('quant') or '?'})", e.get("n"),
                         f"{e.get('accuracy', 0):.3f}", e.get("accuracy_ci"),
                         f"{v['diff']:+.3f} {v['ci']} p={v['p_value']}" if v else ""])
        parts.append("<h3>served vs PyTorch student (same locked rows)</h3>"
                     + table(["model", "n", "accuracy", "95% CI", "served - PyTorch (paired)"], rows))
    d = Decision.read(r)
    sv = d.serving if d else None
    if sv:
        pr = sv.priced or PricedServing()
        line = (f"measured: {pr.tasks_per_hour / 3600:,.2f} tasks/s per {pr.unit}, ${pr.price_per_hour:g} per "
                f"{pr.unit}-hour = ${pr.per_task_usd:.6f} per task; replaces {sv.replaced}"
                if sv.mode == "measured" else f"assumed: {sv.assumption}" + (f" ({sv.note})" if sv.note else ""))
        parts.append(f"<p>decide priced serving as {esc(line)}.</p>")
    return "".join(parts)


_BUILDERS: dict[str, tuple[str, Callable[[Path], str]]] = {
    "summary": ("Summary", sec_summary), "funnel": ("Data funnel", sec_funnel),
    "distribution": ("Label / strategy distribution", sec_distribution),
    "coverage": ("Coverage map", sec_coverage), "training": ("Training curves", sec_training),
    "eval": ("Evaluation on the locked held-out set", sec_eval),
    "curve": ("Learning curve: accuracy vs rows per label", sec_learning_curve),
    "rounds": ("Loop rounds (chosen on dev)", sec_rounds),
    "serving": ("Serving the student", sec_serving),
    "generation": ("Generation tokens and cost", sec_generation),
    "economics": ("Decision: fine-tune vs stay hosted", sec_economics),
}


def render_html(run: str | Path) -> str:
    run = Path(run)
    if not run.is_dir():
        raise ValueError(f"{run}: no such run directory")
    body = []
    for sid in SECTIONS:
        title, fn = _BUILDERS[sid]
        try:
            content = fn(run)
        except Exception as e:  # one broken file must not take the whole report down
            print(f"report: section {sid}: {type(e).__name__}: {e}", file=sys.stderr)
            content = f'<p class="error">Could not render this section: {esc(type(e).__name__)}: {esc(e)}</p>'
        body.append(f'<section id="{sid}"><h2>{esc(title)}</h2>{content}</section>')
    name = (read_json(Run(run).spec_json) or {}).get("name") or run.name
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>distilforge report: {esc(name)}</title>'
            f"<style>{_CSS}</style></head><body><h1>distilforge report: {esc(name)}</h1>"
            + "".join(body) + "</body></html>\n")


def render_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN/report.html (or `out`) atomically; returns its path."""
    run = Path(run)
    target = Path(out) if out else Run(run).report_html
    atomic_write_text(target, render_html(run))
    return target

