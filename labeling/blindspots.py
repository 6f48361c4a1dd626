"""Blind spots: real inputs the synthetic data does not look like, and where the student fails on them.

The real inputs are the run's dev split (RUN/traffic/dev, written by the `traffic` stage from
real traffic, disjoint from the training rows), never the locked test set. The locked set is read
only to lock and verify it, to keep it out of the training data (decontamination, the train
gate) and to score the final model (`eval`). Blind spots *choose* what to generate next; a choice
made by looking at the test set tunes the data to the test set, and its score stops meaning
anything. A run without a dev split (no `traffic:` in the spec) skips this stage with a line
saying so.

Coverage: dev rows and synthetic rows are embedded in one space; the dev split is clustered
(`heldout.coverage`); for each cluster we measure how far its real rows are from their nearest
synthetic row and how many synthetic rows fall into it. Clusters far from everything the teacher
wrote, or with almost no synthetic rows, are gaps. Each gap becomes a generation target (label +
keywords + a length hint) that `distilforge generate --targets targets.yaml` turns into more rows
where they are missing.

Errors: where eval recorded the student's prediction per dev row, clusters are also ranked by the
student's error rate there (labeling/dev_errors.py); error hot spots and the label pairs the
student confuses most become targets too (the latter *contrastive*: clearly `a`, could be taken
for `b`). The targets' total row count is then spent in the training rows' label mix
(labeling/target_mix.py): targeted rows piled onto the labels the student confused shift the
label prior and cost more than they add. Where the dev labels are gold, the teacher's agreement per cluster says where the
teacher itself fails on real inputs — its synthetic labels there are suspect too.

Task types without labels (extraction, instruction: `task_format(spec).has_labels` is False)
have no label per dev row to cluster by, score per cluster, or confuse: their blind spots are the
coverage gaps alone (targets without a label), and the result says so in `notes`.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from distilforge.layout import Run
from distilforge.runctx import cli_errors, fail, prepare
from distilforge.spec import TaskSpec
from heldout.coverage import Clusters
from labeling import dev_errors
from labeling.target_mix import keep_label_mix

SKIPPED = ("skipped: blind spots need a real split (set `traffic:` in the spec); "
           "the locked test set is never used to choose data")


def nearest_distance(h: np.ndarray, s: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """1 - max cosine from each dev vector to any synthetic vector (both normalized)."""
    if len(s) == 0:
        return np.ones(len(h), dtype=np.float32)
    out = np.empty(len(h), dtype=np.float32)
    for i in range(0, len(h), chunk):
        out[i:i + chunk] = 1.0 - (h[i:i + chunk] @ s.T).max(axis=1)
    return out


def rank_gaps(hc: Clusters, syn_vecs: np.ndarray, mad_k: float = 2.0) -> list[dict]:
    """Per dev cluster: coverage distance, synthetic density, gap flag; worst first.

    A cluster is a gap when its mean distance is a robust outlier (above median + k·MAD of
    all clusters, with a floor of 0.05) or when no synthetic row lands in it at all.
    """
    dist = nearest_distance(hc.vectors, syn_vecs)
    syn_assign = (syn_vecs @ hc.centroids.T).argmax(axis=1) if len(syn_vecs) else np.array([], int)
    rows = []
    for c in hc.clusters:
        idx = np.flatnonzero(hc.assign == c["cluster"])
        n_syn = int((syn_assign == c["cluster"]).sum())
        rows.append({**c, "distance": round(float(dist[idx].mean()), 4),
                     "synthetic_rows": n_syn, "density": round(n_syn / max(c["size"], 1), 3)})
    d = np.array([r["distance"] for r in rows])
    med = float(np.median(d))
    mad = float(np.median(np.abs(d - med))) or 1e-6
    cut = med + max(mad_k * mad, 0.05)
    for r in rows:
        r["gap"] = bool(r["distance"] > cut or r["synthetic_rows"] == 0)
        r["gap_score"] = round((r["distance"] - med) / mad, 2)
    rows.sort(key=lambda r: (-r["gap"], -r["distance"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def teacher_by_cluster(hc: Clusters, teacher_labels: dict[str, str]) -> dict[int, dict]:
    """The teacher's agreement with the dev split's gold labels per cluster (ids, no text).

    Only meaningful when the dev labels are gold (`traffic.dev_labels: gold`): with teacher
    labels the teacher would be scored against itself, so the caller passes nothing."""
    return dev_errors.accuracy_by_cluster(hc, teacher_labels)


def teacher_answers(dev_rows) -> dict[str, str]:
    """{dev row id: the teacher's label} for the rows the teacher answered. Gold dev rows are not
    asked (traffic asks only about what it trains on), so their `teacher_label` is None: they are
    left out of the teacher's per-cluster agreement rather than counted as teacher mistakes."""
    return {rid: t for rid, t in zip(dev_rows["id"], dev_rows["teacher_label"]) if t is not None}


def _length_hint(words: float) -> str:
    return "a few words only" if words < 7 else "one short sentence" if words < 16 else "two sentences"


def targets_from_gaps(gaps: list[dict], per_gap: int | None = None) -> list[dict]:
    """Generation instructions per gap, then per student error hot spot that is not a gap: the
    label to write for (the cluster's dominant one), keywords to steer, a length hint, and `kind`
    (gap | errors) and `why` for the reader. Contrastive targets come from `analyse`."""
    out = []
    for kind in ("gap", "errors"):
        for g in gaps:
            if (kind == "gap" and not g["gap"]) or (kind == "errors" and (g["gap"] or not g.get("errors_hot"))):
                continue
            label = next(iter(g["labels"]), "")  # dominant label (label mix is ordered by count); "" unlabelled
            why = (f"dev cluster {g['cluster']} ({g['size']} real rows) is {g['distance']:.2f} from the nearest "
                   f"synthetic row; {g['synthetic_rows']} synthetic rows fall in it" if kind == "gap" else
                   f"the student is wrong on {g['student_errors']} of {g['size']} real rows of dev cluster "
                   f"{g['cluster']} (error rate {g['error_rate']:.2f})")
            out.append({"kind": kind, "cluster": g["cluster"], "label": label, "keywords": g["keywords"],
                        "attributes": {"length": _length_hint(g.get("mean_words", 10))},
                        "count": int(per_gap or max(4, min(g["size"], 40))), "why": why})
    return out


def pca_points(hc: Clusters, syn_vecs: np.ndarray, max_points: int = 3000, seed: int = 0) -> list[dict]:
    """2-D PCA of dev + synthetic vectors for the report's coverage map (no text)."""
    x = np.vstack([hc.vectors, syn_vecs]) if len(syn_vecs) else hc.vectors
    mu = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    xy = (x - mu) @ vt[:2].T
    kinds = ["dev"] * len(hc.vectors) + ["synthetic"] * len(syn_vecs)
    clusters = [int(c) for c in hc.assign] + [-1] * len(syn_vecs)
    idx = np.arange(len(x))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    return [{"x": round(float(xy[i, 0]), 4), "y": round(float(xy[i, 1]), 4), "kind": kinds[i],
             "cluster": clusters[i]} for i in idx]


def analyse(hc: Clusters, syn_vecs: np.ndarray, student: dict[str, str] | None = None,
            teacher: dict[str, str] | None = None, texts: list[str] | None = None,
            labels: list[str] | None = None) -> dict:
    """Coverage gaps, and with the student's dev predictions ({row id: label}) its error ranking,
    confusions and contrastive targets (`texts`: the dev texts in `hc` order, for their keywords;
    `labels`: the task's labels). `teacher`: the teacher's dev answers, when dev labels are gold."""
    gaps = rank_gaps(hc, syn_vecs)
    for c, o in teacher_by_cluster(hc, teacher or {}).items():
        next(g for g in gaps if g["cluster"] == c)["teacher_accuracy"] = o["accuracy"]
    overall = dev_errors.rank_errors(gaps, dev_errors.accuracy_by_cluster(hc, student or {}))
    result = {"coverage": {"dev_rows": len(hc.vectors), "synthetic_rows": int(len(syn_vecs)),
                           "clusters": len(gaps), "gaps": gaps, "points": pca_points(hc, syn_vecs)},
              "targets": targets_from_gaps(gaps)}
    if overall is not None:
        confused = dev_errors.confusions(hc, student, labels or sorted(set(hc.labels)))
        result["student"] = {"dev_rows_scored": sum(rid in student for rid in hc.row_ids),
                             "error_rate": overall, "confusions": confused}
        if texts is not None and confused:
            words = np.mean([len(t.split()) for t in texts]) if texts else 10
            result["targets"] += dev_errors.contrastive_targets(confused, hc, texts, student, _length_hint(words))
    return result


NO_LABELS = ("{kind} tasks have no labels: blind spots target coverage gaps of the dev split only (no student "
             "error ranking per cluster, no label-pair / contrastive targets)")


def write_outputs(out_dir: Path, result: dict) -> None:
    from distilforge.atomic import atomic_write_json, atomic_write_text

    atomic_write_json(out_dir / "blindspots.json", result)
    header = ("# Generation targets from `distilforge blindspots`: regions of the real dev split the synthetic\n"
              "# data does not cover, where the student errs, and label pairs it confuses (never the locked\n"
              "# test set). Feed to `distilforge generate RUN --targets targets.yaml`.\n")
    atomic_write_text(out_dir / "targets.yaml", header + yaml.safe_dump({"targets": result["targets"]}, sort_keys=False))


def load_targets(path: str | Path) -> list[dict]:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return list(raw.get("targets") or [])


def summary_line(result: dict) -> str:
    if result.get("skipped"):
        return f"blindspots: {result['skipped']}"
    gaps = [g for g in result["coverage"]["gaps"] if g["gap"]]
    line = "blindspots: no coverage gaps"
    if gaps:
        top = ", ".join(f"#{g['cluster']} " + (f"{next(iter(g['labels']), '')} " if any(g["labels"]) else "")
                        + f"(d={g['distance']:.2f})" for g in gaps[:5])
        line = f"blindspots: {len(gaps)} gap cluster(s): {top}"
    st = result.get("student")
    if st:
        line += f"; student dev error rate {st['error_rate']:.2f}"
        if st["confusions"]:
            line += "; confuses " + ", ".join(f"{c['label']}→{c['mistaken_for']} ({c['count']})"
                                              for c in st["confusions"])
    return line


def row_clusters(hc: Clusters, gaps: list[dict], ids: list[str], vecs: np.ndarray) -> dict:
    """Nearest dev cluster (and its gap flag) per synthetic row: ids and numbers only.

    Pushed to Argilla as metadata (`cluster`, `coverage_gap`) so curators can review gap regions,
    and used to group reviewer rejections by cluster."""
    gap_ids = {g["cluster"] for g in gaps if g["gap"]}
    assign = (vecs @ hc.centroids.T).argmax(axis=1) if len(vecs) else np.array([], int)
    return {"gap_clusters": sorted(int(c) for c in gap_ids),
            "rows": {rid: {"cluster": int(c), "gap": int(c) in gap_ids} for rid, c in zip(ids, assign)}}


def review_section(run: Path, clusters: dict[str, int] | None = None) -> dict | None:
    """Rejection hot spots and judge vs human from pulled reviews (None before `review pull`)."""
    from distilforge.manifest import load_dataset_dir
    from labeling.review_analysis import analyse as analyse_reviews

    p = Run(run).reviews
    return analyse_reviews(list(load_dataset_dir(p)), clusters) if p.exists() else None


def dev_split(run: Path):
    """(dev rows, hash) from the traffic stage, re-hashed; None when the run has no (or an empty) dev split."""
    from curation.traffic import dev_split as traffic_dev

    got = traffic_dev(run)
    return got if got and len(got[0]) else None


def _skip(r: Run) -> dict:
    """No dev split: say so in a manifest, and remove what an earlier analysis left (it may have
    been made from the locked test set, before blind spots moved to the dev split)."""
    from distilforge.manifest import Stage

    for p in (r.blindspots_json, r.targets_yaml, r.row_clusters):
        p.unlink(missing_ok=True)
    print(f"blindspots: {SKIPPED}")
    return Stage(r.blindspots, "blindspots", {}, {"skipped": SKIPPED}).begin().finish(skipped=SKIPPED)


def blindspots_stage(spec: TaskSpec, run: Path, k: int | None = None) -> dict:
    """Coverage of the dev split by the training rows (approved export, else curated), the student's
    errors on it (from eval's per-row dev predictions), and, once reviews were pulled, where
    reviewers reject and how far the teacher-judge agrees. Never opens the locked test set."""
    from distilforge.stage import scoped

    spec = scoped(spec, "blindspots")  # only the spec blocks PIPELINE declares for this stage
    from curation.embed import Embedder
    from distilforge.manifest import Stage, load_dataset_dir, read_manifest, sha256_json
    from distilforge.sources import training_source
    from heldout.coverage import cluster_texts

    from heldout.formats import task_format

    r = Run(run)
    dev = dev_split(run)
    if dev is None:
        return _skip(r)
    dev_rows, dev_h = dev
    src, path, h = training_source(run)
    labelled = task_format(spec).has_labels  # else: coverage only (module doc)
    cols = dev_rows.column_names
    label_source = dev_rows["label_source"][0] if "label_source" in cols and len(dev_rows) else None
    metrics = json.loads(r.metrics.read_text()) if r.metrics.exists() and labelled else None
    student = dev_errors.dev_predictions(metrics, dev_h)  # only metrics["dev"]: never the test scores
    gold = labelled and label_source == "gold" and "teacher_label" in cols
    teacher = teacher_answers(dev_rows) if gold else {}
    inputs = {src: h, "traffic_dev": dev_h, **({"student_dev": sha256_json(student)} if student else {})}
    reviews_out = ((read_manifest(r.review) or {}).get("outputs") or {}).get("reviews")
    if reviews_out:
        inputs["reviews"] = reviews_out["sha256"]
    curated_out = ((read_manifest(r.curate) or {}).get("outputs") or {}).get("curated")
    if curated_out:
        inputs["curated"] = curated_out["sha256"]  # row clusters cover every curated row
    st = Stage(r.blindspots, "blindspots", inputs, {"k": k, "split": "dev", "targets": "label mix kept"})
    if st.is_current() and r.blindspots_json.exists() and r.row_clusters.exists():
        print("blindspots: inputs unchanged, skipped")
        return read_manifest(st.dir)
    st.begin()
    rows = load_dataset_dir(path)
    emb = Embedder()
    texts = list(dev_rows["text"])
    labels = list(dev_rows["label"]) if labelled else [""] * len(texts)
    k = k or (None if labelled else max(2, len(texts) // 10))  # ~10 rows a cluster, as with labels
    hc = cluster_texts(texts, labels, list(dev_rows["id"]), emb, k=k)
    syn = np.asarray(emb.encode(list(rows["text"])), dtype=np.float32)
    result = analyse(hc, syn, student, teacher, texts, spec.label_names)
    if labelled:  # a round's rows are spent in the training rows' label mix (labeling/target_mix.py)
        words = float(np.mean([len(t.split()) for t in texts])) if texts else 10.0
        result["targets"], mix = keep_label_mix(result["targets"], Counter(rows["label"]), spec.label_names,
                                                _length_hint(words))
        if mix:
            result["label_mix"] = mix
    if not labelled:
        result["notes"] = [NO_LABELS.format(kind=spec.type)]
        print(f"blindspots: {result['notes'][0]}")
    result["source"] = {"synthetic": src, "synthetic_sha256": h, "dev_sha256": dev_h,
                        "dev_labels": label_source,
                        "student_predictions": "eval (dev split)" if student else None}
    curated = load_dataset_dir(r.curated)  # every pushed row, approved or not
    cvec = np.asarray(emb.encode(list(curated["text"])), dtype=np.float32)
    where = row_clusters(hc, result["coverage"]["gaps"], list(curated["id"]), cvec)
    from distilforge.atomic import atomic_write_json

    atomic_write_json(r.row_clusters, where)
    review = review_section(run, {rid: v["cluster"] for rid, v in where["rows"].items()})
    if review is not None:
        result["review"] = review
    write_outputs(st.dir, result)
    gaps = [g for g in result["coverage"]["gaps"] if g["gap"]]
    kinds = [t["kind"] for t in result["targets"]]
    return st.finish(split="dev", gaps=len(gaps), clusters=len(result["coverage"]["gaps"]),
                     targets=len(result["targets"]), error_targets=kinds.count("errors"),
                     contrastive_targets=kinds.count("contrastive"))


@cli_errors  # a bad spec, a missing or edited dev split: one line, rc 2
def blindspots_cmd(run: Path, k: int | None = None) -> None:
    """Rank real dev-split regions the synthetic data does not cover and where the student errs; write targets.yaml."""
    try:
        spec = prepare(run)
        m = blindspots_stage(spec, run, k)
    except FileNotFoundError as e:  # a stage output missing on disk: one line, rc 2 like a bad spec
        fail(str(e))
    if m.get("skipped"):
        return  # the stage printed why; not an error (`run` on a spec without traffic goes on)
    result = json.loads(Run(run).blindspots_json.read_text())
    print(summary_line(result))
    if result.get("review"):
        from labeling.review_analysis import summary_line as review_line

        print(review_line(result["review"]))
    print(f"targets: {Run(run).targets_yaml}")
    if Run(run).push_json.exists():
        update_argilla_metadata(spec, run)


def update_argilla_metadata(spec: TaskSpec, run: Path) -> None:
    """Re-push the run so its Argilla records carry the new gap flags and cluster ids (an in-place
    upsert: responses are untouched). Best effort: an unreachable server only warns."""
    from labeling.push import ReviewError, ReviewInputError, push_run, read_push_state

    try:
        report = push_run(run, spec, api_url=read_push_state(run).get("api_url"), progress=False)
    except (ReviewError, ReviewInputError) as e:
        print(f"warning: Argilla metadata not updated ({e})")
        return
    print("argilla: gap flags and cluster ids updated on " +
          ", ".join(f"{r['records']} {fmt} records" for fmt, r in report.items()))
