"""Generation on Ray: the same distilabel pipeline, run as distilabel's `RayPipeline`.

Nothing about the rows changes: the plan (request ids), the shard files committed exactly once
by the single `CommitShards` actor, the spend ledger and the budget check before each shard are
the local path's own steps. What Ray adds is where the steps run: each is a Ray actor, and the
generation step gets `backend.generate_replicas` actors (default: one per teacher endpoint),
each spreading its requests over every endpoint (curation/generation/gensteps.py). The run directory must
be on storage every node sees (the shard files and ledger live there). The Ray session is the
one curation uses (curation/raybackend); the local path never imports Ray.
"""
from __future__ import annotations


def on_ray(pipe, tasks: list, endpoints: int, backend):
    """The RayPipeline for `pipe` with the LLM steps in `tasks` replicated."""
    from distilabel.steps.base import StepResources

    n = backend.generate_replicas or max(endpoints, 1)
    for t in tasks:
        t.resources = StepResources(replicas=n)
    return pipe.ray()
