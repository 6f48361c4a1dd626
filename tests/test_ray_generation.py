"""Generation on Ray (distilabel's RayPipeline, a local Ray started by the CLI on loopback) gives
the same rows as the local pipeline: same ids, same texts (greedy decoding against the same real
embedded teacher), same statuses and the same manifest counts; and it keeps exactly-once shards."""
from __future__ import annotations

import json
from pathlib import Path

import datasets

from conftest import cli

SPEC = """\
name: tiny-ray
type: classification
instruction: Classify the customer's message into its intent.
labels:
  - {name: card_arrival, description: the customer's new card has not arrived yet}
  - {name: exchange_rate, description: the customer asks what exchange rate is used}
  - {name: pin_blocked, description: the customer's PIN is blocked after wrong attempts}
teacher: {model: qwen2.5-coder-0.5b, max_tokens: 40, temperature: 0.0}
generation: {per_label: 2, shard_size: 2, seed: 3, invalid_retries: 0,
             input_description: a bank customer writing to the support chat}
heldout: {source: ../shared/data/banking77/test.csv, label_column: category}
"""


def _run(tmp: Path, name: str, backend: str) -> Path:
    spec = tmp / f"{name}.yaml"
    spec.write_text(SPEC + (f"backend: {{kind: {backend}, num_cpus: 2}}\n" if backend == "ray" else ""))
    run = tmp / name
    r = cli("generate", run, "--spec", spec)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def _rows(run: Path) -> list[tuple]:
    ds = datasets.load_from_disk(str(run / "generate" / "rows"))
    return sorted(zip(ds["id"], ds["label"], ds["text"], ds["status"], ds["prompt_tokens"], ds["completion_tokens"]))


def test_ray_backend_generates_the_same_rows_as_local(tmp_path, fast_teacher):
    local = _run(tmp_path, "local", "local")
    ray = _run(tmp_path, "ray", "ray")
    a, b = _rows(local), _rows(ray)
    assert len(a) == 6 and len({r[0] for r in a}) == 6
    assert a == b  # ids, texts, statuses and token counts identical
    ma, mb = (json.loads((r / "generate" / "manifest.json").read_text()) for r in (local, ray))
    for k in ("ok", "failed", "pending_shards", "tokens"):
        assert ma[k] == mb[k], k
    assert ma["fingerprint"] == mb["fingerprint"]  # the backend changes where, not what
    shards = sorted(p.name for p in (ray / "generate" / "shards").glob("*.jsonl"))
    assert shards == sorted(p.name for p in (local / "generate" / "shards").glob("*.jsonl")) and len(shards) == 3
    ledger = [json.loads(x) for x in (ray / "generate" / "ledger.jsonl").read_text().splitlines()]
    assert sorted(e["shard"] for e in ledger if e.get("committed")) == [s[:-6] for s in shards]  # once each
    r = cli("generate", ray)  # nothing changed: skipped, and no Ray needed to say so
    assert r.returncode == 0 and "skipped" in r.stderr
