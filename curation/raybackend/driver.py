"""The driver side of a Ray curation: the ledger of verdicts and the passes, in funnel order.

What lives here, on one machine, and why it stays small: per-row verdicts (step, detail, cluster
size: O(rows) integers and the details of dropped rows), the (label, token count) histogram the
quality order's medians come from, and the deduplicated edge lists for connected components
(O(duplicate pairs)). Every per-row or per-group computation runs in Ray tasks/actors
(rows.py, groups.py). See curation/raybackend/__init__.py for the overall design.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from curation.raybackend import groups, rows

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec

PARTITION_ROWS = 40_000  # rows per hash-shuffle partition: < 64 MB with a 384-dim vector per row


def _table(ds):
    """A (small) Ray dataset's rows on the driver as one pyarrow Table."""
    import pyarrow as pa
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else None


def _col(tbl, name, dtype=None) -> np.ndarray:
    if tbl is None:
        return np.zeros(0, dtype=dtype or object)
    return tbl.column(name).to_numpy(zero_copy_only=False)


def _median(hist: Counter) -> float:
    """`max(1.0, statistics.median(values))` from a value -> count histogram."""
    items = sorted((v, c) for v, c in hist.items() if c > 0)
    n = sum(c for _, c in items)

    def at(i: int) -> int:
        for v, c in items:
            if i < c:
                return v
            i -= c
        raise IndexError(i)

    m = at(n // 2) if n % 2 else (at(n // 2 - 1) + at(n // 2)) / 2
    return max(1.0, m)


class Run:
    """One Ray curation: the driver-side ledger (who was dropped where, and why) and the passes."""

    def __init__(self, raw, spec: TaskSpec, heldout, backend, cache_root, traffic_texts=None):
        import ray

        self.raw, self.spec, self.cfg, self.heldout = raw, spec, spec.curation, heldout
        self.traffic = traffic_texts
        self.nearest: np.ndarray | None = None  # by _k: nearest real traffic cosine (likeness pass)
        self.backend, self.cache_root = backend, None if cache_root is None else str(cache_root)
        self.n = len(raw)
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.actors = getattr(backend, "encode_actors", None) or self.cpus
        self.step_of = np.full(self.n, -1, dtype=np.int32)
        self.detail: dict[int, str] = {}
        self.reasons: list[str | None] = []
        self.funnel: list[dict] = []
        self.size: dict[int, int] = {}
        self.dropped = np.zeros(0, dtype=np.int64)
        self.hist: dict[str, Counter] = {}
        self.info: dict = {"ray": {"cpus": self.cpus, "encode_actors": self.actors, "phases": {}}}
        self.tbl = raw.with_format("arrow")[:]  # respects a select()ed view; zero-copy otherwise
        labels = self.tbl.column("label").to_pylist() if "label" in raw.column_names else [None] * self.n
        names = list(spec.label_names)
        index = {lab: i for i, lab in enumerate(names)}
        codes = np.empty(self.n, dtype=np.int64)
        for i, lab in enumerate(labels):
            if lab not in index:
                index[lab] = len(names)
                names.append(lab)
            codes[i] = index[lab]
        self.names, self.codes = names, codes

    # ------------------------------------------------------------ ledger

    def per_label(self) -> dict:
        """Rows in play per label: the task's labels first, others in order of first appearance."""
        alive = self.step_of < 0
        counts = np.bincount(self.codes[alive], minlength=len(self.names))
        n_task = len(self.spec.label_names)
        out = {lab: int(counts[i]) for i, lab in enumerate(self.names[:n_task])}
        extra, first = np.unique(self.codes[alive], return_index=True)
        for c in extra[np.argsort(first)]:
            if c >= n_task:
                out[self.names[c]] = int(counts[c])
        return out

    def record(self, step: str, reason: str | None, ks, details, seconds: float) -> None:
        before = int((self.step_of < 0).sum())
        ks = np.asarray(ks, dtype=np.int64)
        self.step_of[ks] = len(self.reasons)
        self.reasons.append(reason)
        self.detail.update(zip(ks.tolist(), details))
        if len(ks):
            self.dropped = np.union1d(self.dropped, ks)
        self.funnel.append({"step": step, "in": before, "out": before - len(ks), "dropped": len(ks),
                            "per_label": self.per_label(), "seconds": round(seconds, 3)})

    def alive(self, ds):
        return ds.map_batches(rows.drop_keys, batch_format="numpy", fn_kwargs={"dropped": self.dropped})

    def n_alive(self) -> int:
        return int((self.step_of < 0).sum())

    def partitions(self, n_rows: int) -> int:
        return max(2 * self.cpus, math.ceil(n_rows / PARTITION_ROWS))

    def medians(self) -> dict[str, float]:
        return {lab: _median(h) for lab, h in self.hist.items()}

    def absorb(self, step: str, reason: str, what: str, drops, seconds: float) -> None:
        """Dedup drops -> details naming the kept row, cluster sizes, histogram update."""
        ks, keepers, scores = _col(drops, "_k"), _col(drops, "keeper"), _col(drops, "score")
        kid, klab, lab, ntok = (_col(drops, c) for c in ("keeper_id", "keeper_label", "label", "ntok"))
        o = np.argsort(ks, kind="stable")
        details = []
        for i in o:
            k, keeper = int(ks[i]), int(keepers[i])
            self.size[keeper] = self.size.get(keeper, 1) + self.size.pop(k, 1)
            other = "" if klab[i] == lab[i] else f"; kept row is labelled {klab[i]}"
            details.append(f"{what.format(float(scores[i]))} of kept row {kid[i]}{other}")
            self.hist[lab[i]][int(ntok[i])] -= 1
        self.record(step, reason, ks[o], details, seconds)

    def phase(self, name: str, t0: float) -> float:
        dt = time.perf_counter() - t0
        self.info["ray"]["phases"][name] = round(dt, 3)
        return dt

    # ------------------------------------------------------------ passes

    def run(self):
        import pyarrow as pa
        import ray.data as rd

        from curation import dedup

        cfg = self.cfg
        t0 = time.perf_counter()
        checks = rows.row_checks(self.spec, "judge_score" in self.raw.column_names)
        lsh = dedup.lsh_params(cfg.dedup.minhash_threshold, cfg.dedup.minhash_num_perm) if cfg.dedup.minhash else None
        tbl = self.tbl.append_column("_k", pa.array(np.arange(self.n, dtype=np.int64)))
        nblocks = max(2 * self.cpus, math.ceil(self.n / 5000))
        step = max(1, math.ceil(self.n / nblocks))
        blocks = [tbl.slice(i, step) for i in range(0, self.n, step)] or [tbl]
        checked = rd.from_arrow(blocks).map_batches(
            rows.check_batch, batch_format="pyarrow", batch_size=None,
            fn_kwargs={"spec": self.spec, "has_judge_column": "judge_score" in self.raw.column_names, "lsh": lsh},
        ).materialize()
        failed = _table(checked.select_columns(["_k", "step", "detail"])
                        .map_batches(rows.select_rows, batch_format="numpy", fn_kwargs={"failed": True}))
        fk, fs, fd = _col(failed, "_k"), _col(failed, "step"), _col(failed, "detail")
        dt = self.phase("checks", t0)
        for s, (name, reason, _) in enumerate(checks):
            m = fs == s
            self.record(name, reason, fk[m], list(fd[m]), dt if s == 0 else 0.0)
        live = checked.map_batches(rows.select_rows, batch_format="numpy", fn_kwargs={"failed": False}) \
                      .drop_columns(["step", "detail"])

        held = self.heldout
        likeness = cfg.filters.uses_traffic_reference and bool(self.traffic)
        need_vectors = cfg.dedup.semantic or likeness or (held is not None and cfg.decontamination.enabled
                                                          and cfg.decontamination.cosine is not None)
        if need_vectors and self.n_alive():
            live = self.embed(live)
        else:
            live = live.materialize()
        self.scan(live, decon=held is not None and cfg.decontamination.enabled and len(held) > 0)
        if likeness and self.n_alive():
            self.likeness(live)
        if cfg.dedup.exact:
            self.group_pass(live, "exact_dedup", "exact_duplicate", "same normalized text", "ekey",
                            groups.exact_partition, ["_k", "id", "label", "text", "judge", "ntok", "ekey"])
        if cfg.dedup.minhash:
            self.minhash(live, lsh)
        if cfg.dedup.semantic:
            self.semantic(live)
        if cfg.filters.max_per_label is not None:
            self.balance(live)
        return self.result()

    def embed(self, live):
        cfg = self.cfg
        t0 = time.perf_counter()
        from curation.embed import resolve_model

        import ray.data as rd

        # materialized first: the actors may hold every CPU, so nothing upstream may still need one
        out = live.materialize().map_batches(
            rows.Encoder, batch_format="numpy", batch_size=max(256, cfg.embeddings.batch_size * 8),
            compute=rd.ActorPoolStrategy(size=self.actors), num_cpus=1,
            fn_constructor_kwargs={"model": cfg.embeddings.model, "batch_size": cfg.embeddings.batch_size,
                                   "threads": cfg.embeddings.threads or 1, "cache_root": self.cache_root},
        ).materialize()
        dt = self.phase("embed", t0)
        self.info["embedding"] = {"model": resolve_model(cfg.embeddings.model)[1], "rows": self.n_alive(),
                                  "actors": self.actors, "seconds": round(dt, 3)}
        self.record("embed", None, [], [], dt)
        return out

    def scan(self, live, decon: bool):
        """Decontamination against the broadcast held-out set, and the label/length histogram the
        quality order's medians come from, in one pass of tasks over the rows in play."""
        import ray

        cfg, held = self.cfg, self.heldout
        t0 = time.perf_counter()
        if not self.n_alive():
            if decon:
                self.record("decontaminate", "heldout_contamination", [], [], 0.0)
            return
        ref = None
        if decon:
            vecs = None
            if cfg.decontamination.cosine is not None:  # the locked set is small: encoded (and cached) here
                from curation.embed import Embedder

                emb = Embedder(cfg.embeddings.model, batch_size=cfg.embeddings.batch_size, threads=cfg.embeddings.threads,
                               cache_root=self.cache_root)
                vecs = emb.encode(list(held["text"]))
            ref = [ray.put({"ids": list(held["id"]), "texts": list(held["text"]), "vecs": vecs})]
        out = _table(self.alive(live).map_batches(rows.scan_batch, batch_format="numpy", batch_size=None,
                                                  fn_kwargs={"held": ref, "cfg": cfg}))
        ks = _col(out, "_k").astype(np.int64)
        h = ks < 0
        if decon:
            lk, details, kinds = ks[~h], _col(out, "detail")[~h], _col(out, "kinds")[~h]
            o = np.argsort(lk, kind="stable")
            self.info["decontamination"] = dict(Counter(k for ks_ in kinds for k in ks_.split(",")))
            self.record("decontaminate", "heldout_contamination", lk[o], list(details[o]),
                        self.phase("decontaminate", t0))
        for lab, n, c in zip(_col(out, "label")[h], _col(out, "ntok")[h], _col(out, "count")[h]):
            self.hist.setdefault(lab, Counter())[int(n)] += int(c)
        if not decon:
            self.phase("label_histogram", t0)

    def likeness(self, live):
        """Each row's nearest real traffic message (reference vectors encoded here, broadcast once):
        the `traffic_likeness` step (drops below `min_traffic_similarity`, real rows exempt) and
        the cosines balance ranks by under `max_per_label_keeps: most_traffic_like`."""
        import ray

        from curation.embed import Embedder

        cfg, t0 = self.cfg, time.perf_counter()
        emb = Embedder(cfg.embeddings.model, batch_size=cfg.embeddings.batch_size, threads=cfg.embeddings.threads,
                       cache_root=self.cache_root)
        ref = emb.encode(list(self.traffic))
        out = _table(self.alive(live).select_columns(["_k", "vec", "real", "label", "ntok"])
                     .map_batches(rows.nearest_traffic, batch_format="numpy", batch_size=None,
                                  fn_kwargs={"ref": [ray.put(ref)]}))
        ks, near, real = _col(out, "_k").astype(np.int64), _col(out, "near"), _col(out, "real").astype(bool)
        lab, ntok = _col(out, "label"), _col(out, "ntok")
        o = np.argsort(ks, kind="stable")
        ks, near, real, lab, ntok = ks[o], near[o], real[o], lab[o], ntok[o]
        self.nearest = np.zeros(self.n, dtype=np.float64)
        self.nearest[ks] = np.where(real, 1.0, near.astype(np.float64))
        th = cfg.filters.min_traffic_similarity
        drop = (near < th) & ~real if th is not None else np.zeros(len(ks), bool)
        for lb, n in zip(lab[drop], ntok[drop]):
            self.hist[lb][int(n)] -= 1
        self.info["traffic_likeness"] = {"reference_rows": len(ref), "threshold": th, "dropped": int(drop.sum()),
                                         "nearest_quantiles": {q: round(float(np.quantile(near, q / 100)), 3)
                                                               for q in (5, 25, 50)}}
        self.record("traffic_likeness", "unlike_traffic", ks[drop],
                    [f"nearest real traffic message cosine {s:.2f} < {th:g}" for s in near[drop]],
                    self.phase("traffic_likeness", t0))

    def group_by(self, ds, keys: list[str]):
        """Rows sharing `keys` in one block, ready for `map_batches(batch_size=None)`: the shuffle
        `groupby(keys).map_groups` itself runs (a sort under the sort-based shuffle this module
        selects; a hash `repartition(keys=...)` if the cluster's DataContext picks a hash shuffle)."""
        from ray.data.context import ShuffleStrategy

        if ds.context.shuffle_strategy in (ShuffleStrategy.HASH_SHUFFLE, ShuffleStrategy.SHUFFLE_V2):
            return ds.repartition(self.partitions(self.n_alive()), keys=keys)
        return ds.sort(keys)

    def group_pass(self, ds, step, reason, what, key, fn, cols, phase=None, t0=None):
        """Hash-partition the rows in play on `key`, run `fn` on whole partitions, absorb drops."""
        t0 = time.perf_counter() if t0 is None else t0
        drops = None
        n = self.n_alive()
        if n:
            drops = _table(self.group_by(self.alive(ds).select_columns(cols), [key])
                           .map_batches(fn, batch_format="numpy", batch_size=None,
                                        fn_kwargs={"med": self.medians(), "cfg": self.cfg}))
        self.absorb(step, reason, what, drops, self.phase(phase or step, t0))

    def components_pass(self, ds, edges, step, reason, what, fn, cols, t0):
        a, b = _col(edges, "a", np.int64).astype(np.int64), _col(edges, "b", np.int64).astype(np.int64)
        pairs = np.unique(np.stack([a, b], axis=1), axis=0) if len(a) else np.zeros((0, 2), np.int64)
        nodes, comp = groups.components(pairs[:, 0], pairs[:, 1])
        info = {"edges": int(len(pairs)), "rows_in_components": int(len(nodes)),
                "components": int(len(np.unique(comp)))}
        sub = ds.map_batches(groups.attach_component, batch_format="numpy", fn_kwargs={"nodes": nodes, "comp": comp})
        self.group_pass(sub, step, reason, what, "comp", fn, cols + ["comp"], t0=t0)
        return info

    def minhash(self, live, lsh):
        t0 = time.perf_counter()
        n = self.n_alive()
        if not n:
            return self.absorb("minhash_dedup", "near_duplicate", "", None, 0.0)
        alive = self.alive(live)
        edges = _table(self.group_by(alive.select_columns(["_k", "bands"]).map_batches(groups.explode_bands,
                                                                                       batch_format="numpy"),
                                     ["band", "bk"])
                       .map_batches(groups.bucket_edges, batch_format="numpy", batch_size=None))
        self.phase("minhash_buckets", t0)
        info = self.components_pass(alive, edges, "minhash_dedup", "near_duplicate",
                                    "near copy (word-shingle Jaccard {:.2f})", groups.minhash_partition,
                                    ["_k", "id", "label", "text", "judge", "ntok"], t0)
        self.info["minhash"] = {"bands": lsh[0], "rows_per_band": lsh[1], **info}

    def semantic(self, live):
        cfg = self.cfg
        t0 = time.perf_counter()
        n = self.n_alive()
        if not n:
            return self.absorb("semantic_dedup", "semantic_duplicate", "", None, 0.0)
        alive = self.alive(live)
        cluster_rows = getattr(self.backend, "cluster_rows", None) or 2000
        probes = getattr(self.backend, "probes", None) or 4
        margin = getattr(self.backend, "probe_margin", None)
        margin = 0.1 if margin is None else margin
        k = max(1, math.ceil(n / cluster_rows))
        if k == 1:
            centroids = np.zeros((1, 1), dtype=np.float32)  # one cluster: every row against every row
            probes = 1
        else:
            frac = min(1.0, 64 * k / n)
            sample = _table(alive.select_columns(["_k", "vec"]).map_batches(
                lambda b: {"vec": b["vec"][groups.sample_mask(b["_k"], frac)]}, batch_format="numpy"))
            centroids = groups.train_centroids(np.stack(_col(sample, "vec")), k)
        self.phase("semantic_kmeans", t0)
        cols = ["_k", "label", "vec"]
        if k == 1:
            queries = alive.select_columns(cols).map_batches(
                lambda b: {**b, "cluster": np.zeros(len(b["_k"]), np.int64), "owner": np.ones(len(b["_k"]), bool)},
                batch_format="numpy")
        else:
            queries = alive.select_columns(cols).map_batches(
                groups.assign_clusters, batch_format="numpy", fn_kwargs={"centroids": centroids, "probes": probes, "margin": margin})
        edges = _table(self.group_by(queries, ["cluster"])
                       .map_batches(groups.cluster_pairs, batch_format="numpy", batch_size=None,
                                    fn_kwargs={"threshold": cfg.dedup.semantic_threshold,
                                               "per_label": not cfg.dedup.across_labels}))
        self.phase("semantic_pairs", t0)
        info = self.components_pass(alive, edges, "semantic_dedup", "semantic_duplicate", "paraphrase (cosine {:.2f})",
                                    groups.semantic_partition, ["_k", "id", "label", "judge", "ntok", "vec"], t0)
        self.info["semantic"] = {"clusters": k, "max_probes": probes, "probe_margin": margin,
                                 "cluster_rows": cluster_rows, **info}

    def balance(self, live):
        import ray

        t0 = time.perf_counter()
        by_traffic = None  # max_per_label_keeps most_traffic_like: the cosines, broadcast once
        if self.cfg.filters.max_per_label_keeps == "most_traffic_like" and self.nearest is not None:
            by_traffic = [ray.put(self.nearest)]
        n = self.n_alive()
        drops = None
        if n:
            drops = _table(self.group_by(self.alive(live).select_columns(["_k", "label", "judge", "ntok"]), ["label"])
                           .map_batches(groups.balance_partition, batch_format="numpy", batch_size=None,
                                        fn_kwargs={"med": self.medians(), "cfg": self.cfg, "nearest": by_traffic}))
        ks, details = _col(drops, "_k"), _col(drops, "detail")
        o = np.argsort(ks, kind="stable")
        self.record("balance", "label_over_max", ks[o], list(details[o]), self.phase("balance", t0))

    # ------------------------------------------------------------ outputs

    def result(self):
        """kept / rejected as the local funnel builds them: raw columns (+ cluster size, reason,
        detail), rejected rows in funnel order then row order. Built with pyarrow `take` (an HF
        `select().flatten_indices()` took ~37 s for 20k rows here)."""
        import datasets
        import pyarrow as pa
        from datasets.table import InMemoryTable

        from curation.curate import CurateResult

        t0 = time.perf_counter()
        kept = np.flatnonzero(self.step_of < 0)
        rej = np.flatnonzero(self.step_of >= 0)
        rej = rej[np.lexsort((rej, self.step_of[rej]))]  # funnel order, then row order: as local appends
        feats = self.raw.features.copy()
        feats["dedup_cluster_size"] = datasets.Value("int64")
        rej_feats = feats.copy()
        rej_feats["reason"] = datasets.Value("string")
        rej_feats["detail"] = datasets.Value("string")
        k_tbl = self.tbl.take(pa.array(kept)).append_column(
            "dedup_cluster_size", pa.array([self.size.get(int(k), 1) for k in kept], pa.int64()))
        r_tbl = self.tbl.take(pa.array(rej))
        r_tbl = r_tbl.append_column("dedup_cluster_size", pa.array(np.zeros(len(rej), np.int64)))
        r_tbl = r_tbl.append_column("reason", pa.array([self.reasons[self.step_of[k]] for k in rej], pa.string()))
        r_tbl = r_tbl.append_column("detail", pa.array([self.detail[int(k)] for k in rej], pa.string()))
        kept_ds = datasets.Dataset(InMemoryTable(k_tbl.cast(feats.arrow_schema)), info=datasets.DatasetInfo(features=feats))
        rej_ds = datasets.Dataset(InMemoryTable(r_tbl.cast(rej_feats.arrow_schema)),
                                  info=datasets.DatasetInfo(features=rej_feats))
        counts = self.per_label()
        floor = max(self.cfg.filters.min_per_label, 1)
        under = {lab: counts.get(lab, 0) for lab in self.spec.label_names if counts.get(lab, 0) < floor}
        self.phase("outputs", t0)
        return CurateResult(kept_ds, rej_ds, self.funnel, under, self.info)
