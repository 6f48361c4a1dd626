"""The embedded Argilla 2.8 server on SQLite, driven by the real `argilla` SDK and REST API.

Every search answer below comes from labeling.server.engine.SQLiteSearchEngine reading Argilla's
tables (plus the FTS5 index). Expected ids are computed from the fixture data by hand-written
rules, not by asking the engine, so a wrong filter/sort/rank fails.
"""
from __future__ import annotations

import os
import stat
import time

import numpy as np
import pytest

argilla = pytest.importorskip("argilla")
rg = argilla

try:
    from tests.conftest_argilla import EmbeddedServer, shared_server, stop_shared_server
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    from conftest_argilla import EmbeddedServer, shared_server, stop_shared_server

from labeling.client import connect, resolve_connection

N = 30
DIM = 8
SRC = ["web", "book", "chat"]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> EmbeddedServer:
    yield shared_server(tmp_path_factory)
    stop_shared_server()


def _text(i: int) -> str:
    special = {3: "zebra zebra filler one two", 7: "zebra filler one two three",
               5: "word5 filler one two three", 10: "word50 filler one two three"}
    return special.get(i, f"plain record number{i} here")


def _vectors() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(N, DIM))


@pytest.fixture(scope="module")
def env(server: EmbeddedServer):
    """Dataset with 30 records, suggestions, vectors, metadata; responses from three users."""
    client = connect(data_dir=server.data_dir)
    settings = rg.Settings(
        fields=[rg.TextField(name="text"), rg.TextField(name="title", required=False)],
        questions=[rg.RatingQuestion(name="rating", values=[1, 2, 3, 4, 5]),
                   rg.LabelQuestion(name="label", labels=["a", "b", "c"]),
                   rg.TextQuestion(name="note", required=False)],
        metadata=[rg.TermsMetadataProperty(name="src"), rg.FloatMetadataProperty(name="score"),
                  rg.TermsMetadataProperty(name="tags"), rg.TermsMetadataProperty(name="year")],
        vectors=[rg.VectorField(name="emb", dimensions=DIM)],
    )
    dataset = rg.Dataset(name="engine-test", settings=settings, client=client).create()
    vectors = _vectors()
    records = []
    for i in range(N):
        metadata = {"src": SRC[i % 3], "tags": ["x", "y"] if i % 4 == 0 else (["y"] if i % 4 == 1 else "z"),
                    "year": 2020 + i % 3}
        if i != 29:
            metadata["score"] = i / 10
        records.append(rg.Record(
            id=f"r{i}", fields={"text": _text(i), "title": "zebra title" if i == 12 else f"title {i}"},
            metadata=metadata, vectors={"emb": vectors[i].tolist()},
            suggestions=[rg.Suggestion("label", "abc"[i % 3], score=i / 30, agent="m1" if i % 2 == 0 else "m2",
                                       type="model" if i < 20 else "human"),
                         rg.Suggestion("rating", i % 5 + 1)]))
    dataset.records.log(records)

    owner = client.me
    by_id = {r.id: r for r in dataset.records(with_responses=True)}
    answers = {"r0": ({"rating": 5, "label": "a"}, "submitted"), "r1": ({"rating": 2, "label": "b"}, "submitted"),
               "r2": ({"rating": 3}, "draft"), "r4": ({}, "discarded")}
    updated = []
    for rid, (values, status) in answers.items():
        record = by_id[rid]
        if values:
            for question, value in values.items():
                record.responses.add(rg.Response(question, value, user_id=owner.id, status=status))
        else:
            record.responses.add(rg.Response("rating", None, user_id=owner.id, status=status))
        updated.append(record)
    dataset.records.log(updated)

    annotators = {}
    with server.http() as http:
        workspace_id = str(dataset.workspace.id)
        for name in ("ann1", "ann2"):
            user = http.post("/users", json={"username": name, "first_name": name, "password": f"{name}-pass-123",
                                             "role": "annotator"}).raise_for_status().json()
            http.post(f"/workspaces/{workspace_id}/users", json={"user_id": user["id"]}).raise_for_status()
            token = http.post("/token", data={"username": name, "password": f"{name}-pass-123"})
            annotators[name] = {"id": user["id"], "token": token.raise_for_status().json()["access_token"]}
    server_ids = {rid: str(r._server_id) for rid, r in by_id.items()}
    with server.http(token=annotators["ann1"]["token"]) as ann1:
        for rid, values, status in (("r0", {"rating": 1, "label": "a"}, "submitted"),
                                    ("r5", {"rating": 4, "label": "b"}, "draft")):
            body = {"values": {k: {"value": v} for k, v in values.items()}, "status": status}
            ann1.post(f"/records/{server_ids[rid]}/responses", json=body).raise_for_status()
    return {"client": client, "dataset": dataset, "ids": server_ids, "vectors": vectors,
            "annotators": annotators, "owner": owner}


def _sdk_ids(dataset, query=None, **kwargs):
    return [r.id for r in dataset.records(query=query, **kwargs)]


def _rest_ids(server, env, body, token=None, me=False, limit=100):
    """POST .../records/search; returns external ids in the engine's order."""
    path = ("/me" if me else "") + f"/datasets/{env['dataset'].id}/records/search"
    with server.http(token=token) as http:
        items = http.post(path, json=body, params={"limit": limit}).raise_for_status().json()["items"]
    return [item["record"]["external_id"] for item in items]


def _cond(field, op, value):
    return rg.Query(filter=rg.Filter((field, op, value)))


def test_server_credentials_are_generated_and_private(server):
    creds = server.new_credentials
    assert creds and creds["api_key"] != "argilla.apikey" and creds["password"] != "12345678"
    mode = stat.S_IMODE(os.stat(server.data_dir / "credentials.json").st_mode)
    assert mode == 0o600
    assert resolve_connection(data_dir=server.data_dir) == (server.url, server.api_key)
    with server.http() as http:
        info = http.get("/status").raise_for_status().json()
    assert info["search_engine"]["distribution"] == "distilforge-sqlite"


def test_review_cli_status(server, tmp_path):
    from typer.testing import CliRunner

    from labeling.cli import review_app

    runner = CliRunner()
    result = runner.invoke(review_app, ["status", "--data-dir", str(server.data_dir)])
    assert result.exit_code == 0, result.output
    assert server.url in result.output and "healthy" in result.output
    assert server.api_key not in result.output and server.password not in result.output
    result = runner.invoke(review_app, ["status", "--data-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 3 and "not running" in result.output


def test_text_search_ranks_with_bm25_and_tokens(env):
    dataset = env["dataset"]
    ranked = _sdk_ids(dataset, "zebra")
    assert sorted(ranked) == ["r12", "r3", "r7"]  # r12 has it only in `title`
    assert ranked.index("r3") < ranked.index("r7")  # same length, twice ranks above once
    assert _sdk_ids(dataset, "word5") == ["r5"]  # token match: never word50
    assert _sdk_ids(dataset, "word50") == ["r10"]
    assert _sdk_ids(dataset, "zebra -three") == ["r3", "r12"]
    assert _sdk_ids(dataset, "nothingmatches") == []


def test_text_search_per_field(server, env):
    body = {"query": {"text": {"q": "zebra", "field": "text"}}}
    assert _rest_ids(server, env, body) == ["r3", "r7"]
    body = {"query": {"text": {"q": "zebra", "field": "title"}}}
    assert _rest_ids(server, env, body) == ["r12"]


def test_metadata_filters(env):
    dataset = env["dataset"]
    assert _sdk_ids(dataset, _cond("metadata.src", "==", "web")) == [f"r{i}" for i in range(0, N, 3)]
    # lists count per element; numbers stored in JSON match their string spelling
    assert _sdk_ids(dataset, _cond("metadata.tags", "==", "x")) == [f"r{i}" for i in range(0, N, 4)]
    assert _sdk_ids(dataset, _cond("metadata.year", "in", ["2021"])) == [f"r{i}" for i in range(1, N, 3)]
    in_range = rg.Query(filter=rg.Filter([("metadata.score", ">=", 1.0), ("metadata.score", "<=", 2.0)]))
    assert _sdk_ids(dataset, in_range) == [f"r{i}" for i in range(10, 21)]


def test_record_filters(env):
    dataset = env["dataset"]
    assert _sdk_ids(dataset, _cond("status", "==", "completed")) == ["r0", "r1"]
    assert _sdk_ids(dataset, _cond("id", "in", ["r8", "r9"])) == ["r8", "r9"]
    assert _sdk_ids(dataset, _cond("_server_id", "==", env["ids"]["r11"])) == ["r11"]


def test_suggestion_filters(env):
    dataset = env["dataset"]
    assert _sdk_ids(dataset, _cond("label", "==", "b")) == [f"r{i}" for i in range(1, N, 3)]
    assert _sdk_ids(dataset, _cond("label.agent", "==", "m2")) == [f"r{i}" for i in range(1, N, 2)]
    assert _sdk_ids(dataset, _cond("label.type", "==", "human")) == [f"r{i}" for i in range(20, N)]
    expect = [f"r{i}" for i in range(N) if i / 30 >= 0.8]
    assert _sdk_ids(dataset, _cond("label.score", ">=", 0.8)) == expect
    assert _sdk_ids(dataset, _cond("rating", "in", [5])) == [f"r{i}" for i in range(4, N, 5)]


def test_response_filters_without_user(env):
    dataset = env["dataset"]
    assert _sdk_ids(dataset, _cond("response.status", "==", "submitted")) == ["r0", "r1"]
    assert _sdk_ids(dataset, _cond("response.status", "==", "draft")) == ["r2", "r5"]
    assert _sdk_ids(dataset, _cond("response.status", "==", "discarded")) == ["r4"]
    answered = {0, 1, 2, 4, 5}
    assert _sdk_ids(dataset, _cond("response.status", "==", "pending")) == [
        f"r{i}" for i in range(N) if i not in answered]
    assert _sdk_ids(dataset, _cond("rating.response", ">=", 4)) == ["r0", "r5"]
    assert _sdk_ids(dataset, _cond("label.response", "==", "b")) == ["r1", "r5"]


def test_response_filters_per_user(server, env):
    token = env["annotators"]["ann1"]["token"]

    def me(values):
        body = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"},
                                     "values": values}]},
                "sort": [{"scope": {"entity": "record", "property": "inserted_at"}, "order": "asc"}]}
        return _rest_ids(server, env, body, token=token, me=True)

    assert me(["pending"]) == [f"r{i}" for i in range(N) if i not in (0, 5)]
    assert me(["submitted"]) == ["r0"]
    assert me(["draft", "submitted"]) == ["r0", "r5"]
    rating = {"filters": {"and": [{"type": "range", "scope": {"entity": "response", "question": "rating"}, "ge": 4}]}}
    assert _rest_ids(server, env, rating, token=token, me=True) == ["r5"]  # ann1's own ratings only


def test_sorts_with_nulls_last(server, env):
    def sort(scope, order):
        return _rest_ids(server, env, {"sort": [{"scope": scope, "order": order}]})

    metadata = {"entity": "metadata", "metadata_property": "score"}
    assert sort(metadata, "desc") == [f"r{i}" for i in range(28, -1, -1)] + ["r29"]
    assert sort(metadata, "asc") == [f"r{i}" for i in range(29)] + ["r29"]
    rating = {"entity": "response", "question": "rating"}  # avg over users: r5 4, r0 3, r2 3, r1 2
    assert sort(rating, "desc")[:4] == ["r5", "r0", "r2", "r1"]
    assert sort(rating, "asc")[:4] == ["r1", "r0", "r2", "r5"]
    with server.http() as http:
        body = {"sort": [{"scope": {"entity": "record", "property": "inserted_at"}, "order": "desc"}]}
        items = http.post(f"/datasets/{env['dataset'].id}/records/search", json=body,
                          params={"limit": 50}).raise_for_status().json()["items"]
    stamps = [item["record"]["inserted_at"] for item in items]
    assert len(stamps) == N and stamps == sorted(stamps, reverse=True)


def test_offset_limit_and_total(server, env):
    body = {"sort": [{"scope": {"entity": "metadata", "metadata_property": "score"}, "order": "asc"}]}
    with server.http() as http:
        page = http.post(f"/datasets/{env['dataset'].id}/records/search", json=body,
                         params={"limit": 5, "offset": 10}).raise_for_status().json()
    assert page["total"] == N
    assert [item["record"]["external_id"] for item in page["items"]] == [f"r{i}" for i in range(10, 15)]


def test_per_user_random_order_is_stable_and_differs(server, env):
    orders = {}
    for name, user in env["annotators"].items():
        first = _rest_ids(server, env, {}, token=user["token"], me=True)
        assert first == _rest_ids(server, env, {}, token=user["token"], me=True)
        assert sorted(first) == sorted(f"r{i}" for i in range(N))
        orders[name] = first
    assert orders["ann1"] != orders["ann2"]
    assert orders["ann1"] != [f"r{i}" for i in range(N)]


def test_metadata_metrics(server, env):
    with server.http() as http:
        props = http.get(f"/me/datasets/{env['dataset'].id}/metadata-properties").raise_for_status().json()["items"]
        metrics = {p["name"]: http.get(f"/metadata-properties/{p['id']}/metrics").raise_for_status().json()
                   for p in props}
    assert metrics["src"]["total"] == N
    assert {v["term"]: v["count"] for v in metrics["src"]["values"]} == {"web": 10, "book": 10, "chat": 10}
    tags = {v["term"]: v["count"] for v in metrics["tags"]["values"]}
    assert tags == {"y": 16, "z": 14, "x": 8} and metrics["tags"]["total"] == 8 * 2 + 8 + 14
    assert [v["term"] for v in metrics["tags"]["values"]] == ["y", "z", "x"]
    assert {v["term"] for v in metrics["year"]["values"]} == {"2020", "2021", "2022"}
    assert metrics["score"]["min"] == 0.0 and metrics["score"]["max"] == pytest.approx(2.8)


def test_progress(server, env):
    with server.http() as http:
        progress = http.get(f"/datasets/{env['dataset'].id}/progress").raise_for_status().json()
        mine = http.get(f"/me/datasets/{env['dataset'].id}/metrics").raise_for_status().json()
    assert (progress["total"], progress["completed"], progress["pending"]) == (N, 2, N - 2)
    assert mine["responses"] == {"total": N, "submitted": 2, "discarded": 1, "draft": 1, "pending": N - 4}


def _reference(vectors, query, candidates, k, least=False):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = unit[candidates] @ (query / np.linalg.norm(query))
    cos = -cos if least else cos
    order = np.argsort(-cos, kind="stable")[:k]
    return [f"r{candidates[i]}" for i in order], [(1 + cos[i]) / 2 for i in order]


def test_similarity_search_matches_numpy(env):
    dataset, vectors = env["dataset"], env["vectors"]
    query = np.random.default_rng(1).normal(size=DIM)
    got = list(dataset.records(query=rg.Query(similar=rg.Similar("emb", query.tolist())), limit=7))
    ids, scores = _reference(vectors, query, list(range(N)), 7)
    assert [r.id for r, _ in got] == ids
    assert [s for _, s in got] == pytest.approx(scores, abs=1e-5)

    least = dataset.records(query=rg.Query(similar=rg.Similar("emb", query.tolist(), most_similar=False)), limit=5)
    assert [r.id for r, _ in least] == _reference(vectors, query, list(range(N)), 5, least=True)[0]

    anchor = next(iter(dataset.records(query=_cond("id", "==", "r3"))))
    similar = rg.Query(similar=rg.Similar("emb", anchor), filter=rg.Filter(("metadata.src", "==", "web")))
    web = [i for i in range(0, N, 3) if i != 3]
    assert [r.id for r, _ in dataset.records(query=similar, limit=4)] == _reference(vectors, vectors[3], web, 4)[0]


def test_similarity_threshold_and_text(server, env):
    vectors = env["vectors"]
    query = vectors[0].tolist()
    body = {"query": {"vector": {"name": "emb", "value": query}, "text": {"q": "plain"}}}
    ids = _rest_ids(server, env, body, limit=5)
    plain = [i for i in range(N) if _text(i).startswith("plain")]
    assert ids == _reference(vectors, vectors[0], plain, 5)[0]


def test_get_record_with_vectors_is_fixed(server, env):
    with server.http() as http:
        response = http.get(f"/records/{env['ids']['r3']}")
    assert response.status_code == 200, response.text
    assert response.json()["vectors"]["emb"] == pytest.approx(env["vectors"][3].tolist())


def test_updates_and_deletes_reach_the_text_index(env):
    dataset = env["dataset"]
    record = next(iter(dataset.records(query=_cond("id", "==", "r9"))))
    record.fields["text"] = "zebra arrives late"
    dataset.records.log([record])
    assert "r9" in _sdk_ids(dataset, "zebra")
    dataset.records.delete([record])
    assert "r9" not in _sdk_ids(dataset, "zebra")
    assert "r9" not in _sdk_ids(dataset, _cond("metadata.src", "==", "web"))


def test_suggestion_and_response_hooks(server, env):
    """update/delete_record_suggestion and delete_record_response: answers follow the SQL rows."""
    dataset, ids = env["dataset"], env["ids"]
    token = env["annotators"]["ann2"]["token"]
    draft = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"},
                                  "values": ["draft"]}]}}
    with server.http(token=token) as ann2:
        body = {"values": {"rating": {"value": 3}}, "status": "draft"}
        response = ann2.post(f"/records/{ids['r25']}/responses", json=body).raise_for_status().json()
        assert _rest_ids(server, env, draft, token=token, me=True) == ["r25"]
        ann2.delete(f"/responses/{response['id']}").raise_for_status()
    assert _rest_ids(server, env, draft, token=token, me=True) == []

    with server.http() as http:
        questions = http.get(f"/datasets/{dataset.id}/questions").raise_for_status().json()["items"]
        label_id = next(q["id"] for q in questions if q["name"] == "label")
        suggestion = http.put(f"/records/{ids['r26']}/suggestions",
                              json={"question_id": label_id, "value": "a", "agent": "fixer", "type": "human"})
        assert _sdk_ids(dataset, _cond("label.agent", "==", "fixer")) == ["r26"]
        http.delete(f"/records/{ids['r26']}/suggestions",
                    params={"ids": suggestion.raise_for_status().json()["id"]}).raise_for_status()
    assert _sdk_ids(dataset, _cond("label.agent", "==", "fixer")) == []


def test_dataset_delete_drops_its_text_index(server, env):
    import sqlite3

    client = env["client"]
    settings = rg.Settings(fields=[rg.TextField(name="text")], questions=[rg.TextQuestion(name="q")])
    scratch = rg.Dataset(name="scratch", settings=settings, client=client).create()
    scratch.records.log([{"text": "ephemeral words"}, {"text": "more ephemeral words"}])
    assert len(_sdk_ids(scratch, "ephemeral")) == 2
    index = server.data_dir / "search-index.db"

    def indexed():
        with sqlite3.connect(index) as conn:
            return {row[0] for row in conn.execute("SELECT dataset_id FROM indexes")}

    assert scratch.id.hex in indexed()
    scratch.delete()
    assert scratch.id.hex not in indexed() and env["dataset"].id.hex in indexed()


def test_restart_keeps_everything(server, env):
    server.restart()
    dataset = connect(data_dir=server.data_dir).datasets(name="engine-test")
    assert len(list(dataset.records())) == N - 1
    ranked = _sdk_ids(dataset, "zebra")
    assert ranked.index("r3") < ranked.index("r7")
    assert _sdk_ids(dataset, _cond("response.status", "==", "submitted")) == ["r0", "r1"]
    responses = {r.id: r.responses for r in dataset.records(with_responses=True) if r.id in ("r0", "r5")}
    assert len(list(responses["r0"])) == 4  # owner rating+label, ann1 rating+label


def test_worker_runs_distribution_job(env):
    """Changing min_submitted enqueues an rq job that recomputes statuses through our engine."""
    dataset = env["dataset"]
    dataset.settings.distribution = rg.TaskDistribution(min_submitted=2)
    dataset.update()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _sdk_ids(dataset, _cond("status", "==", "completed")) == ["r0"]:  # only r0 has 2 submissions
            return
        time.sleep(1)
    pytest.fail("the rq worker did not update record statuses")


def test_hosted_argilla_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ARGILLA_API_URL", "https://argilla.example.org/")
    monkeypatch.setenv("ARGILLA_API_KEY", "hosted-key")
    assert resolve_connection(data_dir=tmp_path) == ("https://argilla.example.org", "hosted-key")
    monkeypatch.delenv("ARGILLA_API_KEY")
    from labeling.client import ArgillaConnectionError

    with pytest.raises(ArgillaConnectionError, match="ARGILLA_API_KEY"):
        resolve_connection(data_dir=tmp_path)
    monkeypatch.delenv("ARGILLA_API_URL")
    with pytest.raises(ArgillaConnectionError, match="review serve"):
        resolve_connection(data_dir=tmp_path)
