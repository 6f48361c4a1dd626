"""The review round trip on the embedded Argilla server: push → curators → pull → export.

100 rows are built at run time from Banking77 TRAIN texts (10 per task label; the locked test file is
never read). Two curators answer 20 times through the SDK (submitted, draft, discarded; accepts,
rejects with reasons, label and typed corrections, one invalid correction), the owner answers once in
Argilla's own UI (Debian chromium via playwright). The expected export, agreement and judge-vs-human
numbers below are worked out by hand from that plan, not by asking the code under test.
Tests run in file order and share one run dir and one server (startup costs ~30 s on 2 cores).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
import time

import datasets
import pandas as pd
import pytest

rg = pytest.importorskip("argilla")

try:
    from tests.conftest_argilla import EmbeddedServer, shared_server, stop_shared_server
except ImportError:
    from conftest_argilla import EmbeddedServer, shared_server, stop_shared_server

from conftest import BANKING77, TASK
from distilforge.manifest import Stage, load_dataset_dir
from distilforge.runctx import prepare
from labeling.client import connect
from labeling.export import export_rows
from labeling.push import ReviewError, push_run
from labeling.review_analysis import cohen_kappa, fleiss_kappa, rater_agreement
from labeling.server import control

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
N = 100
JUDGE = [1.0, 0.67, 1.0, 0.33, 0.67, 1.0, 1.0, 0.67, 0.33]  # rows 0-8; decision suggestion: accept iff >= 0.5
EVOLVE = {2, 3, 4, 8, 13}  # where the plan's rejects concentrate → the hot spot
UI_ROW = 99  # the one `fewshot` row: the UI filters to it by metadata
UI_LABEL = "card_arrival"  # the owner's label correction in the UI (row 99 is declined_card_payment)


# ---------------------------------------------------------------- kappa, by hand

def test_kappa_on_hand_checked_cases():
    # Cohen: 50 items, both "yes" 20, A yes/B no 5, A no/B yes 10, both "no" 15 → po .7, pe .5, kappa .4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None  # one category: chance agreement is 1, kappa undefined
    # Fleiss: 10 items × 14 raters × 5 categories (the textbook table) → kappa 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[c for c, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.2099, abs=1e-4)
    # two raters through rater_agreement: 3 of 5 agree, each accepts 3/5 → (0.6 - 0.52) / 0.48
    rows = [{"id": f"r{i}", "status": "submitted", "user_id": u, "decision": d}
            for i, (x, y) in enumerate(zip("AAARR", "AARRA")) for u, d in (("u1", x), ("u2", y))]
    got = rater_agreement(rows)
    assert got["method"] == "cohen" and got["items"] == 5 and got["kappa"] == pytest.approx(1 / 6, abs=1e-4)
    rows.append({"id": "r0", "status": "submitted", "user_id": "u3", "decision": "A"})
    assert rater_agreement(rows)["method"] == "fleiss"


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def server(tmp_path_factory) -> EmbeddedServer:
    yield shared_server(tmp_path_factory)
    stop_shared_server()


def _build_run(run):
    spec = prepare(run, TASK, create=True)  # this helper starts the run dir
    train = pd.read_csv(BANKING77 / "train.csv")
    by_lower = {lab.lower(): lab for lab in spec.label_names}  # the source capitalizes Refund_not_showing_up
    train = train[train.category.str.lower().isin(by_lower)]
    rows = []
    for lab in spec.label_names:
        for text in train[train.category.str.lower() == lab].text.head(10):
            i = len(rows)
            rows.append({"id": "g-" + hashlib.sha256(text.encode()).hexdigest()[:16], "label": lab, "text": text,
                         "prompt": spec.student_prompt(text), "completion": [{"role": "assistant", "content": lab}],
                         "strategy": "fewshot" if i == UI_ROW else "evolve" if i in EVOLVE else "attributes",
                         "attributes": "{}", "teacher_model": spec.teacher.model,
                         "prompt_tokens": 60 + len(text.split()), "completion_tokens": 3, "latency_s": 0.5,
                         "status": "ok", "error": "",
                         "dedup_cluster_size": 1 + i % 2, "judge_score": JUDGE[i] if i < len(JUDGE) else None})
    assert len(rows) == N
    st = Stage(run / "curate", "curate", {}, {}).begin()
    st.save("curated", datasets.Dataset.from_list(rows))
    st.finish()
    # five teacher preference pairs (generate/prefs): chosen = the row's label, rejected = the next label
    names = spec.label_names
    other = {lab: names[(i + 1) % len(names)] for i, lab in enumerate(names)}
    pairs = [{"id": "pp-" + r["id"][2:], "source_id": r["id"], "kind": "judged", "prompt": r["prompt"],
              "chosen": r["completion"], "rejected": [{"role": "assistant", "content": other[r["label"]]}],
              "chosen_score": 2.0, "rejected_score": 1.0, "margin": 1.0, "rationale": ""} for r in rows[20:25]]
    st = Stage(run / "generate", "generate", {}, {}).begin()
    st.save("prefs", datasets.Dataset.from_list(pairs))
    st.finish()
    return spec, rows


@pytest.fixture(scope="module")
def world(server, tmp_path_factory):
    run = tmp_path_factory.mktemp("review") / "run"
    spec, rows = _build_run(run)
    os.environ.pop("ARGILLA_API_URL", None)
    os.environ.pop("ARGILLA_API_KEY", None)
    return {"run": run, "spec": spec, "rows": rows, "server": server, "client": connect(data_dir=server.data_dir)}


def _dataset(world):
    state = json.loads((world["run"] / "review" / "push.json").read_text())
    ds = connect(data_dir=world["server"].data_dir).datasets(name=state["datasets"]["sft"]["name"],
                                                             workspace=state["workspace"])
    assert str(ds.id) == state["datasets"]["sft"]["id"]
    return ds


def _cli(*args):
    from typer.testing import CliRunner

    from labeling.cli import review_app

    return CliRunner().invoke(review_app, [str(a) for a in args])


# ---------------------------------------------------------------- push

def test_push_creates_schema_and_is_idempotent(world):
    run, server = world["run"], world["server"]
    r = _cli("push", run, "--data-dir", server.data_dir, "--batch-size", 30)
    assert r.exit_code == 0, r.output
    assert "100 records" in r.output and "100 new" in r.output
    elsewhere = run.parent / "no-embedded-server-here"  # as against a hosted Argilla: URL + key only
    r = _cli("push", run, "--data-dir", elsewhere, "--api-url", server.url, "--batch-size", 30)
    assert r.exit_code == 1 and "no API key for" in r.output and server.api_key not in r.output
    from typer.testing import CliRunner

    from labeling.cli import review_app

    r = CliRunner().invoke(review_app, ["push", str(run), "--data-dir", str(elsewhere), "--batch-size", "30"],
                           env={"ARGILLA_API_URL": server.url, "ARGILLA_API_KEY": server.api_key})
    assert r.exit_code == 0 and "0 new, 100 updated, 100 in the dataset" in r.output, r.output
    ds = _dataset(world)
    records = list(ds.records(with_suggestions=True, with_vectors=True))
    assert len(records) == N and len({rec.id for rec in records}) == N
    s = ds.settings
    assert [q.name for q in s.questions] == ["decision", "correct_label", "rating", "corrected", "reject_reason"]
    assert s.questions["decision"].required and not s.questions["rating"].required
    assert set(s.questions["reject_reason"].labels) == {"wrong_label", "off_topic", "unnatural", "duplicate",
                                                        "unsafe", "other"}
    assert {m.name for m in s.metadata} >= {"label", "strategy", "judge_score", "dedup_cluster_size",
                                            "coverage_gap", "cluster", "prompt_tokens", "completion_tokens"}
    assert "pin_blocked" in s.guidelines and "PIN is blocked" in s.guidelines  # written from the spec
    by_text = {rec.fields["text"]: rec for rec in records}
    first, plain = by_text[world["rows"][3]["text"]], by_text[world["rows"][50]["text"]]
    sugg = {x.question_name: (x.value, x.score, x.agent) for x in first.suggestions}
    assert sugg["decision"] == ("reject", pytest.approx(0.67), "qwen2.5-coder-1.5b")  # judge 0.33 < 0.5
    assert sugg["rating"][0] == 2 and sugg["correct_label"][0] == "card_arrival"
    assert {x.question_name for x in plain.suggestions} == {"correct_label"}  # no judge data: the label only
    assert first.metadata["judge_score"] == pytest.approx(0.33) and first.metadata["strategy"] == "evolve"
    assert len(first.vectors["embedding"]) == 384
    prefs = connect(data_dir=server.data_dir).datasets(name=ds.name.replace("-sft", "-prefs"),
                                                       workspace=ds.workspace.name)
    assert [f.name for f in prefs.settings.fields] == ["prompt", "chosen", "rejected"]
    assert "correct_label" not in [q.name for q in prefs.settings.questions]
    pref_records = list(prefs.records())
    assert len(pref_records) == 5 and pref_records[0].fields["prompt"] == world["rows"][20]["text"]
    blob = "".join(p.read_text() for p in (run / "review").glob("*.json"))
    assert server.api_key not in blob and server.password not in blob


def test_changed_schema_fails_before_writing(world):
    from distilforge.spec import Label

    spec = world["spec"]
    wider = spec.model_copy(update={"labels": spec.labels + [Label(name="new_intent", description="something new")]})
    with pytest.raises(ReviewError, match="different schema") as exc:
        push_run(world["run"], wider, data_dir=world["server"].data_dir, progress=False)
    assert "correct_label" in str(exc.value) and "\n" not in str(exc.value)
    ds = _dataset(world)
    assert "new_intent" not in ds.settings.questions["correct_label"].labels
    assert len(list(ds.records())) == N


# ---------------------------------------------------------------- curators

@pytest.fixture(scope="module")
def reviewed(world, tmp_path_factory):
    """The owner answers once in the UI, then two curators 20 times through the SDK."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip("chromium missing: run .ci/install_browser.sh")
    sync_api = pytest.importorskip("playwright.sync_api")
    server, rows = world["server"], world["rows"]
    ds = _dataset(world)
    with sync_api.sync_playwright() as p:
        profile = tempfile.mkdtemp(prefix="chromium-review-", dir=tmp_path_factory.getbasetemp())
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 900})
        try:
            page = ctx.new_page()
            page.goto(f"{server.url}/sign-in")
            page.get_by_label("Username").fill(server.username)
            page.get_by_label("Password").fill(server.password)
            page.get_by_role("button", name="Sign in").click()
            sync_api.expect(page.get_by_text(ds.name, exact=True).first).to_be_visible(timeout=30_000)
            page.goto(f"{server.url}/dataset/{ds.id}/annotation-mode?page=1&status=pending&metadata=strategy.fewshot")
            sync_api.expect(page.get_by_text("1 of 1")).to_be_visible(timeout=30_000)
            sync_api.expect(page.get_by_text(rows[UI_ROW]["text"]).first).to_be_visible(timeout=30_000)
            page.locator("label[for=decision_accept]").click()
            page.locator(f"label[for=correct_label_{UI_LABEL}]").click()  # replaces the pre-filled suggestion
            page.locator("label[for=rating_4]").click()
            page.locator("button.button--submit").click()
            progress = page.get_by_role("listitem").filter(has_text="submitted")
            sync_api.expect(progress).to_contain_text("1", timeout=30_000)
        finally:
            ctx.close()

    client = world["client"]
    ws = client.workspaces(ds.workspace.name)
    users = {}
    for name in ("curator1", "curator2"):
        user = client.users(username=name) or rg.User(username=name, password=f"{name}-pass-1234", role="annotator",
                                                      client=client).create()
        ws.add_user(user)
        users[name] = user
    c1, c2 = users["curator1"].id, users["curator2"].id
    X, Y = "lost_or_stolen_card", "exchange_rate"  # corrections (rows 0-13 are card_arrival / lost_or_stolen_card)
    plan = [  # (row, user, values, status): 12 from curator1, 8 from curator2
        (0, c1, {"decision": "accept", "rating": 5}, "submitted"), (0, c2, {"decision": "accept"}, "submitted"),
        (1, c1, {"decision": "accept", "correct_label": X}, "submitted"),
        (1, c2, {"decision": "accept", "corrected": X}, "submitted"),
        (2, c1, {"decision": "accept"}, "submitted"),
        (2, c2, {"decision": "reject", "reject_reason": ["wrong_label"]}, "submitted"),
        (3, c1, {"decision": "reject", "reject_reason": ["off_topic", "unnatural"]}, "submitted"),
        (3, c2, {"decision": "reject", "reject_reason": ["off_topic"]}, "submitted"),
        (4, c1, {"decision": "reject", "reject_reason": ["duplicate"]}, "submitted"),
        (4, c2, {"decision": "accept"}, "submitted"),
        (5, c1, {"decision": "accept"}, "submitted"), (5, c2, {"decision": "accept"}, "draft"),
        (6, c1, {"decision": "accept", "corrected": "not_a_label"}, "submitted"),
        (7, c1, {"decision": "accept", "rating": 4}, "submitted"),
        (8, c1, {"decision": "reject", "reject_reason": ["unsafe"], "rating": 1}, "submitted"),
        (9, c1, {}, "discarded"),
        (10, c1, {"decision": "accept", "correct_label": Y}, "submitted"),
        (11, c1, {"decision": "accept"}, "draft"),
        (12, c2, {"decision": "accept"}, "submitted"),
        (13, c2, {"decision": "reject", "reject_reason": ["other"]}, "submitted"),
    ]
    assert len(plan) == 20
    by_text = {rec.fields["text"]: rec for rec in ds.records(with_responses=True)}
    touched = {}
    for i, uid, values, status in plan:
        rec = by_text[rows[i]["text"]]
        for q, v in (values or {"decision": None}).items():
            rec.responses.add(rg.Response(q, v, user_id=uid, status=status))
        touched[rec.id] = rec
    ds.records.log(list(touched.values()))
    prefs = client.datasets(name=ds.name.replace("-sft", "-prefs"), workspace=ws)
    pairs = {rec.fields["prompt"]: rec for rec in prefs.records(with_responses=True)}
    fixed, dropped = pairs[rows[20]["text"]], pairs[rows[21]["text"]]  # one corrected, one rejected pair
    fixed.responses.add(rg.Response("decision", "accept", user_id=c1, status="submitted"))
    fixed.responses.add(rg.Response("corrected", "Card_Arrival", user_id=c1, status="submitted"))
    dropped.responses.add(rg.Response("decision", "reject", user_id=c2, status="submitted"))
    prefs.records.log([fixed, dropped])
    return {"X": X, "Y": Y, "users": users}


def test_pull_keeps_every_response(world, reviewed):
    run = world["run"]
    r = _cli("pull", run, "--data-dir", world["server"].data_dir)
    assert r.exit_code == 0, r.output
    everything = list(load_dataset_dir(run / "review" / "reviews"))
    assert sum(x["format"] == "prefs" for x in everything) == 2
    rev = [x for x in everything if x["format"] == "sft"]
    assert len(rev) == 21
    assert {u: sum(x["user"] == u for x in rev) for u in ("curator1", "curator2", world["server"].username)} == \
        {"curator1": 12, "curator2": 8, world["server"].username: 1}
    status = {(x["user"], x["id"]): x["status"] for x in rev}
    rows = world["rows"]
    assert status[("curator1", rows[9]["id"])] == "discarded" and status[("curator2", rows[5]["id"])] == "draft"
    ui = next(x for x in rev if x["user"] == world["server"].username)
    assert (ui["id"], ui["status"], ui["decision"], ui["label_answer"], ui["rating"]) == \
        (rows[UI_ROW]["id"], "submitted", "accept", UI_LABEL, 4)
    m = json.loads((run / "review" / "manifest.json").read_text())
    # reviewed = records with a submitted response: rows 0-8, 10, 12, 13 and the UI row (drafts/discards don't count)
    assert (m["pushed"], m["reviewed"]) == (100, 13)


# ---------------------------------------------------------------- export

APPROVED_ONE = {0, 1, 2, 4, 5, 7, 10, 12, UI_ROW}
REJECTED_ONE = {3, 6, 8, 13}  # 6: accepted with an invalid correction


def test_export_has_exactly_the_approved_rows_with_corrections(world, reviewed):
    run, rows = world["run"], world["rows"]
    r = _cli("export", run)
    assert r.exit_code == 0, r.output
    approved = {x["id"]: x for x in load_dataset_dir(run / "review" / "export" / "approved")}
    rejected = {x["id"]: x for x in load_dataset_dir(run / "review" / "export" / "rejected")}
    pos = {row["id"]: i for i, row in enumerate(rows)}
    assert {pos[i] for i in approved} == APPROVED_ONE
    assert {pos[i] for i in rejected} == REJECTED_ONE
    want = {1: reviewed["X"], 10: reviewed["Y"], UI_ROW: UI_LABEL}
    for rid, x in approved.items():
        i = pos[rid]
        label = want.get(i, rows[i]["label"])
        assert x["label"] == label and x["completion"] == [{"role": "assistant", "content": label}], i
        assert x["corrected"] == (i in want) and x["original_completion"] == rows[i]["label"]
        assert x["prompt"] == rows[i]["prompt"] and x["text"] == rows[i]["text"]
    a2 = approved[rows[2]["id"]]
    assert (a2["reviewers"], a2["accepts"], a2["agreement"]) == (2, 1, 0.5)
    assert sorted(approved[rows[1]["id"]]["reviewed_by"]) == ["curator1", "curator2"]
    r6 = rejected[rows[6]["id"]]
    assert r6["reason"] == "invalid_correction" and "not_a_label" in r6["detail"]
    assert sorted(rejected[rows[3]["id"]]["reasons"]) == ["off_topic", "unnatural"]
    assert rejected[rows[3]["id"]]["reasons"][0] == "off_topic"  # most frequent first
    m = json.loads((run / "review" / "manifest.json").read_text())
    assert (m["approved"], m["rejected"]) == (9, 4)
    from distilforge.sources import training_source

    assert training_source(run)[0] == "review_export"  # train consumes the approved rows from now on
    ex = json.loads((run / "review" / "export" / "manifest.json").read_text())
    assert ex["agreement"]["method"] == "cohen" and ex["agreement"]["kappa"] == pytest.approx(1 / 6, abs=1e-4)
    prefs = list(load_dataset_dir(run / "review" / "export" / "prefs_approved"))
    assert len(prefs) == 1 and prefs[0]["source_id"] == rows[20]["id"]
    assert prefs[0]["chosen"] == [{"role": "assistant", "content": "card_arrival"}]  # normalized to the label set
    bad = _cli("export", run, "--policy", "loudest")
    assert bad.exit_code != 0 and "unknown policy 'loudest'" in bad.output


def test_export_policies(world, reviewed):
    rows, spec = world["rows"], world["spec"]
    rev = list(load_dataset_dir(world["run"] / "review" / "reviews"))
    pos = {row["id"]: i for i, row in enumerate(rows)}

    def split(policy, k=1):
        res = export_rows(spec, "sft", rows, rev, policy, k)
        return {pos[x["id"]] for x in res["approved"]}, {pos[x["id"]] for x in res["rejected"]}, res["counts"]

    assert split("one")[:2] == (APPROVED_ONE, REJECTED_ONE)
    for policy in ("majority", "unanimous"):  # rows 2 and 4 split 1-1: no majority, not unanimous
        app, rej, counts = split(policy)
        assert app == APPROVED_ONE - {2, 4} and rej == REJECTED_ONE | {2, 4}, policy
        assert counts["undecided"] == N - 13
    app, rej, counts = split("one", 2)  # only rows 0-4 have two submitted decisions
    assert (app, rej, counts["undecided"]) == ({0, 1, 2, 4}, {3}, N - 5)


def test_review_analysis_hot_spots_and_judge_vs_human(world, reviewed):
    from labeling.blindspots import review_section

    res = review_section(world["run"])
    assert res["by_status"] == {"submitted": 18, "draft": 2, "discarded": 1} and res["reviewers"] == 3
    hot = res["hot_spots"]
    assert hot["judgements"] == 18 and hot["overall_reject_rate"] == pytest.approx(6 / 18, abs=1e-3)
    by_strategy = {t["strategy"]: t for t in hot["by_strategy"]}
    evolve = by_strategy["evolve"]
    assert evolve["hot"] and (evolve["reviewed"], evolve["rejected"]) == (8, 6)  # rows 2, 3, 4 twice; 8, 13 once
    assert by_strategy["evolve"]["reasons"]["off_topic"] == 2
    assert not by_strategy["attributes"]["hot"] and by_strategy["attributes"]["rejected"] == 0
    assert hot["by_strategy"][0]["strategy"] == "evolve"
    # judge (rows 0-8 only) vs each submitted decision: A-A 9, A-R 2, R-R 3, R-A 0 → po 12/14,
    # pe (11·9 + 3·5)/14², kappa = (168 - 114) / (196 - 114) = 54/82
    dec = res["judge_vs_human"]["decision"]
    assert dec["pairs"] == 14 and dec["confusion"] == {"accept": {"accept": 9, "reject": 2}, "reject": {"reject": 3}}
    assert dec["kappa"] == pytest.approx(54 / 82, abs=1e-4) and dec["agreement"] == pytest.approx(12 / 14, abs=1e-4)
    # label: 12 accepting responses; corrections on rows 1 (x2), 6, 10 and the UI row disagree with the teacher
    lab = res["judge_vs_human"]["label"]
    assert lab["pairs"] == 12 and lab["agreement"] == pytest.approx(7 / 12, abs=1e-4)
    assert res["judge_vs_human"]["agent"] == ["qwen2.5-coder-1.5b"]


# ---------------------------------------------------------------- crash

def test_kill_server_mid_push_then_push_again(world, reviewed):
    """SIGKILL the whole server (supervisor, API, worker, redis) after 30 of 100 records of a push
    that updates metadata; restart; push again: 100 records, no duplicates, every response kept."""
    run, server, rows = world["run"], world["server"], world["rows"]
    before = sorted((x["record_id"], x["user_id"], x["status"], x["values"])
                    for x in load_dataset_dir(run / "review" / "reviews"))
    gap_labels = {"pin_blocked"}  # what a blindspots run would mark: cluster ids + gap flags per row
    where = {"rows": {r["id"]: {"cluster": i % 7, "gap": r["label"] in gap_labels} for i, r in enumerate(rows)}}
    (run / "blindspots").mkdir(exist_ok=True)
    (run / "blindspots" / "row_clusters.json").write_text(json.dumps(where))

    def kill(done, total):
        if done == 30:
            pid = control.read_state(server.data_dir)["pid"]
            os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while control.read_state(server.data_dir) and time.monotonic() < deadline:
                time.sleep(0.2)

    with pytest.raises(ReviewError, match="stopped after 30/100") as exc:
        push_run(run, world["spec"], data_dir=server.data_dir, batch_size=10, on_batch=kill, progress=False)
    assert "\n" not in str(exc.value) and "rerun push" in str(exc.value)
    info = control.start(server.data_dir, port=server.port)
    assert info["healthy"]
    report = push_run(run, world["spec"], data_dir=server.data_dir, batch_size=10, progress=False)
    assert {k: v for k, v in report["sft"].items() if k not in ("dataset", "created_dataset")} == {
                             "records": 100, "created": 0, "updated": 100, "removed_stale": 0,
                             "kept_stale_with_responses": 0, "in_dataset": 100}
    assert (report["prefs"]["records"], report["prefs"]["created"], report["prefs"]["in_dataset"]) == (5, 0, 5)
    ds = _dataset(world)
    records = list(ds.records())
    assert len(records) == N and len({r.id for r in records}) == N
    gaps = {r.fields["text"] for r in records if r.metadata.get("coverage_gap") == "yes"}
    assert gaps == {r["text"] for r in rows if r["label"] in gap_labels}
    assert all("cluster" in r.metadata for r in records)
    r = _cli("pull", run, "--data-dir", server.data_dir)
    assert r.exit_code == 0, r.output
    after = sorted((x["record_id"], x["user_id"], x["status"], x["values"])
                   for x in load_dataset_dir(run / "review" / "reviews"))
    assert after == before and len(after) == 23  # 21 on the rows, 2 on the preference pairs


def test_row_clusters_flag_rows_near_gap_clusters():
    """blindspots → Argilla metadata: each synthetic row gets its nearest held-out cluster and gap flag."""
    import numpy as np

    from heldout.coverage import HeldoutClusters
    from labeling.blindspots import row_clusters

    cent = np.eye(3, dtype=np.float32)
    hc = HeldoutClusters(vectors=cent, row_ids=["h0", "h1", "h2"], labels=["a", "b", "c"],
                         assign=np.arange(3), centroids=cent)
    gaps = [{"cluster": 0, "gap": False}, {"cluster": 1, "gap": True}, {"cluster": 2, "gap": False}]
    vecs = np.array([[0.9, 0.1, 0], [0.1, 0.8, 0.1], [0, 0.2, 0.9]], dtype=np.float32)
    got = row_clusters(hc, gaps, ["s0", "s1", "s2"], vecs)
    assert got == {"gap_clusters": [1], "rows": {"s0": {"cluster": 0, "gap": False}, "s1": {"cluster": 1, "gap": True},
                                                 "s2": {"cluster": 2, "gap": False}}}
