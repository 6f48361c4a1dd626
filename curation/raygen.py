"""Generation on Ray: the same distilabel pipeline, run as distilabel's `RayPipeline`.

Nothing about the rows changes: the plan (request ids), the shard files committed exactly once
by the single `CommitShards` actor, the spend ledger and the budget check before each shard are
the local path's own steps. What Ray adds is where the steps run: each is a Ray actor, and the
generation step gets `backend.generate_replicas` actors (default: one per teacher endpoint),
each spreading its requests over every endpoint (curation/gensteps.py). The run directory must
be on storage every node sees (the shard files and ledger live there). Ray is imported here
only, so the local path never needs it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def ray_session(backend) -> Iterator[None]:
    """Connect to `backend.address` or start a local Ray (loopback only); shut down what we started."""
    try:
        import ray
    except ImportError as e:  # one clear line instead of a traceback
        raise RuntimeError("backend.kind is 'ray' but ray is not installed: pip install 'distilforge[ray]'") from e
    started = False
    if not ray.is_initialized():
        env = {"env_vars": {k: v for k, v in os.environ.items()
                            if k.startswith(("HF_", "DISTILFORGE_", "DISTILABEL_", "OMP_", "TOKENIZERS_"))}}
        if backend.address:
            ray.init(address=backend.address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(num_cpus=backend.num_cpus or os.cpu_count(), include_dashboard=False, runtime_env=env,
                     log_to_driver=False, _node_ip_address="127.0.0.1")
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def on_ray(pipe, tasks: list, endpoints: int, backend):
    """The RayPipeline for `pipe` with the LLM steps in `tasks` replicated."""
    from distilabel.steps.base import StepResources

    n = backend.generate_replicas or max(endpoints, 1)
    for t in tasks:
        t.resources = StepResources(replicas=n)
    return pipe.ray()
