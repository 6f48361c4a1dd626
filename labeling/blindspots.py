"""Teacher blind spots: real held-out traffic the synthetic data does not look like.

Coverage: held-out rows and synthetic rows are embedded in one space; the held-out set is
clustered (in `heldout.coverage`, which keeps the text to itself); for each cluster we measure
how far its real rows are from their nearest synthetic row and how many synthetic rows fall
into it. Clusters far from everything the teacher wrote, or with almost no synthetic rows,
are gaps. Each gap becomes a generation target (label + keywords + a length hint) that
`distilforge generate --targets targets.yaml` turns into more rows where they are missing.
Where eval has scored the teacher, its accuracy per cluster says where the teacher itself
fails on real inputs — its synthetic labels there are suspect too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from distilforge.layout import Run
from distilforge.runctx import cli_errors, fail, prepare
from distilforge.spec import TaskSpec
from heldout.coverage import HeldoutClusters


def nearest_distance(h: np.ndarray, s: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """1 - max cosine from each held-out vector to any synthetic vector (both normalized)."""
    if len(s) == 0:
        return np.ones(len(h), dtype=np.float32)
    out = np.empty(len(h), dtype=np.float32)
    for i in range(0, len(h), chunk):
        out[i:i + chunk] = 1.0 - (h[i:i + chunk] @ s.T).max(axis=1)
    return out


def rank_gaps(hc: HeldoutClusters, syn_vecs: np.ndarray, mad_k: float = 2.0) -> list[dict]:
    """Per held-out cluster: coverage distance, synthetic density, gap flag; worst first.

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


def teacher_by_cluster(hc: HeldoutClusters, metrics: dict | None) -> dict[int, dict]:
    """Teacher accuracy per held-out cluster, from eval's per-row correctness (ids, no text)."""
    if not metrics or "teacher" not in metrics.get("models", {}) or "row_ids" not in metrics:
        return {}
    teacher = metrics["models"]["teacher"]
    correct = dict(zip(teacher.get("row_ids") or metrics["row_ids"], teacher.get("correct", [])))
    out: dict[int, dict] = {}
    for rid, c in zip(hc.row_ids, hc.assign):
        if rid in correct:
            o = out.setdefault(int(c), {"n": 0, "correct": 0})
            o["n"] += 1
            o["correct"] += int(correct[rid])
    for o in out.values():
        o["accuracy"] = round(o["correct"] / o["n"], 3)
    return out


def _length_hint(words: float) -> str:
    return "a few words only" if words < 7 else "one short sentence" if words < 16 else "two sentences"


def targets_from_gaps(gaps: list[dict], per_gap: int | None = None) -> list[dict]:
    """Generation instructions per gap: the label to write for, keywords to steer, a length hint."""
    out = []
    for g in gaps:
        if not g["gap"]:
            continue
        label = next(iter(g["labels"]))  # dominant label (label mix is ordered by count)
        out.append({"cluster": g["cluster"], "label": label, "keywords": g["keywords"],
                    "attributes": {"length": _length_hint(g.get("mean_words", 10))},
                    "count": int(per_gap or max(4, min(g["size"], 40))),
                    "why": f"held-out cluster {g['cluster']} ({g['size']} real rows) is {g['distance']:.2f} "
                           f"from the nearest synthetic row; {g['synthetic_rows']} synthetic rows fall in it"})
    return out


def pca_points(hc: HeldoutClusters, syn_vecs: np.ndarray, max_points: int = 3000, seed: int = 0) -> list[dict]:
    """2-D PCA of held-out + synthetic vectors for the report's coverage map (no text)."""
    x = np.vstack([hc.vectors, syn_vecs]) if len(syn_vecs) else hc.vectors
    mu = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    xy = (x - mu) @ vt[:2].T
    kinds = ["heldout"] * len(hc.vectors) + ["synthetic"] * len(syn_vecs)
    clusters = [int(c) for c in hc.assign] + [-1] * len(syn_vecs)
    idx = np.arange(len(x))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    return [{"x": round(float(xy[i, 0]), 4), "y": round(float(xy[i, 1]), 4), "kind": kinds[i],
             "cluster": clusters[i]} for i in idx]


def analyse(hc: HeldoutClusters, syn_vecs: np.ndarray, metrics: dict | None = None) -> dict:
    gaps = rank_gaps(hc, syn_vecs)
    teacher = teacher_by_cluster(hc, metrics)
    for g in gaps:
        if g["cluster"] in teacher:
            g["teacher_accuracy"] = teacher[g["cluster"]]["accuracy"]
    return {"coverage": {"heldout_rows": len(hc.vectors), "synthetic_rows": int(len(syn_vecs)),
                         "clusters": len(gaps), "gaps": gaps, "points": pca_points(hc, syn_vecs)},
            "targets": targets_from_gaps(gaps)}


def write_outputs(out_dir: Path, result: dict) -> None:
    from distilforge.atomic import atomic_write_json, atomic_write_text

    atomic_write_json(out_dir / "blindspots.json", result)
    header = ("# Generation targets from `distilforge blindspots`: real held-out regions the synthetic data\n"
              "# does not cover. Feed to `distilforge generate RUN --targets targets.yaml`.\n")
    atomic_write_text(out_dir / "targets.yaml", header + yaml.safe_dump({"targets": result["targets"]}, sort_keys=False))


def load_targets(path: str | Path) -> list[dict]:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return list(raw.get("targets") or [])


def summary_line(result: dict) -> str:
    gaps = [g for g in result["coverage"]["gaps"] if g["gap"]]
    if not gaps:
        return "blindspots: no coverage gaps"
    top = ", ".join(f"#{g['cluster']} {next(iter(g['labels']))} (d={g['distance']:.2f})" for g in gaps[:5])
    return f"blindspots: {len(gaps)} gap cluster(s): {top}"


def row_clusters(hc: HeldoutClusters, gaps: list[dict], ids: list[str], vecs: np.ndarray) -> dict:
    """Nearest held-out cluster (and its gap flag) per synthetic row: ids and numbers only.

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


def blindspots_stage(spec: TaskSpec, run: Path, k: int | None = None) -> dict:
    """Coverage of the held-out set by the training rows (approved export, else curated); plus,
    once reviews were pulled, where reviewers reject and how far the teacher-judge agrees."""
    from curation.embed import Embedder
    from distilforge.manifest import Stage, load_dataset_dir, read_manifest
    from distilforge.sources import training_source
    from heldout.coverage import cluster_heldout
    from heldout.lock import load_locked, verify

    r = Run(run)
    info = verify(spec.heldout, spec.label_names, r.heldout)
    src, path, h = training_source(run)
    inputs = {src: h, "heldout": info["sha256"]}
    reviews_out = ((read_manifest(r.review) or {}).get("outputs") or {}).get("reviews")
    if reviews_out:
        inputs["reviews"] = reviews_out["sha256"]
    curated_out = ((read_manifest(r.curate) or {}).get("outputs") or {}).get("curated")
    if curated_out:
        inputs["curated"] = curated_out["sha256"]  # row clusters cover every curated row
    st = Stage(r.blindspots, "blindspots", inputs,
               {"k": k, "eval": (read_manifest(r.eval) or {}).get("fingerprint")})
    if st.is_current() and r.blindspots_json.exists() and r.row_clusters.exists():
        print("blindspots: inputs unchanged, skipped")
        return read_manifest(st.dir)
    st.begin()
    rows = load_dataset_dir(path)
    emb = Embedder()
    hc = cluster_heldout(load_locked(r.heldout), emb, k=k)
    syn = np.asarray(emb.encode(list(rows["text"])), dtype=np.float32)
    metrics_p = r.metrics
    result = analyse(hc, syn, json.loads(metrics_p.read_text()) if metrics_p.exists() else None)
    result["source"] = {"synthetic": src, "synthetic_sha256": h, "heldout_sha256": info["sha256"]}
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
    return st.finish(gaps=len(gaps), clusters=len(result["coverage"]["gaps"]), targets=len(result["targets"]))


@cli_errors  # a bad spec, a tampered or missing held-out lock: one line, rc 2
def blindspots_cmd(run: Path, k: int | None = None) -> None:
    """Rank real held-out regions the synthetic data does not cover; write targets.yaml."""
    try:
        spec = prepare(run)
        blindspots_stage(spec, run, k)
    except FileNotFoundError as e:  # a stage output missing on disk: one line, rc 2 like a bad spec
        fail(str(e))
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
