"""The packed, batched label-likelihood scorer gives the same log-probabilities as the plain
definition: for each (row, label) pair, run prompt + label through the model and sum the label
tokens' log-probs. Real tiny model, real chat template, real Banking77 queries."""
import numpy as np
import pytest
import torch

from distilforge.spec import load_spec
from heldout import evaluate as ev
from distilforge.models import load_tokenizer, student_base_dir


@pytest.fixture(scope="module")
def banking77_texts():
    import pandas as pd

    from conftest import BANKING77

    df = pd.read_csv(BANKING77 / "test.csv")
    return [t for t in df["text"].iloc[::97]][:12]


def naive_scores(model_path, prompts, labels):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    out = np.zeros((len(prompts), len(labels)))
    with torch.inference_mode():
        for i, m in enumerate(prompts):
            ids = tok(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False).input_ids
            for k, lab in enumerate(labels):
                lab_ids = tok(lab + tok.eos_token, add_special_tokens=False).input_ids
                x = torch.tensor([ids + lab_ids])
                logp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
                out[i, k] = sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(lab_ids))
    return out


@pytest.mark.parametrize("batch_size,mode", [(1, "short"), (3, "short"), (8, "short"), (3, "full")])
def test_packed_scores_match_naive_loop(banking77_texts, batch_size, mode):
    """`short`: the trained student's prompt (a few shared tokens); `full`: the base model's (a long
    shared instruction + label list, the prefix that runs once)."""
    spec = load_spec("examples/banking77/task.yaml", profile="smoke")
    texts = banking77_texts[:7]  # different lengths: left padding inside a batch is exercised
    prompts = [spec.student_prompt(t, mode) for t in texts]
    base = student_base_dir("tiny-random")
    preds, got = ev.score_local(base, None, prompts, spec.label_names, return_scores=True, batch_size=batch_size)
    want = naive_scores(base, prompts, spec.label_names)
    assert got.shape == (7, len(spec.label_names))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)
    assert preds == [spec.label_names[int(i)] for i in want.argmax(1)]
    assert len({round(float(x), 3) for x in got.ravel()}) > 20  # the scores really differ per row and label


def test_fallback_teacher_answers_match_the_grammar(banking77_texts, fast_teacher):
    """`structured_output: fallback` asks the same JSON question without the grammar and uses the
    grammar only to re-ask a miss: on the real 0.5B teacher it gives the grammar's labels on real
    queries, and every answer is a label."""
    from distilforge.secrets import Secret
    from distilforge.teacher import Endpoint

    spec = load_spec("examples/banking77/task.yaml", profile="smoke")
    ep = Endpoint(fast_teacher["base_url"], fast_teacher["model"], Secret("none"), "embedded")
    texts = banking77_texts[:8]
    system = spec.system_prompt("full")
    plain, tp = ev.score_teacher(ep, system, texts, spec.label_names, "fallback")
    grammar, tg = ev.score_teacher(ep, system, texts, spec.label_names, "llama_cpp")
    assert all(p in spec.label_names for p in plain)  # every miss was re-asked under the grammar
    assert sum(a == b for a, b in zip(plain, grammar)) >= 6, (plain, grammar)
    assert tp["requests"] >= tp["calls"] == 8 and "requests" not in tg


def test_teacher_subset_is_a_seeded_sample_of_each_label_not_its_first_rows():
    """`eval.teacher_max_per_label` picks N rows of each label at random (seeded, locked order kept):
    the first rows of a label in the source file need not be typical (module doc of stratified_rows)."""
    gold = [g for g in ("a", "b", "c") for _ in range(40)]  # grouped, like a source sorted by label
    rows = ev.stratified_rows(gold, 10)
    assert rows == sorted(rows) and rows == ev.stratified_rows(gold, 10)  # sorted, reproducible
    assert {g: sum(gold[i] == g for i in rows) for g in "abc"} == {"a": 10, "b": 10, "c": 10}
    assert rows != [i for i in range(120) if i % 40 < 10]  # not the first 10 of each label
    assert ev.stratified_rows(gold, 10, seed=1) != rows
    assert ev.stratified_rows(gold, 50) == list(range(120)) and ev.stratified_rows(gold, None) == list(range(120))
    assert ev.stratified_rows(["a", "a", "b"], 1) in ([0, 2], [1, 2])
