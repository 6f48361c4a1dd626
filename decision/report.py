"""`distilforge report RUN` -> RUN/report.html: the whole run on one page that opens offline.

One file on purpose: it gets mailed, attached to a ticket and opened years later, so charts are
matplotlib PNGs embedded as base64 and there is no script, font or stylesheet to fetch.
Each section reads only its own stage's outputs (the run-directory contract) and, when that
stage did not run, says so instead of failing; a section that cannot be rendered from a broken
file shows the error line rather than taking the whole report down. Held-out data appears only
as counts, the lock hash, metrics and anonymous points on the coverage map: its text is never
read here.
"""
from __future__ import annotations

import base64
import html
import io
import sys
from pathlib import Path
from typing import Any, Callable

from distilforge.atomic import atomic_write_text
from distilforge.card import METRIC_NAMES, headline, metric_of, pairwise_of, reply_checks_of
from distilforge.layout import Run
from distilforge.manifest import MANIFEST, read_json, read_manifest
from distilforge.records import Decision, GenerationResult, Metrics, PricedServing, Tokens, TrainResult

SECTIONS = ("summary", "funnel", "distribution", "coverage", "training", "eval", "rounds", "serving", "generation",
            "economics")
_MODEL_ORDER = ("base", "teacher", "student_sft", "student_dpo", "student")
_QUALITY = {"student_accuracy", "student_ci", "teacher_accuracy", "teacher_ci", "n_heldout", "student_model",
            "metric", "pairwise"}
_COLORS = ["#8c8c8c", "#dd8452", "#4c72b0", "#55a868", "#c44e52"]

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%}
.not-run{color:#8a6d3b;background:#fcf8e3;padding:.6em;border-left:4px solid #e0c36b}
.error{color:#a94442;background:#f2dede;padding:.6em;border-left:4px solid #c9302c}
.verdict{font-size:1.2em;font-weight:bold;padding:.6em;background:#eef5ee;border-left:4px solid #3c763d}
code{background:#f5f5f5;padding:0 .2em}"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: Any, fmt: str = "{:,.0f}") -> str:
    if x is None:
        return "?"
    try:
        return fmt.format(x)
    except (ValueError, TypeError):
        return esc(x)


def _cell(c: Any) -> str:
    return esc(f"{c:.6g}" if isinstance(c, float) else c)


def _usd(x: Any, nd: int = 4) -> str:
    return "?" if x is None else f"{'-' if x < 0 else ''}${abs(x):,.{nd}f}"


def table(header: list[str] | None, rows: list[list[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def not_run(what: str, path: Path) -> str:
    return f'<p class="not-run">{esc(what)} didn\'t run: <code>{esc(path)}</code> not found.</p>'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def img(fig, alt: str) -> str:
    data = base64.b64encode(png_bytes(fig)).decode()
    return f'<img class="chart" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _json(path: Path) -> dict | None:
    return read_json(path)


def _columns(path: Path, cols: list[str]) -> dict[str, list]:
    """Only the named columns of a saved dataset (missing columns come back empty)."""
    from distilforge.manifest import load_dataset_dir

    ds = load_dataset_dir(path)
    return {c: (list(ds[c]) if c in ds.column_names else []) for c in cols}


def _counts(values: list) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# ---------------------------------------------------------------- sections

def sec_summary(run: Path) -> str:
    r = Run(run)
    spec = _json(r.spec_json)
    lock = _json(r.lock_json)
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


def sec_funnel(run: Path) -> str:
    r = Run(run)
    gen, cur, rev = read_manifest(r.generate), read_manifest(r.curate), read_manifest(r.review)
    if not gen and not cur:
        return not_run("generate / curate", r.generate / MANIFEST)
    steps: list[tuple[str, int | None, dict]] = []
    if gen:
        g = _columns(r.generated_rows, ["label", "status"])
        ok = [lab for lab, st in zip(g["label"], g["status"]) if st == "ok"] if g["status"] else g["label"]
        steps.append(("generated (requested)", len(g["label"]), _counts(g["label"])))
        steps.append(("generated ok", len(ok), _counts(ok)))
    for f in (cur or {}).get("funnel") or []:
        steps.append((f.get("step", "?"), f.get("out"), f.get("per_label") or {}))
    if rev:
        steps += [("reviewed", rev.get("reviewed"), {}), ("approved", rev.get("approved"), {})]
    parts = [] if cur else [not_run("curate", r.curate / MANIFEST)]
    if not rev:
        parts.append('<p class="not-run">review didn\'t run (no human review recorded): '
                     f'<code>{esc(r.review / MANIFEST)}</code> not found.</p>')
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(steps) + 1))
    names = [s[0] for s in steps][::-1]
    vals = [s[1] or 0 for s in steps][::-1]
    ax.barh(names, vals, color="#4c72b0")
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v}", va="center")
    ax.set_xlabel("rows")
    ax.set_title("data funnel")
    parts.append(img(fig, "data funnel"))
    labels = sorted({lab for s in steps for lab in s[2]}, key=str)
    rows = [[lab] + [s[2].get(lab, "") if s[2] else "" for s in steps] for lab in labels]
    rows.append(["total"] + [s[1] for s in steps])
    parts.append(table(["label"] + [s[0] for s in steps], rows))
    drops = [[f.get("step"), f.get("in"), f.get("out"), f.get("dropped"), f.get("seconds")]
             for f in (cur or {}).get("funnel") or []]
    if drops:
        parts.append(table(["curation step", "in", "out", "dropped", "seconds"], drops))
    return "".join(parts)


def sec_distribution(run: Path) -> str:
    r = Run(run)
    if not read_manifest(r.generate):
        return not_run("generate", r.generate / MANIFEST)
    before = _columns(r.generated_rows, ["label", "strategy", "status"])
    if before["status"]:
        keep = [st == "ok" for st in before["status"]]
        before = {k: [v for v, ok in zip(vs, keep) if ok] for k, vs in before.items() if vs}
    after = _columns(r.curated, ["label", "strategy"]) if read_manifest(r.curate) else None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, col in zip(axes, ("label", "strategy")):
        b = _counts(before.get(col) or [])
        a = _counts(after[col]) if after else {}
        keys = sorted(set(b) | set(a), key=str)
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [b.get(k, 0) for k in keys], 0.4, label="generated (ok)")
        if after:
            ax.bar([x + 0.2 for x in xs], [a.get(k, 0) for k in keys], 0.4, label="curated")
        ax.set_xticks(list(xs), [str(k) for k in keys], rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{col} before / after curation")
        ax.legend()
    out = img(fig, "label and strategy distribution")
    if not after:
        out = not_run("curate", r.curate / MANIFEST) + out
    return out


def sec_coverage(run: Path) -> str:
    p = Run(run).blindspots_json
    bs = _json(p)
    if not bs or not (bs.get("coverage") or {}).get("points"):
        return not_run("blind-spot analysis (coverage map)", p)
    cov = bs["coverage"]
    clusters = cov.get("gaps") or []  # every dev-split cluster, worst first; `gap` marks the real gaps
    gaps = [g for g in clusters if g.get("gap", True)]
    gap_ids = {g.get("cluster") for g in gaps}
    pts = cov["points"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    syn = [q for q in pts if q.get("kind") == "synthetic"]
    held = [q for q in pts if q.get("kind") == "dev"]
    ax.scatter([q["x"] for q in syn], [q["y"] for q in syn], s=8, c="#9ecae1", label="synthetic")
    ax.scatter([q["x"] for q in held], [q["y"] for q in held], s=14, c="#d62728", marker="x", label="dev split (real)")
    gap_pts = [q for q in held if q.get("cluster") in gap_ids]
    if gap_pts:
        ax.scatter([q["x"] for q in gap_pts], [q["y"] for q in gap_pts], s=90, facecolors="none",
                   edgecolors="black", label="gap cluster")
        for cid in gap_ids:
            cp = [q for q in gap_pts if q.get("cluster") == cid]
            if cp:
                ax.annotate(f"gap {cid}", (sum(q["x"] for q in cp) / len(cp), sum(q["y"] for q in cp) / len(cp)),
                            fontsize=9, weight="bold")
    ax.legend()
    ax.set_title("coverage: real dev split vs training rows (2-D projection)")
    rows = [[g.get("cluster"), "GAP" if g.get("gap", True) else "", g.get("size"), _num(g.get("distance"), "{:.3f}"),
             g.get("synthetic_rows", ""), _num(g.get("error_rate"), "{:.2f}") if "error_rate" in g else "",
             _num(g.get("teacher_accuracy"), "{:.2f}") if "teacher_accuracy" in g else "",
             ", ".join(f"{k}:{v}" for k, v in (g.get("labels") or {}).items() if k), ", ".join(g.get("keywords") or [])]
            for g in clusters[:15]]
    note = (f"<p>{len(held)} real dev-split points (text not shown), {len(syn)} training points, "
            f"{len(gaps)} gap cluster(s) of {len(clusters)}. Blind spots are computed on the dev split of real "
            "traffic, never on the locked test set (that would tune the data to the test). Distance = mean "
            "(1 − cosine) from a cluster's real rows to their nearest training row; student err = the student's "
            "error rate on the cluster's dev rows; teacher acc = the teacher's accuracy there (gold dev labels only)."
            "</p>")
    head = ["cluster", "gap", "size", "distance", "training rows", "student err", "teacher acc", "labels", "keywords"]
    note += "".join(f"<p>{esc(x)}</p>" for x in bs.get("notes") or [])
    return img(fig, "coverage map") + note + table(head, rows) + _review_tables(bs.get("review"))


def _review_tables(review: dict | None) -> str:
    """Rejection hot spots and judge-vs-human agreement, when curators have reviewed the run."""
    if not review:
        return "<p>Review analysis: no curator responses pulled yet (`distilforge review pull RUN`).</p>"
    jv = review.get("judge_vs_human") or {}
    rows = [[q, v.get("pairs"), _num(v.get("agreement"), "{:.2f}"), _num(v.get("kappa"), "{:.2f}")]
            for q, v in jv.items() if isinstance(v, dict)]
    out = (f"<h3>Review</h3><p>{review.get('reviewed_records', 0)} records reviewed by {review.get('reviewers', 0)} "
           "curator(s).</p><h4>Teacher-judge vs humans</h4>" + table(["question", "pairs", "agreement", "kappa"], rows))
    hs = review.get("hot_spots") or {}
    hot = [[dim, t.get(dim), t.get("reviewed"), t.get("rejected"), _num(t.get("reject_rate"), "{:.2f}"),
            ", ".join(f"{k}:{v}" for k, v in (t.get("reasons") or {}).items()), "HOT" if t.get("hot") else ""]
           for dim in ("label", "strategy", "cluster") for t in (hs.get(f"by_{dim}") or [])[:5]]
    return out + (f"<h4>Rejection hot spots (overall reject rate {_num(hs.get('overall_reject_rate'), '{:.2f}')})</h4>"
                  + table(["by", "group", "reviewed", "rejected", "reject rate", "reasons", ""], hot) if hot else "")


def _series(log: list[dict], key: str) -> tuple[list, list]:
    pts = [(e.get("step", i), e[key]) for i, e in enumerate(log) if isinstance(e.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def sec_training(run: Path) -> str:
    tm = TrainResult.read(run)
    if not tm:
        return not_run("train", TrainResult.path(run))
    log = tm.log_history
    dpo = tm.dpo.log_history if tm.dpo else None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, style in (("loss", "-o"), ("eval_loss", "--s")):
        xs, ys = _series(log, key)
        if xs:
            axes[0].plot(xs, ys, style, ms=3, label=f"SFT {key}")
    if dpo:
        xs, ys = _series(dpo, "loss")
        if xs:
            axes[0].plot(xs, ys, "-^", ms=3, label="DPO loss")
        mkey = next((k for e in dpo for k in e if "margin" in k), None)
        xs, ys = _series(dpo, mkey) if mkey else ([], [])
        if xs:
            axes[1].plot(xs, ys, "-o", ms=3, color="#55a868", label=mkey)
            axes[1].legend()
    if not dpo or not axes[1].lines:
        axes[1].text(0.5, 0.5, "DPO didn't run", ha="center", va="center", transform=axes[1].transAxes)
    axes[0].set_title("training loss")
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[1].set_title("DPO reward margin")
    axes[1].set_xlabel("step")
    rows = [["train seconds", tm.seconds], ["device", tm.device if tm.device is not None else "not recorded"],
            ["SFT log entries", len(log)], ["DPO", "ran" if dpo else "didn't run"]]
    return img(fig, "training curves") + table(None, rows)


def sec_eval(run: Path) -> str:
    m = Metrics.read(run)
    if not m or not m.models:
        return not_run("eval", Metrics.path(run))
    models = m.models
    keys = [k for k in _MODEL_ORDER if k in models] + [k for k in models if k not in _MODEL_ORDER]
    metric = metric_of(m)
    if metric == "accuracy":
        return _eval_classification(m, keys)
    parts = [_eval_headline(m, keys, metric)]
    if metric == "micro_f1":
        parts.append(_eval_extraction(m, keys))
    elif metric == "win_or_tie":
        parts.append(_eval_instruction(m, keys))
    parts.append(_comparisons(m))
    return "".join(parts)


def _ci_text(ci: Any) -> str:
    return "[" + ", ".join(_num(c, "{:.3f}") for c in ci or []) + "]"


def _eval_classification(m: Metrics, keys: list[str]) -> str:
    """Accuracy with CIs, macro-F1, per-label accuracy and the confusion matrix."""
    models = m.models
    labels = m.labels or sorted({lab for k in keys for lab in models[k].per_label})
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    acc = [models[k].accuracy or 0 for k in keys]
    err = [[a - (models[k].accuracy_ci or [a, a])[0] for k, a in zip(keys, acc)],
           [(models[k].accuracy_ci or [a, a])[1] - a for k, a in zip(keys, acc)]]
    ax.bar(keys, acc, yerr=err, capsize=6, color=_COLORS[: len(keys)])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title(f"locked held-out set, n = {m.n}")
    parts = [img(fig, "eval comparison")]
    parts.append(table(["model", "accuracy", "95% CI", "macro F1", "rows"],
                       [[k, _num(models[k].accuracy, "{:.3f}"), _ci_text(models[k].accuracy_ci),
                         _num(models[k].macro_f1, "{:.3f}"), models[k].rows or m.n] for k in keys]))
    rows = []
    for lab in labels:
        row = [lab]
        for k in keys:
            pl = models[k].per_label.get(lab) or {}
            row.append(f"{_num(pl.get('accuracy'), '{:.2f}')} (n={pl.get('n', '?')})" if pl else "")
        rows.append(row)
    parts.append("<h3>per label</h3>" + table(["label"] + keys, rows))
    ck = next((k for k in ("student", "student_dpo", "student_sft", "teacher", "base") if k in models and models[k].confusion),
              None)
    if ck:
        cm = models[ck].confusion
        cols = list(labels) + ["(other)"] * (len(cm[0]) - len(labels)) if cm and len(cm[0]) > len(labels) else list(labels)
        fig, ax = plt.subplots(figsize=(0.5 * len(cols) + 3, 0.5 * len(cm) + 2.5))
        ax.imshow(cm, cmap="Blues")
        for i, r in enumerate(cm):
            for j, v in enumerate(r):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(cols)), [str(c) for c in cols][: len(cm[0])], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(cm)), [str(c) for c in labels][: len(cm)], fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"confusion matrix: {ck}")
        parts.append("<h3>confusion matrix</h3>" + img(fig, f"confusion matrix {ck}"))
    else:
        parts.append("<p>No confusion matrix recorded.</p>")
    return "".join(parts)


def _eval_headline(m: Metrics, keys: list[str], metric: str) -> str:
    """Every model's headline score (metrics `metric`), its CI and the rows it stands on (the
    teacher may answer a subset), then the format's secondary numbers (`table`)."""
    name = METRIC_NAMES.get(metric, metric)
    scored = [(k, *headline(m.models[k])) for k in keys]
    shown = [(k, v, ci) for k, v, ci in scored if v is not None]
    parts = []
    if shown:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(8, 3.8))
        vals = [v for _, v, _ in shown]
        cis = [ci if ci and len(ci) == 2 else [v, v] for _, v, ci in shown]
        ax.bar([k for k, _, _ in shown], vals, yerr=[[v - c[0] for v, c in zip(vals, cis)],
                                                     [c[1] - v for v, c in zip(vals, cis)]],
               capsize=6, color=_COLORS[: len(shown)])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"{name} (95% CI)")
        ax.set_title(f"locked held-out set, n = {m.n}")
        parts.append(img(fig, f"eval comparison ({name})"))
    extra = list(dict.fromkeys(c for k in keys for c in (getattr(m.models[k], "table", None) or {})))
    rows = []
    for k, v, ci in scored:
        tab = getattr(m.models[k], "table", None) or {}
        ref = v is None and metric == "win_or_tie" and k == "teacher"
        rows.append([k, "reference (the replies judged against)" if ref else _num(v, "{:.3f}"),
                     "" if ref else _ci_text(ci), m.models[k].rows or m.n]
                    + [_num(tab.get(c), "{:.3f}") if c in tab else "" for c in extra])
    parts.append(table(["model", name, "95% CI", "rows", *extra], rows))
    return "".join(parts)


def _eval_extraction(m: Metrics, keys: list[str]) -> str:
    """Validity and exact match per model (all rows, and valid answers only), then per-field F1."""
    ents = {k: m.models[k].model_dump() for k in keys}
    rows = []
    for k, e in ents.items():
        raw, vo = e.get("raw") or {}, e.get("valid_only") or {}
        rows.append([k, f"{_num(e.get('json_validity'), '{:.3f}')} {_ci_text(e.get('json_validity_ci'))}",
                     f"{_num(raw.get('exact_match'), '{:.3f}')} {_ci_text(raw.get('exact_match_ci'))}",
                     _num(raw.get("macro_f1"), "{:.3f}"), vo.get("n", ""), _num(vo.get("micro_f1"), "{:.3f}"),
                     _num(vo.get("exact_match"), "{:.3f}"),
                     ", ".join(f"{r}: {c}" for r, c in (e.get("invalid_reasons") or {}).items())])
    parts = ["<h3>validity and exact match</h3><p>All rows: an answer that is not a JSON object valid against the "
             "schema extracts nothing. Valid only: the same metrics over the valid answers alone.</p>",
             table(["model", "JSON valid (95% CI)", "exact match (95% CI)", "macro field-F1", "valid rows",
                    "micro F1, valid only", "exact match, valid only", "why invalid"], rows)]
    views = {k: (e.get("raw") or {}).get("per_field") or {} for k, e in ents.items()}
    fields = list(dict.fromkeys(f for k in keys for f in views[k]))
    if fields:
        frows = []
        for f in fields:
            extra = any((views[k].get(f) or {}).get("extra") for k in keys)
            frows.append([f + (" (not in schema)" if extra else "")]
                         + [_num((views[k].get(f) or {}).get("f1"), "{:.3f}") if f in views[k] else "" for k in keys])
        parts.append("<h3>per-field F1</h3><p>All rows (an invalid answer extracts nothing); the teacher's on the "
                     "rows it answered.</p>" + table(["field"] + [f"{k} F1" for k in keys], frows))
    return "".join(parts)


def _eval_instruction(m: Metrics, keys: list[str]) -> str:
    """Win / tie / loss against the teacher (judged in both orders) and the reply checks."""
    pw = {k: p for k in keys if (p := pairwise_of(m.models[k]))}
    parts = []
    if pw:
        plt = _plt()
        names = list(pw)[::-1]
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.6))
        left = [0.0] * len(names)
        for what, key, color in (("win", "wins", "#55a868"), ("tie", "ties", "#c8c8c8"), ("loss", "losses", "#c44e52")):
            share = [pw[k][key] / max(pw[k]["wins"] + pw[k]["ties"] + pw[k]["losses"], 1) for k in names]
            ax.barh(names, share, left=left, color=color, label=what)
            for i, (x, w) in enumerate(zip(left, share)):
                if w >= 0.06:
                    ax.text(x + w / 2, i, str(pw[names[i]][key]), ha="center", va="center", fontsize=9)
            left = [a + b for a, b in zip(left, share)]
        ax.axvline(0.5, ls="--", color="black", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of locked rows")
        ax.set_title("vs the teacher: win / tie / loss (judged in both orders)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, fontsize=8, frameon=False)
        parts.append("<h3>win / tie / loss vs the teacher</h3>" + img(fig, "win rate vs teacher"))
        parts.append(table(["model", "n", "wins", "ties", "losses", "win rate, ties half (95% CI)", "position bias",
                            "unreadable verdicts"],
                           [[k, p.get("n"), p["wins"], p["ties"], p["losses"],
                             f"{_num(p.get('win_rate_tie_half'), '{:.3f}')} {_ci_text(p.get('win_rate_tie_half_ci'))}",
                             _num(p.get("position_bias"), "{:.2f}"), p.get("unparsable", "")] for k, p in pw.items()]))
        parts.append("<p>Each reply is judged twice, with the order swapped; only a verdict that survives the swap "
                     "counts, anything else is a tie. The dashed line is parity (wins = losses).</p>")
    else:
        parts.append("<p>No pairwise judgement against the teacher recorded.</p>")
    checks = {k: c for k in keys if (c := reply_checks_of(m.models[k], m, k))}
    if checks:
        parts.append("<h3>reply checks</h3>" + table(
            ["model", "replies", "mean words", "length ok", "refusal", "asks for a secret"],
            [[k, c.get("n"), _num(c.get("mean_words"), "{:.1f}")]
             + [f"{_num(c.get(x), '{:.3f}')} {_ci_text(c.get(x + '_ci'))}" for x in ("length_ok", "refusal", "pii_ask")]
             for k, c in checks.items()]))
    return "".join(parts)


def _comparisons(m: Metrics) -> str:
    rows = [[k, v.get("metric") or "", _num(v.get("diff"), "{:+.3f}"), _ci_text(v.get("ci")), v.get("p_value"),
             v.get("rows", "")] for k, v in m.comparisons.items() if "diff" in v]
    return "<h3>paired comparisons (same rows)</h3>" + table(["comparison", "metric", "difference", "95% CI", "p",
                                                              "rows"], rows) if rows else ""


def sec_rounds(run: Path) -> str:
    """`distilforge loop` (app/loop.py): each round's dev and test score; the kept round is the best on dev."""
    p = Run(run) / "loop.json"
    rounds = _json(p)
    if not rounds:
        return not_run("the loop (`distilforge loop RUN --rounds N`)", p)

    def acc(s: dict | None) -> str:
        v, ci = headline(s)
        ci = ci or []
        return "" if v is None else _num(v, "{:.3f}") + (
            f" [{_num(ci[0], '{:.3f}')}, {_num(ci[1], '{:.3f}')}]" if len(ci) == 2 else "")

    metric = next((x["dev"]["metric"] for x in rounds if (x.get("dev") or {}).get("metric")), "accuracy")

    rows = [[x.get("round"), x.get("rows"), x.get("targets"), acc(x.get("dev")), acc(x.get("test")),
             "kept" if x.get("kept") else ""] for x in rounds]
    note = ("<p>Targets come from blind spots on the dev split; the kept round is the one with the best student "
            f"{esc(METRIC_NAMES.get(metric, metric))} on <b>dev</b>. The locked test score is recorded for reading, "
            "never used to choose.</p>")
    return note + table(["round", "training rows", "new targets", "student on dev", "student on test (locked)", ""], rows)


def sec_generation(run: Path) -> str:
    r = Run(run)
    gen = GenerationResult.read(r)
    if not gen:
        return not_run("generate", GenerationResult.path(r))
    tok = gen.tokens or Tokens()
    g = _columns(r.generated_rows, ["label", "status", "prompt_tokens", "completion_tokens"])
    failed = sum(1 for s in g["status"] if s != "ok")
    rows = [["teacher model", gen.teacher_model], ["requests", gen.requests],
            ["rows", len(g["label"])], ["failed rows", failed],
            ["prompt tokens", _num(tok.prompt)], ["completion tokens", _num(tok.completion)],
            ["cost (USD, at the teacher's prices)", _num(gen.cost_usd, "${:,.4f}")],
            ["seconds", gen.seconds]]
    m = Metrics.read(r)
    et = m.models["teacher"].tokens if m and "teacher" in m.models else None
    if et:
        rows += [["eval teacher calls", et.calls], ["eval teacher prompt tokens", _num(et.prompt)],
                 ["eval teacher completion tokens", _num(et.completion)]]
    per: dict = {}
    for lab, pt, ct in zip(g["label"], g["prompt_tokens"] or [0] * len(g["label"]),
                           g["completion_tokens"] or [0] * len(g["label"])):
        a = per.setdefault(lab, [0, 0])
        a[0] += pt or 0
        a[1] += ct or 0
    out = table(None, rows)
    if per and any(sum(v) for v in per.values()):
        plt = _plt()
        keys = sorted(per, key=str)
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(keys, [per[k][0] for k in keys], label="prompt")
        ax.bar(keys, [per[k][1] for k in keys], bottom=[per[k][0] for k in keys], label="completion")
        ax.set_title("generation tokens per label")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.legend()
        out += img(fig, "generation tokens per label")
    return out


def plot_cost_vs_volume(d: Decision) -> bytes:
    """PNG: hosted vs fine-tune lifetime cost over volume, break-even and planned volume marked."""
    from decision.economics import cost_lines

    c = d.costs
    be, vol = c.break_even_tasks, c.lifetime_tasks
    top = max([x for x in (be and 2 * be, vol and 1.5 * vol) if x] or [1000.0])
    xs = [top * i / 50 for i in range(51)]
    hosted, ft = cost_lines({"costs": c.model_dump()}, xs)
    plt = _plt()
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
        return f"{q.status}: {q.student_model} vs teacher (pairwise): {got} (n={q.n})"
    name = "" if metric == "accuracy" else f"{METRIC_NAMES.get(metric, metric)} "
    return (f"{q.status}: {q.student_model} {name}{_num(q.student_accuracy, '{:.3f}')} "
            f"{q.student_ci} vs teacher {_num(q.teacher_accuracy, '{:.3f}')} (n={q.n})")


def sec_economics(run: Path) -> str:
    d = Decision.read(run)
    if not d:
        return not_run("decide (fine-tune vs hosted economics)", Decision.path(run)) + \
            "<p>Run <code>distilforge decide RUN --config decide.yaml</code>, then re-render.</p>"
    c, q = d.costs, d.quality
    parts = [f'<p class="verdict">{esc(d.verdict_line)}</p>',
             "<ul>" + "".join(f"<li>{esc(r)}</li>" for r in d.reasons) + "</ul>"]
    rows = [["hosted cost per task", _usd(c.hosted_per_task_usd, 6)],
            ["fine-tuned serving cost per task", _usd(c.finetune_per_task_usd, 6)],
            ["generation", _usd(c.generation_usd)], ["training (GPU)", _usd(c.training_usd)],
            ["other upfront", _usd(c.other_upfront_usd)],
            ["serving, fixed over horizon", _usd(c.serving_fixed_usd)],
            ["lifetime tasks", _num(c.lifetime_tasks)], ["hosted total", _usd(c.hosted_total_usd)],
            ["fine-tune total", _usd(c.finetune_total_usd)], ["savings", _usd(c.savings_usd)],
            ["savings fraction", _num(c.savings_fraction, "{:.1%}")],
            ["break-even tasks", _num(c.break_even_tasks)],
            ["tasks needed for the margin", _num(c.volume_for_margin_tasks)],
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
    b = _json(r.serve_benchmark)
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
    eps = [e for e in (_json(p) for p in sorted(r.endpoint_results.glob("*.json"))) if e]
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
    name = (_json(Run(run).spec_json) or {}).get("name") or run.name
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>distilforge report: {esc(name)}</title>'
            f"<style>{_CSS}</style></head><body><h1>distilforge report: {esc(name)}</h1>"
            + "".join(body) + "</body></html>\n")


def render_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN/report.html (or `out`) atomically; returns its path."""
    run = Path(run)
    target = Path(out) if out else Run(run).report_html
    atomic_write_text(target, render_html(run))
    return target
