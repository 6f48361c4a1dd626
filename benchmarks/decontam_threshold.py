"""Decontamination threshold benchmark (not a test): which embedding cosine separates real leaks of
the locked held-out set from independent real rows that merely ask the same thing?

Why: short intent queries are close in MiniLM space even when nobody copied anything ("where is my
card?" vs "has my card been sent?"). A threshold that is too low throws away exactly the realistic
rows the generator is trying to make; one that is too high lets paraphrased test rows into
training. So the default is chosen by measurement, not by feel:

  leaks        a seeded sample of the locked Banking77 test rows of the example's intents, planted
               four ways: `exact` (verbatim), `cosmetic` (casing and punctuation changed),
               `one_word` (one word dropped, inserted or replaced, plus casing) and `paraphrase`
               (the embedded teacher rewrites the message, temperature 0.7, seed per request)
  independent  every Banking77 *train* row of the same intents (real, written independently of
               the test rows); train rows whose normalized text equals a test row are real copies,
               counted and left out of the independent set

For each threshold 0.80 ... 0.99 (step 0.01, and 0.005 from 0.975 to 0.995): recall per leak kind
and the false-flag rate on the independent rows, for the embedding check alone and combined with
the 13-gram check (what `curate` and the train gate run); the n-gram check alone is reported once
(it has no threshold, and it stays as it is). The chosen default is the lowest threshold whose
embedding check flags <= 2 % of the independent rows: the threshold controls that check only, the
n-gram check's own false flags are the same at every threshold (and reported next to it).

    .venv/bin/distilforge teacher status            # the running embedded teacher (not stopped here)
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decontam_threshold.py

Paraphrases are cached outside the repo (~/.cache/distilforge/bench/, keyed by teacher model, seed
and test row) because they are test rows in other words: they must never be committed or trained
on. The JSON result carries counts and rates only, never a held-out text.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation import decontam, dedup  # noqa: E402
from curation.embed import Embedder  # noqa: E402
from distilforge import assets  # noqa: E402
from distilforge.spec import load_spec  # noqa: E402
from heldout.lock import build_rows  # noqa: E402

KINDS = ("exact", "cosmetic", "one_word", "paraphrase")
# 0.80 ... 0.99 by 0.01, plus a finer tail where the false-flag rate crosses 2 % on Banking77
THRESHOLDS = sorted({round(0.80 + 0.01 * i, 2) for i in range(20)} | {round(0.975 + 0.005 * i, 3) for i in range(5)})
MAX_FALSE_FLAGS = 0.02
PROMPT = ("Rewrite this bank customer's message in your own words. Keep its meaning; change the wording. "
          "Reply with only the rewritten message.\n\nMessage: {text}")
FILLERS = ["please", "hi", "still", "really", "now", "today", "just"]


# ---------------------------------------------------------------- planted leaks

def cosmetic(text: str, rng: random.Random) -> str:
    """Casing and punctuation only: what a copy looks like after a careless edit."""
    t = text.lower() if rng.random() < 0.5 else text.upper()
    t = re.sub(r"[^\w\s']", "", t) if rng.random() < 0.7 else t.rstrip(".?!") + "!!"
    return t


def one_word(text: str, rng: random.Random) -> str:
    """One word dropped, inserted or replaced by a filler, then lowercased."""
    words = text.split()
    j = rng.randrange(len(words))
    op = rng.choice(["drop", "insert", "replace"]) if len(words) > 2 else "insert"
    if op == "drop":
        del words[j]
    elif op == "insert":
        words.insert(j, rng.choice(FILLERS))
    else:
        words[j] = rng.choice(FILLERS)
    return " ".join(words).lower()


def clean_paraphrase(raw: str) -> str:
    """First non-empty line, without the quotes/labels small models wrap answers in."""
    line = next((ln.strip() for ln in (raw or "").splitlines() if ln.strip()), "")
    line = re.sub(r"^(rewritten message|message|rewrite|paraphrase)\s*:\s*", "", line, flags=re.I)
    return line.strip().strip('"').strip("'").strip()


def paraphrases(rows: list[dict], base_url: str | None, model: str, seed: int, cache: Path) -> tuple[dict[str, str], dict]:
    """Teacher paraphrase per held-out row id; cached by (model, seed, id) so reruns are free and equal.
    `base_url` None: the running embedded teacher, looked up again if it restarts on another port
    (other users of the shared server may restart it)."""
    from openai import APIConnectionError, OpenAI

    cache.parent.mkdir(parents=True, exist_ok=True)
    have: dict[str, str] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupt: asked again
            have[d["id"]] = d["paraphrase"]
    def client() -> OpenAI:
        return OpenAI(base_url=base_url or teacher_url(model), api_key="none", timeout=120, max_retries=4)

    asked, t0, tokens, c = 0, time.time(), [0, 0], None
    with cache.open("a") as f:
        for k, r in enumerate(rows):
            if r["id"] in have:
                continue
            for attempt in range(4):
                try:
                    c = c or client()
                    resp = c.chat.completions.create(
                        model=model, temperature=0.7, max_tokens=80, seed=seed * 100003 + k,
                        messages=[{"role": "user", "content": PROMPT.format(text=r["text"])}])
                    break
                except APIConnectionError:
                    if attempt == 3 or base_url:
                        raise
                    c = None
                    time.sleep(10)
            have[r["id"]] = clean_paraphrase(resp.choices[0].message.content)
            asked += 1
            if resp.usage:
                tokens[0] += resp.usage.prompt_tokens
                tokens[1] += resp.usage.completion_tokens
            f.write(json.dumps({"id": r["id"], "paraphrase": have[r["id"]]}) + "\n")
            f.flush()
            print(f"paraphrase {k + 1}/{len(rows)}", file=sys.stderr, flush=True)
    return have, {"asked_now": asked, "seconds_now": round(time.time() - t0, 1),
                  "prompt_tokens_now": tokens[0], "completion_tokens_now": tokens[1]}


# ---------------------------------------------------------------- measuring

def teacher_url(model: str) -> str:
    from distilforge.teacher import status

    for st in status(model):
        if st.get("healthy"):
            return st["base_url"]
    raise SystemExit(f"no healthy embedded teacher '{model}': start one with "
                     f"`.venv/bin/distilforge teacher serve --model {model}` or pass --base-url")


def max_cosine(vecs: np.ndarray, held: np.ndarray) -> np.ndarray:
    return (vecs @ held.T).max(axis=1) if len(vecs) else np.zeros(0)


def rate(mask: np.ndarray) -> float:
    return round(float(mask.mean()), 4) if len(mask) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "examples" / "banking77" / "task.yaml"))
    ap.add_argument("--train", default=None, help="independent rows (default: banking77/train.csv next to the test file)")
    ap.add_argument("--leaks", type=int, default=100, help="held-out rows sampled as planted leaks (stratified)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher", default="qwen2.5-coder-0.5b", help="embedded teacher model that paraphrases")
    ap.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: the running embedded teacher)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decontam_threshold.json"))
    ap.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "decontam_threshold.png"))
    args = ap.parse_args()

    os.chdir(ROOT)  # the spec's data path is relative to the repo root
    spec = load_spec(args.spec)
    cfg = spec.curation
    held, _ = build_rows(spec.heldout, spec.label_names)
    train_src = args.train or str(Path(spec.heldout.source).with_name("train.csv"))
    train, _ = build_rows(spec.heldout.model_copy(update={"source": train_src}), spec.label_names)
    held_norm = {dedup.normalize(r["text"]) for r in held}
    copies = [r for r in train if dedup.normalize(r["text"]) in held_norm]
    indep = [r for r in train if dedup.normalize(r["text"]) not in held_norm]

    # stratified, seeded sample of held-out rows to plant
    rng = random.Random(args.seed)
    by_label: dict[str, list[dict]] = {}
    for r in held:
        by_label.setdefault(r["label"], []).append(r)
    per = max(1, args.leaks // len(by_label))
    sample = [r for lab in spec.label_names for r in rng.sample(by_label[lab], min(per, len(by_label[lab])))]

    cache = assets.cache_dir() / "bench" / f"decontam_paraphrases-{args.teacher}-seed{args.seed}.jsonl"
    para, para_stats = paraphrases(sample, args.base_url, args.teacher, args.seed, cache)
    leaks: dict[str, list[str]] = {k: [] for k in KINDS}
    unusable = 0
    for r in sample:
        lrng = random.Random(f"{args.seed}:{r['id']}")
        leaks["exact"].append(r["text"])
        leaks["cosmetic"].append(cosmetic(r["text"], lrng))
        leaks["one_word"].append(one_word(r["text"], lrng))
        p = para.get(r["id"], "")
        if p and dedup.normalize(p) != dedup.normalize(r["text"]):
            leaks["paraphrase"].append(p)
        else:
            unusable += 1  # empty answer or the row copied back: not a paraphrase

    emb = Embedder(cfg.embeddings.model, batch_size=cfg.embeddings.batch_size, threads=1)
    t0 = time.time()
    held_vecs = emb.encode([r["text"] for r in held])
    cos = {k: max_cosine(emb.encode(v), held_vecs) for k, v in leaks.items()}
    cos["independent"] = max_cosine(emb.encode([r["text"] for r in indep]), held_vecs)
    held_ds = __import__("datasets").Dataset.from_list([{"id": r["id"], "text": r["text"]} for r in held])
    ngram_cfg = cfg.model_copy(update={"decontam_cosine": None})

    def ngram_flags(texts: list[str]) -> np.ndarray:
        ids = [str(i) for i in range(len(texts))]
        hit = {int(d["row_id"]) for d in decontam.find_contamination(texts, ids, held_ds, ngram_cfg)}
        return np.array([i in hit for i in range(len(texts))], dtype=bool)

    ng = {k: ngram_flags(v) for k, v in leaks.items()}
    ng["independent"] = ngram_flags([r["text"] for r in indep])
    measure_s = round(time.time() - t0, 1)

    curve = []
    for t in THRESHOLDS:
        e = {k: v >= t - 1e-6 for k, v in cos.items()}
        curve.append({
            "threshold": t,
            "embedding": {"recall": {k: rate(e[k]) for k in KINDS}, "false_flags": rate(e["independent"])},
            "combined": {"recall": {k: rate(e[k] | ng[k]) for k in KINDS},
                         "false_flags": rate(e["independent"] | ng["independent"]),
                         "false_flag_rows": int((e["independent"] | ng["independent"]).sum())},
        })
    ok = [c for c in curve if c["embedding"]["false_flags"] <= MAX_FALSE_FLAGS]
    chosen = ok[0]["threshold"] if ok else None
    n_ind = len(indep)
    result = {
        "command": "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decontam_threshold.py"
                   + (f" --leaks {args.leaks}" if args.leaks != 100 else "") + (f" --seed {args.seed}" if args.seed else ""),
        "spec": os.path.relpath(args.spec, ROOT), "labels": spec.label_names, "seed": args.seed,
        "embedding_model": emb.model_key, "ngram": cfg.decontamination.ngram, "ngram_min_tokens": cfg.decontamination.min_tokens,
        "paraphrase_teacher": args.teacher, "paraphrase_prompt": PROMPT, "paraphrase_temperature": 0.7,
        "paraphrase_stats": para_stats,
        "heldout_rows": len(held), "train_rows": len(train), "train_copies_of_heldout": len(copies),
        "independent_rows": n_ind, "leaks": {k: len(v) for k, v in leaks.items()},
        "paraphrases_unusable": unusable,
        "ngram_only": {"recall": {k: rate(ng[k]) for k in KINDS}, "false_flags": rate(ng["independent"])},
        "cosine_quantiles": {k: {q: round(float(np.quantile(v, q / 100)), 4) for q in (5, 25, 50, 75, 95)}
                             for k, v in cos.items() if len(v)},
        "independent_at_or_above_0.90": int((cos["independent"] >= 0.90 - 1e-6).sum()),
        "max_false_flags": MAX_FALSE_FLAGS, "chosen_threshold": chosen,
        "chosen": next((c for c in curve if c["threshold"] == chosen), None),
        "curve": curve, "measure_seconds": measure_s,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    plot(result, Path(args.plot))
    print(f"held-out {len(held)}, independent train {n_ind} (+{len(copies)} exact copies of test rows left out), "
          f"leaks {result['leaks']}, teacher {args.teacher}")
    print(f"n-gram only: recall {result['ngram_only']['recall']}, false flags {result['ngram_only']['false_flags']}")
    print(f"{'thr':>6} {'emb false%':>10} {'all false%':>10} " + " ".join(f"{k:>10}" for k in KINDS)
          + "   (recall: n-gram + cosine)")
    for c in curve:
        print(f"{c['threshold']:6.3f} {100 * c['embedding']['false_flags']:10.2f} {100 * c['combined']['false_flags']:10.2f} "
              + " ".join(f"{c['combined']['recall'][k]:10.3f}" for k in KINDS))
    print(f"chosen: {chosen} (lowest threshold whose embedding check flags <= {MAX_FALSE_FLAGS:.0%} of independent "
          f"rows); wrote {out}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [c["threshold"] for c in result["curve"]]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for k, style in zip(KINDS, ("-", "--", "-.", "-")):
        ax.plot(xs, [c["combined"]["recall"][k] for c in result["curve"]], style, label=f"recall: {k}")
    ax.plot(xs, [c["embedding"]["false_flags"] for c in result["curve"]], "k:", lw=2,
            label="false flags, embedding check (independent train rows)")
    ax.plot(xs, [c["combined"]["false_flags"] for c in result["curve"]], color="grey", ls=":", lw=1.5,
            label="false flags, embedding + 13-gram")
    ax.axhline(result["max_false_flags"], color="grey", lw=0.8)
    if result["chosen_threshold"] is not None:
        ax.axvline(result["chosen_threshold"], color="red", lw=0.8, label=f"chosen {result['chosen_threshold']:g}")
    ax.set_xlabel("embedding cosine threshold (MiniLM), with the 13-gram check")
    ax.set_ylabel("share of rows flagged")
    ax.set_title(f"Decontamination on Banking77-10: {result['independent_rows']} independent rows, "
                 f"{result['leaks']['paraphrase']} teacher paraphrases ({result['paraphrase_teacher']})", fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="center left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


if __name__ == "__main__":
    main()
