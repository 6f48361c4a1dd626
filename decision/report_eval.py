"""The report's evaluation section: model quality on the locked held-out set, per task type
(classification: accuracy, per-label accuracy and the confusion matrix; extraction: the headline
score, validity / exact match and per-field F1; instruction: win / tie / loss against the teacher
and the reply checks), then the paired comparisons.
"""
from __future__ import annotations

from pathlib import Path

from distilforge.card import METRIC_NAMES, headline, judge_how, judge_of, metric_of, pairwise_of, reply_checks_of
from distilforge.records import Metrics
from decision.report_html import COLORS, ci_text, esc, img, not_run, num, pyplot, table

_MODEL_ORDER = ("base", "teacher", "student_sft", "student_dpo", "student")


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


def _eval_classification(m: Metrics, keys: list[str]) -> str:
    """Accuracy with CIs, macro-F1, per-label accuracy and the confusion matrix."""
    models = m.models
    labels = m.labels or sorted({lab for k in keys for lab in models[k].per_label})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    acc = [models[k].accuracy or 0 for k in keys]
    err = [[a - (models[k].accuracy_ci or [a, a])[0] for k, a in zip(keys, acc)],
           [(models[k].accuracy_ci or [a, a])[1] - a for k, a in zip(keys, acc)]]
    ax.bar(keys, acc, yerr=err, capsize=6, color=COLORS[: len(keys)])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title(f"locked held-out set, n = {m.n}")
    parts = [img(fig, "eval comparison")]
    parts.append(table(["model", "accuracy", "95% CI", "macro F1", "rows"],
                       [[k, num(models[k].accuracy, "{:.3f}"), ci_text(models[k].accuracy_ci),
                         num(models[k].macro_f1, "{:.3f}"), models[k].rows or m.n] for k in keys]))
    rows = []
    for lab in labels:
        row = [lab]
        for k in keys:
            pl = models[k].per_label.get(lab) or {}
            row.append(f"{num(pl.get('accuracy'), '{:.2f}')} (n={pl.get('n', '?')})" if pl else "")
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
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(8, 3.8))
        vals = [v for _, v, _ in shown]
        cis = [ci if ci and len(ci) == 2 else [v, v] for _, v, ci in shown]
        ax.bar([k for k, _, _ in shown], vals, yerr=[[v - c[0] for v, c in zip(vals, cis)],
                                                     [c[1] - v for v, c in zip(vals, cis)]],
               capsize=6, color=COLORS[: len(shown)])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"{name} (95% CI)")
        ax.set_title(f"locked held-out set, n = {m.n}")
        parts.append(img(fig, f"eval comparison ({name})"))
    extra = list(dict.fromkeys(c for k in keys for c in (getattr(m.models[k], "table", None) or {})))
    rows = []
    for k, v, ci in scored:
        tab = getattr(m.models[k], "table", None) or {}
        ref = v is None and metric == "win_or_tie" and k == "teacher"
        rows.append([k, "reference (the replies judged against)" if ref else num(v, "{:.3f}"),
                     "" if ref else ci_text(ci), m.models[k].rows or m.n]
                    + [num(tab.get(c), "{:.3f}") if c in tab else "" for c in extra])
    parts.append(table(["model", name, "95% CI", "rows", *extra], rows))
    return "".join(parts)


def _eval_extraction(m: Metrics, keys: list[str]) -> str:
    """Validity and exact match per model (all rows, and valid answers only), then per-field F1."""
    ents = {k: m.models[k].model_dump() for k in keys}
    rows = []
    for k, e in ents.items():
        raw, vo = e.get("raw") or {}, e.get("valid_only") or {}
        rows.append([k, f"{num(e.get('json_validity'), '{:.3f}')} {ci_text(e.get('json_validity_ci'))}",
                     f"{num(raw.get('exact_match'), '{:.3f}')} {ci_text(raw.get('exact_match_ci'))}",
                     num(raw.get("macro_f1"), "{:.3f}"), vo.get("n", ""), num(vo.get("micro_f1"), "{:.3f}"),
                     num(vo.get("exact_match"), "{:.3f}"),
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
                         + [num((views[k].get(f) or {}).get("f1"), "{:.3f}") if f in views[k] else "" for k in keys])
        parts.append("<h3>per-field F1</h3><p>All rows (an invalid answer extracts nothing); the teacher's on the "
                     "rows it answered.</p>" + table(["field"] + [f"{k} F1" for k in keys], frows))
    return "".join(parts)


def _eval_instruction(m: Metrics, keys: list[str]) -> str:
    """Win / tie / loss against the teacher (as the run's judge method says) and the reply checks."""
    judge = judge_of(m)
    graded = judge["method"] == "graded"
    pw = {k: p for k in keys if (p := pairwise_of(m.models[k]))}
    parts = []
    if pw:
        plt = pyplot()
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
        ax.set_title("vs the teacher: win / tie / loss (" + ("graded yes/no" if graded else "judged in both orders")
                     + ")")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, fontsize=8, frameon=False)
        parts.append("<h3>win / tie / loss vs the teacher</h3>" + img(fig, "win rate vs teacher"))
        last = ("judge yes rate (model / teacher)", lambda p: f"{num(p.get('student_yes_rate'), '{:.2f}')} / "
                f"{num(p.get('teacher_yes_rate'), '{:.2f}')}") if graded else \
            ("position bias", lambda p: num(p.get("position_bias"), "{:.2f}"))
        parts.append(table(["model", "n", "wins", "ties", "losses", "win rate, ties half (95% CI)", last[0],
                            "unreadable verdicts"],
                           [[k, p.get("n"), p["wins"], p["ties"], p["losses"],
                             f"{num(p.get('win_rate_tie_half'), '{:.3f}')} {ci_text(p.get('win_rate_tie_half_ci'))}",
                             last[1](p), p.get("unparsable", "")] for k, p in pw.items()]))
        parts.append(f"<p>Each reply is {esc(judge_how(m))}; judge: {esc(str(judge.get('model') or 'the teacher'))}. "
                     "The dashed line is parity (wins = losses).</p>")
    else:
        parts.append("<p>No pairwise judgement against the teacher recorded.</p>")
    checks = {k: c for k in keys if (c := reply_checks_of(m.models[k], m, k))}
    if checks:
        parts.append("<h3>reply checks</h3>" + table(
            ["model", "replies", "mean words", "length ok", "refusal", "asks for a secret"],
            [[k, c.get("n"), num(c.get("mean_words"), "{:.1f}")]
             + [f"{num(c.get(x), '{:.3f}')} {ci_text(c.get(x + '_ci'))}" for x in ("length_ok", "refusal", "pii_ask")]
             for k, c in checks.items()]))
    return "".join(parts)


def _comparisons(m: Metrics) -> str:
    rows = [[k, v.get("metric") or "", num(v.get("diff"), "{:+.3f}"), ci_text(v.get("ci")), v.get("p_value"),
             v.get("rows", "")] for k, v in m.comparisons.items() if "diff" in v]
    return "<h3>paired comparisons (same rows)</h3>" + table(["comparison", "metric", "difference", "95% CI", "p",
                                                              "rows"], rows) if rows else ""
