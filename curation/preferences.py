"""Preference pairs for DPO, built from the curated SFT rows of a classification task.

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


def classification_pairs(rows: datasets.Dataset, spec: TaskSpec, k: int | None = None, embedder=None) -> datasets.Dataset:
    """Dataset[prompt, chosen, rejected, id]: one pair per row, chosen = its label, rejected = a confusable one."""
    missing = {"id", "label", "prompt"} - set(rows.column_names)
    if missing:
        raise ValueError(f"cannot build preference pairs: rows lack column(s) {', '.join(sorted(missing))}")
    k = k if k is not None else spec.training.dpo.confusable_k
    near = confusable_labels(spec, k, embedder)
    seen: dict[str, int] = {}
    out = {"prompt": [], "chosen": [], "rejected": [], "id": []}
    for rid, label, prompt in zip(rows["id"], rows["label"], rows["prompt"]):
        if label not in near:
            raise ValueError(f"row {rid}: label '{label}' is not one of the task's labels")
        n = seen.get(label, 0)
        seen[label] = n + 1
        out["prompt"].append(prompt)
        out["chosen"].append([{"role": "assistant", "content": label}])
        out["rejected"].append([{"role": "assistant", "content": near[label][n % len(near[label])]}])
        out["id"].append(rid)
    return datasets.Dataset.from_dict(out)
