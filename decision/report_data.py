"""Report sections about the data and the training run: the funnel, the label / strategy
distribution, the coverage map (with the review analysis), the training curves and the
generation tokens. Each reads only its own stage's outputs and says so when that stage did not run.
"""
from __future__ import annotations

from pathlib import Path

from distilforge.layout import Run
from distilforge.manifest import MANIFEST, read_json, read_manifest
from distilforge.records import GenerationResult, Metrics, Tokens, TrainResult
from decision.report_html import columns, counts, esc, img, not_run, num, pyplot, table

NO_LABELS = "<p>This task type has no labels: {}.</p>"


def labelled(values) -> bool:
    """Whether rows carry labels at all: extraction and instruction rows have `label` "" (one
    unlabelled group), and a per-label breakdown of them would be one bucket with no name."""
    return any(v not in ("", None) for v in values)


def sec_funnel(run: Path) -> str:
    r = Run(run)
    gen, cur, rev = read_manifest(r.generate), read_manifest(r.curate), read_manifest(r.review)
    if not gen and not cur:
        return not_run("generate / curate", r.generate / MANIFEST)
    steps: list[tuple[str, int | None, dict]] = []
    if gen:
        g = columns(r.generated_rows, ["label", "status"])
        ok = [lab for lab, st in zip(g["label"], g["status"]) if st == "ok"] if g["status"] else g["label"]
        steps.append(("generated (requested)", len(g["label"]), counts(g["label"])))
        steps.append(("generated ok", len(ok), counts(ok)))
    for f in (cur or {}).get("funnel") or []:
        steps.append((f.get("step", "?"), f.get("out"), f.get("per_label") or {}))
    if rev:
        steps += [("reviewed", rev.get("reviewed"), {}), ("approved", rev.get("approved"), {})]
    parts = [] if cur else [not_run("curate", r.curate / MANIFEST)]
    if not rev:
        parts.append('<p class="not-run">review didn\'t run (no human review recorded): '
                     f'<code>{esc(r.review / MANIFEST)}</code> not found.</p>')
    plt = pyplot()
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
    if labelled(labels):
        rows = [[lab] + [s[2].get(lab, "") if s[2] else "" for s in steps] for lab in labels]
        rows.append(["total"] + [s[1] for s in steps])
        parts.append(table(["label"] + [s[0] for s in steps], rows))
    else:
        parts.append(NO_LABELS.format("the funnel counts all rows as one bucket")
                     + table([""] + [s[0] for s in steps], [["all rows"] + [s[1] for s in steps]]))
    drops = [[f.get("step"), f.get("in"), f.get("out"), f.get("dropped"), f.get("seconds")]
             for f in (cur or {}).get("funnel") or []]
    if drops:
        parts.append(table(["curation step", "in", "out", "dropped", "seconds"], drops))
    return "".join(parts)


def sec_distribution(run: Path) -> str:
    r = Run(run)
    if not read_manifest(r.generate):
        return not_run("generate", r.generate / MANIFEST)
    before = columns(r.generated_rows, ["label", "strategy", "status"])
    if before["status"]:
        keep = [st == "ok" for st in before["status"]]
        before = {k: [v for v, ok in zip(vs, keep) if ok] for k, vs in before.items() if vs}
    after = columns(r.curated, ["label", "strategy"]) if read_manifest(r.curate) else None
    by = ("label", "strategy") if labelled((before.get("label") or []) + ((after or {}).get("label") or [])) \
        else ("strategy",)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(by), figsize=(5.5 * len(by), 4), squeeze=False)
    for ax, col in zip(axes[0], by):
        b = counts(before.get(col) or [])
        a = counts(after[col]) if after else {}
        keys = sorted(set(b) | set(a), key=str)
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [b.get(k, 0) for k in keys], 0.4, label="generated (ok)")
        if after:
            ax.bar([x + 0.2 for x in xs], [a.get(k, 0) for k in keys], 0.4, label="curated")
        ax.set_xticks(list(xs), [str(k) for k in keys], rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{col} before / after curation")
        ax.legend()
    if len(by) == 2:
        out = img(fig, "label and strategy distribution")
    else:
        out = NO_LABELS.format("rows by generation strategy only") + img(fig, "strategy distribution")
    if not after:
        out = not_run("curate", r.curate / MANIFEST) + out
    return out


def sec_coverage(run: Path) -> str:
    p = Run(run).blindspots_json
    bs = read_json(p)
    if not bs or not (bs.get("coverage") or {}).get("points"):
        return not_run("blind-spot analysis (coverage map)", p)
    cov = bs["coverage"]
    clusters = cov.get("gaps") or []  # every dev-split cluster, worst first; `gap` marks the real gaps
    gaps = [g for g in clusters if g.get("gap", True)]
    gap_ids = {g.get("cluster") for g in gaps}
    pts = cov["points"]
    plt = pyplot()
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
    rows = [[g.get("cluster"), "GAP" if g.get("gap", True) else "", g.get("size"), num(g.get("distance"), "{:.3f}"),
             g.get("synthetic_rows", ""), num(g.get("error_rate"), "{:.2f}") if "error_rate" in g else "",
             num(g.get("teacher_accuracy"), "{:.2f}") if "teacher_accuracy" in g else "",
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
    rows = [[q, v.get("pairs"), num(v.get("agreement"), "{:.2f}"), num(v.get("kappa"), "{:.2f}")]
            for q, v in jv.items() if isinstance(v, dict)]
    out = (f"<h3>Review</h3><p>{review.get('reviewed_records', 0)} records reviewed by {review.get('reviewers', 0)} "
           "curator(s).</p><h4>Teacher-judge vs humans</h4>" + table(["question", "pairs", "agreement", "kappa"], rows))
    hs = review.get("hot_spots") or {}
    hot = [[dim, t.get(dim), t.get("reviewed"), t.get("rejected"), num(t.get("reject_rate"), "{:.2f}"),
            ", ".join(f"{k}:{v}" for k, v in (t.get("reasons") or {}).items()), "HOT" if t.get("hot") else ""]
           for dim in ("label", "strategy", "cluster") for t in (hs.get(f"by_{dim}") or [])[:5]
           if dim != "label" or labelled([t.get(dim)])]  # an unlabelled task has one nameless label group
    return out + (f"<h4>Rejection hot spots (overall reject rate {num(hs.get('overall_reject_rate'), '{:.2f}')})</h4>"
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
    plt = pyplot()
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


def sec_generation(run: Path) -> str:
    r = Run(run)
    gen = GenerationResult.read(r)
    if not gen:
        return not_run("generate", GenerationResult.path(r))
    tok = gen.tokens or Tokens()
    g = columns(r.generated_rows, ["label", "status", "prompt_tokens", "completion_tokens"])
    failed = sum(1 for s in g["status"] if s != "ok")
    n_rows = max(len(v) for v in g.values())  # every generated row has a status; only classification has a label
    rows = [["teacher model", gen.teacher_model], ["requests", gen.requests],
            ["rows", n_rows], ["failed rows", failed],
            ["prompt tokens", num(tok.prompt)], ["completion tokens", num(tok.completion)],
            ["cost (USD, at the teacher's prices)", num(gen.cost_usd, "${:,.4f}")],
            ["seconds", gen.seconds]]
    m = Metrics.read(r)
    et = m.models["teacher"].tokens if m and "teacher" in m.models else None
    if et:
        rows += [["eval teacher calls", et.calls], ["eval teacher prompt tokens", num(et.prompt)],
                 ["eval teacher completion tokens", num(et.completion)]]
    per: dict = {}
    for lab, pt, ct in zip(g["label"], g["prompt_tokens"] or [0] * len(g["label"]),
                           g["completion_tokens"] or [0] * len(g["label"])):
        a = per.setdefault(lab, [0, 0])
        a[0] += pt or 0
        a[1] += ct or 0
    out = table(None, rows)
    if per and not labelled(per):
        out += NO_LABELS.format("no per-label token chart, the totals above are for all rows")
    elif per and any(sum(v) for v in per.values()):
        plt = pyplot()
        keys = sorted(per, key=str)
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(keys, [per[k][0] for k in keys], label="prompt")
        ax.bar(keys, [per[k][1] for k in keys], bottom=[per[k][0] for k in keys], label="completion")
        ax.set_title("generation tokens per label")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.legend()
        out += img(fig, "generation tokens per label")
    return out
