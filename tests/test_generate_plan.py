"""Generation without a teacher: planning, ids, strategy mix, targets, parsing of garbage, spec errors,
hard negatives. Fast; the teacher-backed tests live in test_generate.py / test_generate_faults.py."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from curation import formats
from curation.generation import plan
from curation.generation.generate import plan_all, template_columns
from distilforge.spec import SpecError, load_spec, parse_spec
from heldout.formats import task_format

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _raw(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_plan_is_deterministic_and_ids_follow_content(tmp_path):
    spec = load_spec(EXAMPLES / "banking77" / "task.yaml", "smoke")
    a, b = plan.plan_base(spec), plan.plan_base(spec)
    assert [r["request_id"] for r in a] == [r["request_id"] for r in b]
    assert len({r["request_id"] for r in a}) == len(a) == 2 * len(spec.labels)
    assert all(r["shard_n"] == sum(x["shard_id"] == r["shard_id"] for x in a) for r in a)
    # anything that changes the teacher's answer changes the ids (old shards are then not reused)
    for change in ({"teacher": {"temperature": 0.3}}, {"teacher": {"model": "qwen2.5-coder-1.5b"}},
                   {"generation": {"constrained": not spec.generation.constrained}},
                   {"generation": {"seed": 1}}, {"generation": {"input_description": "a pensioner"}}):
        raw = _raw(EXAMPLES / "banking77" / "task.yaml")
        raw["profiles"]["x"] = {**raw["profiles"]["smoke"]}
        for k, v in change.items():
            raw["profiles"]["x"][k] = {**raw["profiles"]["x"].get(k, {}), **v}
        other = parse_spec(raw, profile="x")
        assert not {r["request_id"] for r in plan.plan_base(other)} & {r["request_id"] for r in a}, change
    # ids follow the messages sent, not template names: v1 and v2 say the same for `attributes`
    ids = {}
    for name in ("classification_v1", "classification_v2"):
        raw = _raw(EXAMPLES / "banking77" / "task.yaml")
        raw["profiles"]["smoke"]["generation"]["prompt_template"] = name
        ids[name] = [r["request_id"] for r in plan.plan_base(parse_spec(raw, profile="smoke"))]
    assert ids["classification_v1"] == ids["classification_v2"] and not set(ids["classification_v2"]) & set(
        r["request_id"] for r in a)  # the default (v3) says it in another order: other ids
    # concurrency is not part of an id
    raw = _raw(EXAMPLES / "banking77" / "task.yaml")
    raw["profiles"]["smoke"]["generation"]["concurrency"] = 4
    assert [r["request_id"] for r in plan.plan_base(parse_spec(raw, profile="smoke"))] == [r["request_id"] for r in a]


def test_strategy_mix_targets_and_evolve_parents(tmp_path):
    spec = load_spec(EXAMPLES / "extraction" / "task.yaml")  # 40 rows: attributes .5, fewshot .3, evolve .2
    base, evolve = plan_all(spec, tmp_path)
    kinds = [r["strategy"] for r in base + evolve]
    assert (kinds.count("attributes"), kinds.count("fewshot"), kinds.count("evolve")) == (20, 12, 8)
    ids = {r["request_id"] for r in base}
    assert all(r["parent_id"] in ids and r["shard_id"].startswith("e-") for r in evolve)
    assert all(r["examples_text"] for r in base if r["strategy"] == "fewshot")
    # targets: label + keywords + attributes → extra 'targeted' requests, accumulated in the run dir
    cls = load_spec(EXAMPLES / "banking77" / "task.yaml", "smoke")
    t = tmp_path / "targets.yaml"
    t.write_text("- {label: pin_blocked, keywords: [ATM, three wrong tries], attributes: {tone: angry}, count: 3}\n")
    from curation.generation.generate import add_targets

    add_targets(tmp_path, plan.load_targets(t, cls))
    add_targets(tmp_path, plan.load_targets(t, cls))  # same target twice: not duplicated
    base, _ = plan_all(cls, tmp_path)
    tg = [r for r in base if r["strategy"] == "targeted"]
    assert len(tg) == 3 and all(r["label"] == "pin_blocked" and r["tone"] == "angry" for r in tg)
    assert "three wrong tries" in formats.render("classification_v2", tg[0])
    t.write_text("- {label: nope, count: 2}\n")
    with pytest.raises(plan.TargetsError, match="targets\\[0\\].label: 'nope'"):
        plan.load_targets(t, cls)


def test_render_matches_distilabel_textgeneration():
    """The dry-run forecast and the benchmark render prompts themselves: they must be what distilabel sends."""
    from distilabel.models.llms import OpenAILLM
    from distilabel.steps.tasks import TextGeneration

    for task in ("banking77", "extraction", "instruction"):
        spec = load_spec(EXAMPLES / task / "task.yaml")
        name = formats.template_name(spec)
        tmpl = formats.template_text(name)
        step = TextGeneration(llm=OpenAILLM(model="m", base_url="http://127.0.0.1:9/v1", api_key="x"), template=tmpl,
                              columns=template_columns(tmpl), system_prompt=formats.system_text(name))
        step.load()
        for r in plan.plan_base(spec)[:3]:
            assert step.format_input(r) == formats.messages(name, r)


def test_garbage_answers_become_reasons_never_exceptions():
    cls = load_spec(EXAMPLES / "banking77" / "task.yaml")
    ext = load_spec(EXAMPLES / "extraction" / "task.yaml")
    ins = load_spec(EXAMPLES / "instruction" / "task.yaml")
    cases = [
        (cls, "Sure! here it is", None, "not JSON"),
        (cls, "", None, "empty output"),
        (cls, None, None, "no output"),
        (cls, '{"message": "my card never ca', "length", "truncated at max_tokens"),
        (cls, "[1, 2]", None, "not an object"),
        (cls, '{"text": "x"}', None, "without a non-empty 'message'"),
        (ext, '{"input": "paid 5 EUR", "output": {"amount": "five"}}', None, "schema: "),
        (ext, '{"input": "paid 5 EUR", "output": {"amount": 5, "currency": "EUR", "card_last4": "12", '
              '"merchant": null, "transaction_type": "card_payment"}}', None, "schema: card_last4"),
        (ins, '{"prompt": "help", "response": ""}', None, "'response'"),
    ]
    for spec, raw, fin, why in cases:
        fields, err = formats.parse(spec, raw, fin, 7)
        assert fields is None and why in err, (raw, err)
    ok, err = formats.parse(ext, '{"input": " paid  5 EUR at Lidl ", "output": {"transaction_type": "card_payment", '
                                 '"amount": 5, "currency": "EUR", "card_last4": null, "merchant": "Lidl"}}')
    assert err == "" and ok["text"] == "paid 5 EUR at Lidl"
    # canonical answer: schema key order, compact; a null is dropped (null and absent mean the same)
    # unless the schema requires the key (this example requires all five), so the answer validates
    assert list(json.loads(ok["answer"])) == list(ext.output_schema["properties"])
    assert json.loads(ok["answer"])["card_last4"] is None
    assert ": " not in ok["answer"] and ", " not in ok["answer"].replace("EUR at", "")
    # generation.constrained: false turns the teacher's structured output off for generation calls only
    assert cls.generation.constrained is False  # the example spec: one-field answer, no grammar
    assert formats.structured_mode(cls.teacher, "embedded", cls.generation) == "none"
    assert formats.structured_mode(cls.teacher, "embedded") == "llama_cpp"  # eval/judge keep the grammar
    assert formats.structured_mode(ext.teacher, "openai", ext.generation) == "openai"
    # Without a grammar small teachers fence the JSON or talk around it: the one object is taken.
    for raw in ('```json\n{"message": "where is my card"}\n```', 'Here you go: {"message": "where is my card"}'):
        ok, err = formats.parse(cls, raw)
        assert err == "" and ok["text"] == "where is my card", (raw, err)
    assert "not JSON" in formats.parse(cls, '{"message": "a"} and {"message": "b"}')[1]  # two objects: no guess
    assert task_format(cls).validate_answer(" Card_Arrival. ") == ("card_arrival", "")
    assert "wrong label" in task_format(cls).validate_answer("lost_wallet")[1]


def test_extraction_hard_negative_changes_one_field_and_stays_valid():
    from heldout.formats.extraction import schema_error

    ext = load_spec(EXAMPLES / "extraction" / "task.yaml")
    for i, line in enumerate((EXAMPLES / "extraction" / "heldout.jsonl").read_text().splitlines()):
        ans = json.loads(line)["output"]
        bad = task_format(ext).wrong_field(ans, random.Random(i))
        if all(v is None for k, v in ans.items() if k != "transaction_type") and bad is None:
            continue
        assert bad is not None and schema_error(ext.output_schema, bad) == ""
        assert sum(bad[k] != ans[k] for k in ans) == 1, (ans, bad)


@pytest.mark.parametrize("change, msg", [
    (lambda r: r.pop("output_schema"), "extraction task needs a JSON Schema"),
    (lambda r: r.__setitem__("output_schema", {"type": "object", "properties": {"a": {"type": "nope"}}}),
     "output_schema': not a valid JSON Schema"),
    (lambda r: r["examples"][0]["output"].__setitem__("currency", "BTC"), "examples.0.output: does not match"),
    (lambda r: r["generation"].__setitem__("strategies", {"attributes": 1, "magic": 1}), "unknown strategy magic"),
    (lambda r: (r.pop("examples"), r["generation"].__setitem__("strategies", {"fewshot": 1})),
     "fewshot: needs seed `examples`"),
])
def test_spec_errors_are_one_line(change, msg):
    raw = _raw(EXAMPLES / "extraction" / "task.yaml")
    change(raw)
    with pytest.raises(SpecError) as e:
        parse_spec(raw, source="t.yaml")
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_price_table_and_override():
    from curation.generation.budget import cost, prices

    raw = _raw(EXAMPLES / "banking77" / "task.yaml")
    raw["teacher"] = {"endpoint": "openai", "base_url": "http://x/v1", "model": "gpt-4o-mini-2024-07-18"}
    assert prices(parse_spec(raw)) == (0.15, 0.60)  # dated model names fall back to their family
    raw["teacher"]["price_out_per_m"] = 1.0
    assert prices(parse_spec(raw)) == (0.15, 1.0)
    assert cost(1_000_000, 500_000, (0.15, 1.0)) == pytest.approx(0.65)
    assert prices(load_spec(EXAMPLES / "banking77" / "task.yaml")) == (0.0, 0.0)


def test_cli_bad_targets_file_is_one_line_and_starts_nothing(tmp_path):
    from conftest import cli

    bad = tmp_path / "targets.yaml"
    bad.write_text("- {label: no_such_intent, keywords: [x]}\n")
    r = cli("generate", tmp_path / "run", "--spec", EXAMPLES / "banking77" / "task.yaml", "--profile", "smoke",
            "--targets", bad)
    assert r.returncode == 2 and "targets[0].label: 'no_such_intent'" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "generate" / "shards").exists()


def test_inputs_per_request_keeps_row_ids_and_shards_whole_batches(tmp_path):
    """k > 1 asks for the same rows (the k = 1 ids), k rows of one label and strategy per request,
    shards made of whole batches and never sharing a name with a k = 1 shard; k = 1 leaves the
    plan and the generate fingerprint exactly as they were before the field existed."""
    from curation.stages import generation_config

    raw = _raw(EXAMPLES / "banking77" / "task.yaml")
    raw["profiles"]["demo"]["generation"] = {**raw["profiles"]["demo"].get("generation", {}), "inputs_per_request": 1}
    one = parse_spec(raw, profile="demo")
    assert "inputs_per_request" not in generation_config(one)["generation"]
    raw["profiles"]["demo"]["generation"]["inputs_per_request"] = 4
    four = parse_spec(raw, profile="demo")
    (b1, _), (b4, _) = plan_all(one, tmp_path), plan_all(four, tmp_path)
    assert sorted(r["request_id"] for r in b4) == sorted(r["request_id"] for r in b1)
    assert not {r["shard_id"] for r in b4} & {r["shard_id"] for r in b1}
    assert generation_config(four)["generation"]["inputs_per_request"] == 4
    batches: dict[str, list[dict]] = {}
    for r in b4:
        batches.setdefault(r["batch_id"], []).append(r)
    assert all(len(v) <= 4 and len({(r["label"], r["strategy"], r["shard_id"]) for r in v}) == 1 for v in batches.values())
    assert sum(len(v) == 4 for v in batches.values()) >= len(batches) - len(four.labels) * 2
    assert all(sorted(r["batch_i"] for r in v) == list(range(len(v))) for v in batches.values())
    reqs = plan.batch_requests(four, b4)
    assert len(reqs) == len(batches) and all(q["n_messages"] == len(batches[q["request_id"]]) for q in reqs)
    msgs = formats.messages("classification_batch_v1", reqs[0])
    assert f"exactly {reqs[0]['n_messages']} strings" in msgs[1]["content"] and "DIFFERENT" in msgs[1]["content"]
    with pytest.raises(SpecError, match="inputs_per_request"):
        raw["profiles"]["demo"]["generation"]["inputs_per_request"] = 17
        parse_spec(raw, profile="demo")


def test_batch_prompt_opens_with_what_every_request_shares(tmp_path):
    """The embedded teacher re-reads a prompt only after the prefix it shares with the request
    before it (distilforge/llama_server.py), so the default batch template must open with the
    shared instruction and answer format, and put the label's situation and the style lines last.
    The old order (v1: situation first) shared almost nothing between two labels' requests."""
    import os

    spec = load_spec(EXAMPLES / "banking77" / "task.yaml", "demo")
    assert spec.generation.inputs_per_request == 4
    reqs = plan.batch_requests(spec, plan_all(spec, tmp_path)[0])
    first = {}
    for r in reqs:
        first.setdefault(r["label"], r)
    a, b = list(first.values())[:2]

    def shared(tname: str) -> float:
        x, y = (formats.messages(tname, r) for r in (a, b))
        full = "".join(m["content"] for m in x)
        return len(os.path.commonprefix(["".join(m["content"] for m in x), "".join(m["content"] for m in y)])) / len(full)

    tname = formats.batch_template_name(spec)
    assert tname != "classification_batch_v1"
    assert shared(tname) > 0.5 > 0.25 > shared("classification_batch_v1")
    user = formats.messages(tname, a)[-1]["content"]
    assert user.index("exactly 4 strings") < user.index(a["description"]) < user.index("1. ")


def test_contrastive_target_asks_for_the_boundary(tmp_path):
    """A blind-spot target that says the student confuses a with b asks the teacher for a message
    that is clearly a and names b's situation as what it must not read like."""
    spec = load_spec(EXAMPLES / "banking77" / "task.yaml", "smoke")
    desc = {lab.name: lab.description for lab in spec.labels}
    p = tmp_path / "targets.yaml"
    p.write_text("targets:\n- {label: lost_or_stolen_card, contrast: card_arrival, keywords: [card], count: 2}\n"
                 "- {label: lost_or_stolen_card, keywords: [card], count: 2}\n")
    targets = plan.load_targets(p, spec)
    assert targets[0]["contrast"] == "card_arrival" and "contrast" not in targets[1]
    reqs = [r for r in plan.plan_base(spec, targets) if r["strategy"] == "targeted"]
    contrastive = [r for r in reqs if "not a case where" in r["description"]]
    assert len(reqs) == 4 and len(contrastive) == 2
    assert all(desc["card_arrival"] in r["description"] and r["description"].startswith(desc["lost_or_stolen_card"])
               for r in contrastive)
    assert len({r["request_id"] for r in reqs}) == 4
    p.write_text("targets:\n- {label: card_arrival, contrast: card_arrival, count: 1}\n")
    with pytest.raises(plan.TargetsError, match=r"targets\[0\]\.contrast: 'card_arrival' is not another"):
        plan.load_targets(p, spec)


@pytest.mark.parametrize("task,old", [("extraction", "extraction_v1"), ("instruction", "instruction_v1")])
def test_extraction_and_instruction_prompts_share_their_long_part_first(task, old):
    """The embedded teacher re-reads a prompt only after the prefix it shares with the previous
    request: the default template puts the schema / response format (the same for every request)
    before the per-request style, so two requests share most of their prompt; v1 did not."""
    import os

    spec = load_spec(EXAMPLES / task / "task.yaml")
    reqs = [r for r in plan.plan_base(spec) if r["strategy"] != "evolve"][:6]
    new = formats.template_name(spec)
    assert new != old

    def shared(tname: str) -> float:
        texts = ["".join(m["content"] for m in formats.messages(tname, r)) for r in reqs]
        return min(len(os.path.commonprefix([x, y])) / len(x) for x, y in zip(texts, texts[1:]))

    assert shared(new) > 0.5 and shared(new) > shared(old) + 0.2, (shared(new), shared(old))
    user = formats.messages(new, reqs[0])[-1]["content"]
    tail = user[len(os.path.commonprefix([user, formats.messages(new, reqs[1])[-1]["content"]])):]
    assert "Reply as JSON" not in tail  # only the per-request part differs
    if task == "extraction":
        assert reqs[0]["schema_text"] in user and "schema_text" not in tail
