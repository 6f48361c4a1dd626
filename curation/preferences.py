"""Preference pairs for DPO built from curated SFT rows, without a judge (the task format's hard
negatives): extraction rejects the answer with one field changed; classification, described here,
rejects a wrong label.

For a classification row the right answer is known, so a pair needs no judge: prompt = the
row's prompt, chosen = its label, rejected = a wrong label. A random wrong label teaches little
(the SFT student already rules out "exchange_rate" for a lost card); the useful negatives are the
labels the student confuses, so the rejected label is the nearest other label by embedding of the
label descriptions ("card_arrival" vs "lost_or_stolen_card"). Rows of one label cycle through its
`k` nearest labels, so the student is pushed away from more than one neighbour.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import datasets
import numpy as np

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec


def label_texts(spec: TaskSpec) -> list[str]:
    """What is embedded per label: its readable name and its description."""
    return [f"{lab.name.replace('_', ' ')}: {lab.description}" for lab in spec.labels]


def confusable_labels(spec: TaskSpec, k: int = 2, embedder=None) -> dict[str, list[str]]:
    """label -> the `k` other labels nearest to it (cosine of description embeddings), nearest first."""
    if embedder is None:
        from curation.embed import Embedder

        c = spec.curation
        embedder = Embedder(c.embeddings.model, batch_size=c.embeddings.batch_size, threads=c.embeddings.threads)
    names = spec.label_names
    vecs = embedder.encode(label_texts(spec))
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    k = max(1, min(k, len(names) - 1))
    # stable argsort on -sim: ties keep label order, so pairs are reproducible
    return {name: [names[j] for j in np.argsort(-sims[i], kind="stable")[:k]] for i, name in enumerate(names)}


def hard_negative_pairs(rows: datasets.Dataset, spec: TaskSpec, k: int | None = None, embedder=None) -> datasets.Dataset:
    """Dataset[prompt, chosen, rejected, id]: one pair per row the task format can make a wrong answer
    for (heldout/formats `hard_negatives`): chosen = the row's completion, rejected = a confusable
    label (classification, `k` nearest; default `training.dpo.confusable_k`) or the answer with one
    field changed (extraction)."""
    from heldout.formats import task_format

    missing = {"id", "prompt", "completion"} - set(rows.column_names)
    if missing:
        raise ValueError(f"cannot build preference pairs: rows lack column(s) {', '.join(sorted(missing))}")
    k = k if k is not None else spec.training.dpo.confusable_k
    pairs = task_format(spec).hard_negatives(list(rows), lambda: confusable_labels(spec, k, embedder))
    return datasets.Dataset.from_dict({
        "prompt": [p["row"]["prompt"] for p in pairs], "chosen": [p["row"]["completion"] for p in pairs],
        "rejected": [[{"role": "assistant", "content": p["rejected"]}] for p in pairs],
        "id": [p["row"]["id"] for p in pairs]})
