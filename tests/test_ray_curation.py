"""The Ray backend gives the local funnel's answer: same kept rows, same rejected rows with the same
reasons and details, same funnel, on real Banking77 rows; and the spec block / CLI flag reach it.

Input, built at run time (no dataset row is stored in the repo): the first 100 Banking77 TRAIN
rows of each of the ten example intents (read from ../shared), plus copies this test makes of some:
exact copies (case, punctuation), near copies (one filler word), held-out leaks (locked TEST rows
with a greeting), and rows each filter must catch. Semantic duplicates need no planting: about a
fifth of Banking77 train rows have a paraphrase at cosine >= 0.92 (curation/dedup.py).

A local Ray (2 CPUs, loopback only) is started once for the module. The local and the Ray runs
use separate embedding caches, so each path computes its own vectors.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before `import ray`: bind 127.0.0.1 only

import datasets  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from conftest import BANKING77, TASK, cli  # noqa: E402
from curation.curate import curate  # noqa: E402
from curation.embed import Embedder  # noqa: E402
from curation.raybackend import WORKER_ENV, curate_ray  # noqa: E402
from distilforge.manifest import Stage, load_dataset_dir, read_manifest  # noqa: E402
from distilforge.spec import Backend, parse_spec  # noqa: E402
from heldout.lock import load_locked, lock  # noqa: E402

FILLERS = ["really", "just", "still", "please"]
PER_LABEL = 100  # train rows per intent: ~1,000 rows, enough for >= 40 real paraphrase pairs
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own context warnings


def task_raw() -> dict:
    raw = yaml.safe_load(TASK.read_text())
    raw["heldout"]["source"] = str(BANKING77 / "test.csv")
    raw.pop("profiles", None)
    return raw


def make_spec(**over):
    return parse_spec({**task_raw(), **over})


def read_split(name: str, spec, per_label: int = 10**6) -> list[tuple[str, str]]:
    """(label, text) of the task's intents, source label names mapped as the held-out lock maps them."""
    names, lmap, seen, out = set(spec.label_names), spec.heldout.label_map, {}, []
    with open(BANKING77 / name, newline="") as f:
        for r in csv.DictReader(f):
            lab = lmap.get(r["category"], r["category"])
            if lab in names and seen.get(lab, 0) < per_label:
                seen[lab] = seen.get(lab, 0) + 1
                out.append((lab, r["text"].strip()))
    return out


def row(spec, n: int, label: str, text: str, **over) -> dict:
    r = {"id": f"r{n:05d}", "label": label, "text": text, "prompt": spec.student_prompt(text),
         "completion": [{"role": "assistant", "content": label}], "strategy": "test",
         "attributes": json.dumps({"n": n}), "status": "ok", "error": "",
         # varied scores (with ties and gaps) so the quality order, not the position, picks keepers
         "judge_score": [0.9, 0.8, 0.8, 0.7, None, 0.95][n % 6]}
    r.update(over)
    return r


def banking_rows(spec, limit: int | None = None) -> list[dict]:
    train = read_split("train.csv", spec, PER_LABEL)[:limit]
    test = read_split("test.csv", spec)
    rows = [row(spec, i, lab, t) for i, (lab, t) in enumerate(train)]
    n = len(rows)

    def add(label, text, **over):
        nonlocal n
        rows.append(row(spec, n, label, text, **over))
        n += 1

    pick = train[5::max(1, len(train) // 25)][:25]
    for lab, t in pick[:10]:  # exact copies
        add(lab, t.upper().rstrip("?.!") + " !!")
    for j, (lab, t) in enumerate(pick[10:20]):  # near copies: one filler word in the middle
        w = t.split()
        add(lab, " ".join(w[: len(w) // 2] + [FILLERS[j % 4]] + w[len(w) // 2:]))
    for lab, t in test[3::max(1, len(test) // 8)][:8]:  # held-out leaks
        add(lab, f"Hi, {t}")
    lab, t = pick[20]
    add(lab, t, status="failed", error="timeout after 120 s")
    add("mortgage", t, completion=[{"role": "assistant", "content": "mortgage"}])
    add(lab, t, completion=[{"role": "assistant", "content": "pin_blocked" if lab != "pin_blocked" else "exchange_rate"}])
    lab, t = pick[21]
    add(lab, " ".join(t.split()[:2]))  # too short
    add(lab, f"As an AI language model, I cannot help with this. {t}")
    add(lab, f"Sure! Here is a message: {t}")
    add(lab, f"{t} ({lab})")  # label leak
    add(lab, f"{t}\x07")
    add(lab, f"Hello! How can I assist you today? {t}")
    add(lab, pick[22][1], judge_score=0.2)
    return rows


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": WORKER_ENV})
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    spec = make_spec()
    raw = datasets.Dataset.from_list(banking_rows(spec))
    d = tmp_path_factory.mktemp("heldout")
    lock(spec.heldout, spec, d)
    held = load_locked(d)
    emb = Embedder(cache_root=tmp_path_factory.mktemp("emb-local"), threads=1)
    return spec, raw, held, curate(raw, spec, held, embedder=emb), tmp_path_factory.mktemp("emb-ray"), emb


def funnel(res) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "seconds"} for s in res.funnel]


def assert_same(local, other) -> None:
    assert other.kept["id"] == local.kept["id"]
    assert list(zip(other.rejected["id"], other.rejected["reason"], other.rejected["detail"])) == \
        list(zip(local.rejected["id"], local.rejected["reason"], local.rejected["detail"]))
    assert funnel(other) == funnel(local)
    assert other.under_filled == local.under_filled
    assert other.kept.features == local.kept.features and other.rejected.features == local.rejected.features
    assert other.kept.to_list() == local.kept.to_list()  # every column, cluster sizes included


def test_the_input_exercises_every_kind_of_drop(case):
    _, raw, _, local, _, _ = case
    reasons = local.reasons()
    for r in ("exact_duplicate", "near_duplicate", "semantic_duplicate", "heldout_contamination", "generation_failed",
              "schema_invalid", "label_not_in_set", "too_short", "refusal", "meta_commentary", "label_leak",
              "non_printable", "wrong_voice", "low_judge_score"):
        assert reasons.get(r, 0) > 0, (r, reasons)
    assert reasons["semantic_duplicate"] >= 30 and len(raw) > 1000


def test_ray_backend_matches_local_row_for_row(case, local_ray):
    spec, raw, held, local, cache, _ = case
    res = curate_ray(raw, spec, held, cache_root=cache)
    assert_same(local, res)
    assert res.info["semantic"]["clusters"] == 1  # < cluster_rows: one cluster, exact by definition
    assert res.info["semantic"]["edges"] * 2 == local.info["semantic"]["pairs_over_threshold"]
    assert res.info["embedding"]["rows"] == local.info["embedding"]["rows"]
    assert res.info["decontamination"] == local.info["decontamination"]


def test_ray_backend_matches_local_with_many_semantic_clusters(case, local_ray):
    """k-means with ~10 clusters, rows searched in the clusters near their own (default margin):
    no pair over the threshold is missed on real data, so the result is the local one."""
    spec, raw, held, local, cache, _ = case
    res = curate_ray(raw, spec, held, cache_root=cache, backend=Backend(kind="ray", cluster_rows=60))
    assert res.info["semantic"]["clusters"] >= 8
    assert res.info["semantic"]["edges"] * 2 == local.info["semantic"]["pairs_over_threshold"]  # every pair found
    assert_same(local, res)


def test_per_label_dedup_and_balance_match_too(case, local_ray):
    spec, raw, held, _, cache, emb = case
    spec = make_spec(curation={"dedup_across_labels": False, "max_per_label": 40, "min_per_label": 45,
                               "minhash_threshold": 0.6})
    raw = raw.select(range(0, len(raw), 2))  # a different subset: other groups, other medians
    local = curate(raw, spec, held, embedder=emb)
    assert "label_over_max" in local.reasons() and local.under_filled
    assert_same(local, curate_ray(raw, spec, held, cache_root=cache, backend=Backend(kind="ray", cluster_rows=120)))


def test_traffic_likeness_and_ranking_match_too(case, local_ray):
    """The real-traffic likeness filter and `max_per_label_keeps: most_traffic_like` on Ray: the
    same rows dropped as unlike traffic (cosine in the detail) and the same rows kept per label.
    Reference: other Banking77 train rows of these intents (not among the curated ones); planted
    rows about nothing are what the filter is for, and a real row is exempt and ranked first."""
    spec, raw, held, _, cache, emb = case
    spec = make_spec(curation={"min_traffic_similarity": 0.5, "max_per_label": 30,
                               "max_per_label_keeps": "most_traffic_like"})
    mine = set(raw["text"])
    reference = [t for _, t in read_split("train.csv", spec, 2 * PER_LABEL) if t not in mine]
    plant = ["Thank you for your prompt response, I appreciate the assistance.",
             "We're currently trying to resolve this problem with our team.",
             "Hi there! I think we should talk more about this."]
    labs = spec.label_names
    extra = [row(spec, 90000 + i, labs[i], t) for i, t in enumerate(plant)]
    extra.append(row(spec, 90100, labs[0], "Oh no, that's not a nice situation to have.", strategy="traffic"))
    raw = datasets.concatenate_datasets([raw, datasets.Dataset.from_list(extra, features=raw.features)])
    local = curate(raw, spec, held, embedder=emb, traffic_texts=reference)
    why = dict(zip(local.rejected["text"], local.rejected["reason"]))
    assert all(why.get(t) == "unlike_traffic" for t in plant), why
    assert "Oh no, that's not a nice situation to have." in set(local.kept["text"])
    assert any("nearer real traffic" in d for d in local.rejected["detail"])
    res = curate_ray(raw, spec, held, cache_root=cache, traffic_texts=reference)
    assert_same(local, res)
    assert res.info["traffic_likeness"] == local.info["traffic_likeness"]


def make_run(path, spec, raw):
    lock(spec.heldout, spec, path / "heldout")
    st = Stage(path / "generate", "generate", {}, {"test": 1}).begin()
    st.save("rows", raw)
    st.finish()
    return path


def test_spec_block_and_cli_flag_give_the_local_stage_outputs(tmp_path, local_ray):
    from curation.stages import curate_stage

    spec = make_spec()
    raw = datasets.Dataset.from_list(banking_rows(spec, limit=300))
    outs = {}
    for name, s in (("local", spec), ("spec_block", make_spec(backend={"kind": "ray", "num_cpus": 2}))):
        run = make_run(tmp_path / name, s, raw)
        curate_stage(s, run)
        outs[name] = run
    # the CLI flag, in a fresh process that starts (and stops) its own local Ray
    run = make_run(tmp_path / "cli", spec, raw)
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task_raw()))
    r = cli("curate", run, "--spec", tmp_path / "task.yaml", "--backend", "ray", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    outs["cli"] = run
    want = read_manifest(outs["local"] / "curate")
    assert want["backend"] == "local" and want["dropped"] > 0
    for name in ("spec_block", "cli"):
        got = read_manifest(outs[name] / "curate")
        assert got["backend"] == "ray", name
        for key in ("kept", "dropped", "rejected_by_reason", "under_filled"):
            assert got[key] == want[key], (name, key)
        assert [{k: v for k, v in s.items() if k != "seconds"} for s in got["funnel"]] == \
            [{k: v for k, v in s.items() if k != "seconds"} for s in want["funnel"]]
        assert got["outputs"]["curated"]["sha256"] == want["outputs"]["curated"]["sha256"], name
        assert got["outputs"]["rejected"]["sha256"] == want["outputs"]["rejected"]["sha256"], name
        assert load_dataset_dir(outs[name] / "curate" / "curated")["id"] == \
            load_dataset_dir(outs["local"] / "curate" / "curated")["id"]


def test_the_local_path_never_imports_ray():
    code = ("import sys, datasets\n"
            "import curation.stages, curation.cli, app.cli, app.pipeline\n"
            "from curation.curate import curate\n"
            "from test_ray_curation import banking_rows, make_spec\n"
            "spec = make_spec(curation={'semantic_dedup': False, 'decontaminate': False})\n"
            "res = curate(datasets.Dataset.from_list(banking_rows(spec, limit=40)), spec)\n"
            "assert len(res.rejected) > 0, res.reasons()\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_bad_backend_flag_is_one_line(tmp_path):
    r = cli("curate", tmp_path / "run", "--backend", "spark")
    assert r.returncode == 2 and "--backend: 'spark' is not one of: local, ray" in r.stderr
