"""Curation on a Ray cluster: the local funnel's verdicts, with the work spread by Ray Data.

Why: a team that outgrows one box keeps its task spec and its CLI (`backend: {kind: ray}` or
`distilforge curate RUN --backend ray`) and gets the SAME kept rows, rejected rows, reasons and
funnel as `curation.curate.curate` (tests/test_ray_curation.py checks it on real rows).
Parity is by construction: per-row and per-group decisions call the local functions
(rows.py, groups.py); only the distribution differs:

  checks     `map_batches` tasks; a row's verdict is its first failing check
  embed      `map_batches` on an actor pool (one model load per actor), the local Embedder + cache
  decontam   tasks against the held-out ids, texts and vectors, broadcast once through the
             object store (n-gram index built once per worker process)
  exact      groupby on a 64-bit hash of (label when per-label, normalized text)
  MinHash    shuffle on (band, band key) -> bucket edges -> connected components -> the local
             greedy pass per component
  semantic   k-means on a sample -> each row searched against the rows of its nearest cluster
             and of clusters almost as near -> pairs over the threshold -> components -> the
             local greedy pass per component (SemDeDup-style: nothing quadratic in n)
  likeness   tasks against the broadcast real-traffic vectors (nearest cosine per row)
  balance    groupby on the label (ranked by those cosines under most_traffic_like)

The driver (driver.py) keeps only per-row verdicts (step, detail, cluster size), the label /
length histogram behind the quality order's medians, and the deduplicated edge lists for
connected components (scipy): O(rows) integers or O(duplicate pairs), never a vector index.
The kept/rejected datasets are `take`s of the stage's own rows. Ray is imported only inside this
package, lazily: the local path never imports it. docs/scaling.md has the measured numbers.
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec

WORKER_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
              "HF_HUB_DISABLE_TELEMETRY": "1"}


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RuntimeError("the Ray backend needs Ray Data: pip install 'distilforge[ray]'") from None
    return ray


@contextmanager
def ray_session(backend=None):
    """Use the Ray already initialised in this process, else connect to `backend.address` (or
    $RAY_ADDRESS), else start a local one (`num_cpus`, loopback only); shut down only what this
    call started."""
    address = getattr(backend, "address", None)
    if not address and not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules:
        # A Ray this process starts itself binds and advertises 127.0.0.1 only (read at import).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "DISTILFORGE_", "TOKENIZERS_"))}
        kw = {"include_dashboard": False, "log_to_driver": False,
              "runtime_env": {"env_vars": {**env, **WORKER_ENV}}}  # e.g. DISTILFORGE_CACHE: the same cache
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=getattr(backend, "num_cpus", None), **kw)
        started = True
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    before = ctx.enable_progress_bars, ctx.shuffle_strategy
    ctx.enable_progress_bars = False
    if os.environ.get("DISTILFORGE_RAY_SHUFFLE", "sort") == "sort":
        # Measured here: a sort-based groupby of 20k rows takes ~0.3 s, the hash shuffle's
        # aggregator actors ~3-7 s each time; DISTILFORGE_RAY_SHUFFLE=hash keeps Ray's default.
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield ray
    finally:
        ctx.enable_progress_bars, ctx.shuffle_strategy = before
        if started:
            ray.shutdown()


def curate_ray(raw, spec: TaskSpec, heldout=None, *, backend=None, cache_root=None, traffic_texts=None):
    """`curation.curate.curate` on Ray: same arguments (minus the in-process embedder), same result.
    `traffic_texts`: real messages for the likeness filter and ranking (traffic.reference_texts).

    `backend`: a `distilforge.spec.Backend` (default `spec.backend`): cluster address, CPUs for a
    local start, encode actors, semantic cluster size and probes. `cache_root`: the embedding cache
    folder on every worker (default: each node's `~/.cache/distilforge/embeddings`)."""
    from curation import agreement

    backend = backend if backend is not None else getattr(spec, "backend", None)
    raw, agree = agreement.prepare(raw, spec)  # as the local funnel: relabel before any step
    with ray_session(backend):
        from curation.raybackend.driver import Run

        res = Run(raw, spec, heldout, backend, cache_root, traffic_texts).run()
    if agree:
        res.info["teacher_agreement"] = agree
    agreement.annotate(res.funnel, agree)
    return res
