"""The review round trip for the other task types, on the real embedded Argilla server.

tests/test_review.py covers classification in depth (label question, curators, policies, the UI).
Here an extraction run and an instruction run each go push → responses → pull → export, and the
parts that differ by type are checked: no label question, the teacher's answer as the field a
curator reads, a typed correction becoming the training completion (extraction: schema-checked and
canonical; a correction that breaks the schema is refused with its reason, never trained on).
The rows are a handful of hand-written messages: the thing under test is the review path, not data.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest

rg = pytest.importorskip("argilla")

try:
    from tests.conftest_argilla import shared_server, stop_shared_server
except ImportError:
    from conftest_argilla import shared_server, stop_shared_server

from distilforge.manifest import Stage, load_dataset_dir
from distilforge.runctx import prepare
from labeling.client import connect
from labeling.export import export_run
from labeling.pull import pull_run
from labeling.push import push_run

REPO = Path(__file__).resolve().parents[1]
EXTRACTION = REPO / "examples" / "extraction" / "task.yaml"
INSTRUCTION = REPO / "examples" / "instruction" / "task.yaml"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield shared_server(tmp_path_factory)
    stop_shared_server()


def _curated(run: Path, task: Path, items: list[tuple[str, str]]):
    spec = prepare(run, task, create=True)
    rows = [{"id": f"g-{i:016x}", "label": "", "text": text, "prompt": spec.student_prompt(text),
             "completion": [{"role": "assistant", "content": answer}], "strategy": "attributes", "attributes": "{}",
             "teacher_model": spec.teacher.model, "prompt_tokens": 80, "completion_tokens": 30, "latency_s": 1.0,
             "status": "ok", "error": "", "dedup_cluster_size": 1} for i, (text, answer) in enumerate(items)]
    st = Stage(run / "curate", "curate", {}, {}).begin()
    st.save("curated", datasets.Dataset.from_list(rows))
    st.finish()
    return spec, rows


def _answer(server, run: Path, plan: dict[str, dict]) -> None:
    """One curator (the owner) submits `plan[text]` on each record, through the SDK."""
    state = json.loads((run / "review" / "push.json").read_text())
    client = connect(data_dir=server.data_dir)
    ds = client.datasets(name=state["datasets"]["sft"]["name"], workspace=state["workspace"])
    me = client.me.id
    recs = [r for r in ds.records(with_responses=True) if r.fields["text"] in plan]
    assert len(recs) == len(plan)
    for rec in recs:
        for q, v in plan[rec.fields["text"]].items():
            rec.responses.add(rg.Response(q, v, user_id=me, status="submitted"))
    ds.records.log(recs)


def _round_trip(server, run: Path, spec, plan):
    os.environ.pop("ARGILLA_API_URL", None)
    os.environ.pop("ARGILLA_API_KEY", None)
    pushed = push_run(run, spec, data_dir=server.data_dir, progress=False)
    state = json.loads((run / "review" / "push.json").read_text())
    ds = connect(data_dir=server.data_dir).datasets(name=state["datasets"]["sft"]["name"], workspace=state["workspace"])
    settings = {"questions": [q.name for q in ds.settings.questions], "fields": [f.name for f in ds.settings.fields],
                "guidelines": ds.settings.guidelines}
    _answer(server, run, plan)
    counts = pull_run(run, spec, data_dir=server.data_dir)
    m = export_run(run, spec)
    approved = {r["text"]: r for r in load_dataset_dir(run / "review" / "export" / "approved")}
    rejected = {r["text"]: r for r in load_dataset_dir(run / "review" / "export" / "rejected")}
    return pushed, settings, counts, m, approved, rejected


def test_extraction_review_corrections_are_schema_checked(server, tmp_path):
    ok = '{"amount":23.5,"currency":"EUR","card_last4":"4821","merchant":"Lidl","transaction_type":"card_payment"}'
    wrong = '{"amount":10,"currency":"GBP","card_last4":null,"merchant":null,"transaction_type":"cash_withdrawal"}'
    items = [("my card ending 4821 was charged 23.50 EUR at Lidl, twice", ok),
             ("took out 100 pounds at an ATM in Leeds and paid a fee", wrong),  # the teacher got the amount wrong
             ("sent 250 dollars to Tom on Monday, he has nothing", wrong),
             ("what is the weather like", wrong)]
    spec, rows = _curated(tmp_path / "extract", EXTRACTION, items)
    fixed = '{"transaction_type": "cash_withdrawal", "amount": 100, "currency": "GBP"}'  # any key order, nulls left out
    plan = {items[0][0]: {"decision": "accept"},
            items[1][0]: {"decision": "accept", "corrected": fixed},
            items[2][0]: {"decision": "accept", "corrected": '{"amount": 250, "transaction_type": "wire"}'},
            items[3][0]: {"decision": "reject", "reject_reason": ["off_topic"]}}
    pushed, settings, counts, m, approved, rejected = _round_trip(server, tmp_path / "extract", spec, plan)
    assert pushed["sft"]["records"] == 4
    questions, guide = settings["questions"], settings["guidelines"]
    assert "correct_label" not in questions and {"decision", "corrected", "reject_reason"} <= set(questions)
    assert settings["fields"] == ["text", "completion"]
    assert counts["sft"]["responses"] == 4
    assert "a key you leave out means null" in guide and "card_last4" in guide  # the schema, from the spec
    assert (m["approved"], m.get("corrected"), m["rejected"]) == (2, 1, 2), m
    assert approved[items[0][0]]["completion"][0]["content"] == ok and not approved[items[0][0]]["corrected"]
    got = approved[items[1][0]]
    assert got["corrected"] and got["original_completion"] == wrong
    # canonical: schema key order, the required keys kept as null
    assert json.loads(got["completion"][0]["content"]) == {"amount": 100, "currency": "GBP", "card_last4": None,
                                                           "merchant": None, "transaction_type": "cash_withdrawal"}
    assert list(json.loads(got["completion"][0]["content"])) == ["amount", "currency", "card_last4", "merchant",
                                                                 "transaction_type"]
    bad = rejected[items[2][0]]
    assert bad["reason"] == "invalid_correction" and "transaction_type" in bad["detail"]
    assert rejected[items[3][0]]["reason"] == "rejected_by_review" and rejected[items[3][0]]["reasons"] == ["off_topic"]


def test_instruction_review_corrected_reply_is_the_completion(server, tmp_path):
    items = [("My card payment was declined at the shop, why?",
              "Sorry about that. Card payments can be declined for a few reasons; check your balance and that the "
              "card is not frozen in the app."),
             ("I want a refund from a merchant, it has not shown up",
              "Please send me your full card number and PIN so I can check."),  # a reply that must not be trained on
             ("How do I top up?", "Open the app, tap Top up and choose a card or a bank transfer.")]
    spec, rows = _curated(tmp_path / "reply", INSTRUCTION, items)
    better = ("Refunds can take up to 5 working days to appear. If it has been longer, share the merchant's refund "
              "confirmation in the app and we will chase it. Never share your PIN.")
    plan = {items[0][0]: {"decision": "accept", "rating": 5},
            items[1][0]: {"decision": "accept", "corrected": better},
            items[2][0]: {"decision": "reject", "reject_reason": ["unnatural"]}}
    pushed, settings, counts, m, approved, rejected = _round_trip(server, tmp_path / "reply", spec, plan)
    assert pushed["sft"]["records"] == 3 and "correct_label" not in settings["questions"]
    assert (m["approved"], m["corrected"], m["rejected"]) == (2, 1, 1)
    got = approved[items[1][0]]
    assert got["corrected"] and got["completion"][0]["content"] == better
    assert "PIN" in got["original_completion"] and got["reviewed_by"]
    assert approved[items[0][0]]["completion"][0]["content"] == items[0][1]
    assert rejected[items[2][0]]["reasons"] == ["unnatural"]
    guide = settings["guidelines"]
    assert "style" in guide.lower() and "a key you leave out" not in guide
