"""Teacher agreement (curation/agreement.py): the teacher labels each generated input blind, and
`curate` drops (or relabels) the rows it disagrees with.

The end-to-end test uses the real 0.5B teacher behind the real fault proxy: the proxy replaces the
teacher's two generated messages with texts written for this test — a clear "my card has not
arrived" message for the card_arrival request (a correct row) and another one for the
exchange_rate request (a planted mislabelled row). The blind classification requests pass through
untouched, so the teacher's verdicts are its own. The other tests build rows by hand (no teacher).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import datasets
import pytest
from rich.console import Console

from conftest import cli
from curation import agreement
from curation.curate import curate, render_funnel
from curation.embed import Embedder
from distilforge.spec import parse_spec
from faultproxy import FaultProxy

KEY_ENV = "DF_TEST_TEACHER_KEY"
KEY = "sk-agreement-test-0000"
RIGHT = "I ordered a replacement card two weeks ago and it still has not come in the post. When will it arrive?"
PLANTED = "My new debit card never showed up in my mailbox, can you tell me where it is?"
LABELS = {"card_arrival": "the customer's new or replacement card has not arrived yet, or they ask when it will come",
          "exchange_rate": "the customer asks what exchange rate is used for a payment or transfer"}


def spec_yaml(tmp: Path, base_url: str, mode: str = "drop") -> Path:
    p = tmp / f"spec-{mode}.yaml"
    labels = "\n".join(f"  - {{name: {k}, description: \"{v}\"}}" for k, v in LABELS.items())
    p.write_text(f"""\
name: agreement
type: classification
instruction: Classify the customer's banking message by its intent.
labels:
{labels}
teacher: {{endpoint: openai, base_url: "{base_url}", model: qwen2.5-coder-0.5b, api_key_env: {KEY_ENV},
          structured_output: llama_cpp, max_tokens: 60, timeout_s: 120}}
generation: {{per_label: 1, shard_size: 1, seed: 5, invalid_retries: 0, teacher_agreement: true}}
curation: {{teacher_disagreement: {mode}}}
heldout: {{source: ../shared/data/banking77/test.csv, label_column: category}}
""")
    return p


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(cache_root=tmp_path_factory.mktemp("emb"), threads=1)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, fast_teacher):
    """One real generate run (2 rows, both texts planted by the proxy, labels asked blind)."""
    tmp = tmp_path_factory.mktemp("agree")
    rules = [{"match": "Your situation: " + LABELS["card_arrival"], "fault": "replace",
              "value": json.dumps({"message": RIGHT})},
             {"match": "Your situation: " + LABELS["exchange_rate"], "fault": "replace",
              "value": json.dumps({"message": PLANTED})}]
    with FaultProxy(fast_teacher["base_url"], rules, expect_key=KEY) as px:
        spec = spec_yaml(tmp, px.base_url)
        run = tmp / "run"
        r = cli("generate", run, "--spec", spec, env={KEY_ENV: KEY})
        assert r.returncode == 0, r.stderr[-3000:]
        log = list(px.log)
    return tmp, run, spec, log, r


def test_generate_asks_the_teacher_blind_and_records_its_label(generated):
    tmp, run, spec, log, r = generated
    ds = datasets.load_from_disk(str(run / "generate" / "rows"))
    by_label = {lab: (t, tl) for lab, t, tl in zip(ds["label"], ds["text"], ds["teacher_label"])}
    assert by_label == {"card_arrival": (RIGHT, "card_arrival"), "exchange_rate": (PLANTED, "card_arrival")}
    assert [e["fault"] for e in log] == ["replace", "replace", None, None]  # 2 generations, 2 blind labels
    m = json.loads((run / "generate" / "manifest.json").read_text())
    assert m["teacher_agreement"]["rows"] == 2 and m["teacher_agreement"]["asked_now"] == 2
    assert m["teacher_agreement"]["disagree"] == 1 and m["teacher_agreement"]["disagreement_rate"] == 0.5
    cache = [json.loads(x) for x in (run / "generate" / agreement.CACHE).read_text().splitlines()]
    assert sorted(c["label"] for c in cache) == ["card_arrival", "card_arrival"]
    assert all(set(c) == {"key", "label"} for c in cache)  # answers only: no text, no key


def test_curate_drops_the_mislabelled_row_with_its_reason(generated):
    tmp, run, spec, log, r = generated
    lock = cli("heldout", "lock", run, "--spec", spec, env={KEY_ENV: KEY})
    assert lock.returncode == 0, lock.stderr[-2000:]
    c = cli("curate", run, env={KEY_ENV: KEY})
    assert c.returncode == 0, c.stderr[-3000:]
    kept = datasets.load_from_disk(str(run / "curate" / "curated"))
    rej = datasets.load_from_disk(str(run / "curate" / "rejected"))
    assert list(zip(kept["label"], kept["text"])) == [("card_arrival", RIGHT)]
    assert list(zip(rej["label"], rej["text"], rej["reason"], rej["detail"])) == \
        [("exchange_rate", PLANTED, "teacher_disagrees", "teacher said card_arrival")]
    m = json.loads((run / "curate" / "manifest.json").read_text())
    ta = m["info"]["teacher_agreement"]
    assert ta["per_label"] == {
        "card_arrival": {"checked": 1, "disagree": 0, "rate": 0.0, "teacher_said": {}},
        "exchange_rate": {"checked": 1, "disagree": 1, "rate": 1.0, "teacher_said": {"card_arrival": 1}}}
    step = next(s for s in m["funnel"] if s["step"] == "teacher_agreement")
    assert step["dropped"] == 1 and step["teacher"] == {"mode": "drop", "checked": 2, "disagree": 1, "rate": 0.5}
    assert "teacher disagreed with 1 of 2 labels (50.0 %, dropped" in " ".join(c.stdout.split())  # rich wraps
    assert m["rejected_by_reason"] == {"teacher_disagrees": 1}


def test_relabel_and_keep_modes_on_the_same_rows(generated, embedder):
    tmp, run, spec, log, r = generated
    raw = datasets.load_from_disk(str(run / "generate" / "rows"))
    base = {k: v for k, v in __import__("yaml").safe_load(spec.read_text()).items()}
    relabel = curate(raw, parse_spec({**base, "curation": {"teacher_disagreement": "relabel"}}), embedder=embedder)
    assert len(relabel.rejected) == 0  # the two texts are different enough not to be duplicates
    got = {t: (lab, comp[0]["content"], frm) for t, lab, comp, frm in
           zip(relabel.kept["text"], relabel.kept["label"], relabel.kept["completion"], relabel.kept["relabelled_from"])}
    assert got == {RIGHT: ("card_arrival", "card_arrival", None), PLANTED: ("card_arrival", "card_arrival", "exchange_rate")}
    assert relabel.info["teacher_agreement"]["relabelled"] == 1
    keep = curate(raw, parse_spec({**base, "curation": {"teacher_disagreement": "keep"}}), embedder=embedder)
    assert sorted(keep.kept["label"]) == ["card_arrival", "exchange_rate"] and len(keep.rejected) == 0
    assert keep.info["teacher_agreement"]["disagree"] == 1  # still reported


# ---------------------------------------------------------------- hand-made rows (no teacher)

def _spec(**curation):
    return parse_spec({"name": "agree-unit", "instruction": "Classify the customer's banking message by its intent.",
                       "labels": [{"name": k, "description": v} for k, v in LABELS.items()],
                       "heldout": {"source": "unused.csv"}, "generation": {"teacher_agreement": True},
                       "curation": {"semantic_dedup": False, **curation}})


def _row(i: int, label: str, text: str, teacher, status: str = "ok") -> dict:
    spec = _spec()
    return {"id": f"r{i}", "label": label, "text": text, "prompt": spec.student_prompt(text),
            "completion": [{"role": "assistant", "content": label}], "status": status,
            "error": "" if status == "ok" else "timeout", "teacher_label": teacher}


UNIT = [
    _row(0, "card_arrival", "Has my new card been posted yet? It has been ten days already.", "card_arrival"),
    _row(1, "card_arrival", "What rate do you use when I pay in yen with my euro account?", "exchange_rate"),
    _row(2, "exchange_rate", "Why did I get fewer dollars than the rate shown on the news website?", "exchange_rate"),
    _row(3, "exchange_rate", "I am still waiting for the card you promised to send me last month.", None),  # old run
    _row(4, "exchange_rate", "Is the conversion rate fixed when I buy or when the payment settles?", "<invalid>"),
    _row(5, "card_arrival", "The courier never delivered my card, where is it now?", None, status="failed"),
]


def test_disagreements_only_where_the_teacher_had_an_opinion():
    raw = datasets.Dataset.from_list(UNIT)
    res = curate(raw, _spec())
    assert Counter(res.rejected["reason"]) == {"teacher_disagrees": 1, "generation_failed": 1}
    assert [d for d, why in zip(res.rejected["detail"], res.rejected["reason"]) if why == "teacher_disagrees"] == \
        ["teacher said exchange_rate"]
    assert sorted(res.kept["id"]) == ["r0", "r2", "r3", "r4"]  # no label / invalid label: no opinion, kept
    rep = res.info["teacher_agreement"]
    assert (rep["checked"], rep["disagree"], rep["rate"]) == (3, 1, 0.3333)
    assert rep["per_label"]["card_arrival"] == {"checked": 2, "disagree": 1, "rate": 0.5,
                                                "teacher_said": {"exchange_rate": 1}}
    out = Console(width=200, record=True)
    out.print(render_funnel(res.funnel))
    text = " ".join(out.export_text().split())
    assert "teacher_agreement" in text and "1 of 3 labels (33.3 %, dropped" in text


def test_rows_without_teacher_labels_and_switched_off_spec_pass():
    old = datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "teacher_label"} for r in UNIT])
    res = curate(old, _spec())  # an old run: the step is there and drops nothing
    assert "teacher_disagrees" not in res.rejected["reason"]
    assert "nothing compared" in res.info["teacher_agreement"]["note"]
    off = parse_spec({**_spec().model_dump(mode="json", exclude={"profiles"}), "generation": {"teacher_agreement": False}})
    res = curate(datasets.Dataset.from_list(UNIT), off)
    assert "teacher_agreement" not in [s["step"] for s in res.funnel] and "teacher_agreement" not in res.info
    with pytest.raises(Exception, match="teacher_disagreement"):
        _spec(teacher_disagreement="maybe")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own context warnings
def test_ray_backend_makes_the_same_decisions(tmp_path):
    pytest.importorskip("ray")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from curation.raybackend import curate_ray
    from distilforge.spec import Backend

    raw = datasets.Dataset.from_list(UNIT)
    for mode in ("drop", "relabel"):
        spec = _spec(teacher_disagreement=mode)
        local = curate(raw, spec)
        other = curate_ray(raw, spec, backend=Backend(kind="ray", num_cpus=1), cache_root=tmp_path)
        assert other.kept.to_list() == local.kept.to_list()
        assert list(zip(other.rejected["id"], other.rejected["reason"], other.rejected["detail"])) == \
            list(zip(local.rejected["id"], local.rejected["reason"], local.rejected["detail"]))
        strip = lambda f: [{k: v for k, v in s.items() if k != "seconds"} for s in f]  # noqa: E731
        assert strip(other.funnel) == strip(local.funnel)
        assert other.info["teacher_agreement"] == local.info["teacher_agreement"]


def test_teacher_failure_midway_keeps_what_was_labelled(tmp_path):
    """`ask_answers` (generate's agreement check and the traffic stage): a teacher that fails raises the
    caller's one-line error with how many texts are labelled; cached answers are not asked again."""
    from distilforge.secrets import Secret
    from distilforge.spec import load_spec
    from distilforge.teacher import Endpoint

    spec = load_spec("examples/banking77/task.yaml", profile="smoke")
    spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"max_retries": 0, "timeout_s": 2})})
    dead = Endpoint("http://127.0.0.1:9/v1", "qwen2.5-coder-0.5b", Secret("none"), "openai")
    cache = tmp_path / "labels.jsonl"
    key = agreement._key(dead.model, spec.system_prompt(), "cached text")
    cache.write_text(json.dumps({"key": key, "label": "card_arrival"}) + "\n")

    class Failed(Exception):
        pass

    with pytest.raises(Failed, match=r"^1 of 2: "):
        agreement.ask_answers(spec, dead, ["cached text", "new text", "cached text"], cache,
                             lambda done, total, why: Failed(f"{done} of {total}: {why}"))
    got, info = agreement.ask_answers(spec, dead, ["cached text"], cache, lambda *a: Failed("asked"))
    assert got == {"cached text": "card_arrival"} and info["asked_now"] == 0 and info["cached"] == 1


# ---------------------------------------------------------------- extraction answers (no labels)

SCHEMA = {"type": "object", "properties": {"amount": {"type": ["string", "null"]}, "company": {"type": ["string", "null"]}}}


def _xspec(mode: str = "drop"):
    return parse_spec({"name": "agree-x", "type": "extraction", "instruction": "Extract the amount and the company.",
                       "output_schema": SCHEMA, "heldout": {"source": "unused.csv"},
                       "generation": {"teacher_agreement": True},
                       "curation": {"semantic_dedup": False, "teacher_disagreement": mode}})


def _xrow(i: int, text: str, answer: str, teacher) -> dict:
    return {"id": f"x{i}", "label": "", "text": text, "prompt": _xspec().student_prompt(text),
            "completion": [{"role": "assistant", "content": answer}], "status": "ok", "error": "",
            "teacher_label": teacher}


XROWS = [  # the teacher's answer differs from the row's only by case, spacing and a null: the same answer
    _xrow(0, "I paid 35 euros to Spotify twice last week, why?", '{"amount":"35 euros","company":"Spotify"}',
          '{"amount":" 35  Euros","company":"spotify"}'),
    _xrow(1, "Netflix took 12 pounds from my account yesterday", '{"amount":"12 pounds","company":"Netflix","x":null}',
          '{"amount":"12 pounds","company":"Netflix"}'),
    _xrow(2, "Why did Tesco charge me 40 dollars on my debit card?", '{"amount":"40 dollars"}',  # planted: misses a field
          '{"amount":"40 dollars","company":"Tesco"}'),
    _xrow(3, "Can I send money to my landlord from the app?", "{}", "<invalid>"),  # no opinion
]


def test_extraction_answers_are_compared_after_value_folding():
    """The pieces curate's funnel calls (`prepare`, `checks`), on extraction rows: the teacher's JSON
    disagrees only when a value differs after extraction_score's folding (null == absent)."""
    assert agreement.enabled(_xspec())  # the extraction format takes part: generation.teacher_agreement switches it
    off = parse_spec({**_xspec().model_dump(mode="json", exclude={"generation"}),
                      "generation": {"teacher_agreement": False}})
    assert not agreement.enabled(off) and agreement.checks(off) == []
    raw = datasets.Dataset.from_list(XROWS)
    rows, rep = agreement.prepare(raw, _xspec())
    [(step, reason, check)] = agreement.checks(_xspec())
    assert (step, reason) == ("teacher_agreement", "teacher_disagrees")
    assert [check(r) for r in rows] == [None, None, 'teacher said {"amount":"40 dollars","company":"Tesco"}', None]
    assert (rep["checked"], rep["disagree"], rep["rate"], rep["per_label"], rep["fields_differ"]) == \
        (3, 1, 0.3333, {}, {"company": 1})
    [(_, _, keep)] = agreement.checks(_xspec("keep"))
    assert [keep(r) for r in rows] == [None] * 4  # reported, never dropped
    relabelled, rep = agreement.prepare(raw, _xspec("relabel"))
    got = [(c[0]["content"], f, lab) for c, f, lab in zip(relabelled["completion"], relabelled["relabelled_from"],
                                                         relabelled["label"])]
    assert got[2] == ('{"amount":"40 dollars","company":"Tesco"}', '{"amount":"40 dollars"}', "")
    assert [g[1] for g in got] == [None, None, '{"amount":"40 dollars"}', None] and rep["relabelled"] == 1
    assert [g[0] for g in got[:2] + got[3:]] == [r["completion"][0]["content"] for r in XROWS[:2] + XROWS[3:]]
