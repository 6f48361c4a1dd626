"""Where everything of a run lives: one typed `Run`, so no module spells a run path by hand.

A run directory holds the recorded spec plus one folder per stage. Each stage writes only its own
folder and reads the folders before it; the manifest in each folder (distilforge/manifest.py)
says what went in and what came out. The layout below is the contract between stages: change a
path here and every reader follows.

    RUN/spec.json                 the spec the run is bound to (distilforge/runctx.py)
    RUN/heldout/                  lock.json + the locked rows            (heldout lock)
    RUN/traffic/                  rows/, dev/, labels.jsonl               (traffic, when the spec has one)
    RUN/generate/                 shards/, ledger.jsonl, rows/, prefs/   (generate)
    RUN/curate/                   curated/, dropped/, prefs/             (curate)
    RUN/review/                   push.json, reviews/, export/           (review push|pull|export)
    RUN/train/                    adapter/, merged/, README.md (card)    (train)
    RUN/eval/                     metrics.json, endpoints/               (eval)
    RUN/blindspots/               blindspots.json, targets.yaml          (blindspots)
    RUN/decide/                   decision.json, cost_vs_volume.png      (decide)
    RUN/export/                   hf/, gguf/                             (export)
    RUN/serve/                    benchmark.json                         (serve --bench)
    RUN/abtest/                   shadow.jsonl                           (abtest --shadow)
    RUN/report.html, RUN/timings.json
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    root: Path

    def __init__(self, root: str | Path | "Run"):
        object.__setattr__(self, "root", Path(root.root if isinstance(root, Run) else root))

    def __fspath__(self) -> str:
        return str(self.root)

    def __truediv__(self, name: str) -> Path:  # an escape hatch for files not named below
        return self.root / name

    # --- the run itself -----------------------------------------------------------------
    @property
    def spec_json(self) -> Path:
        return self.root / "spec.json"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    # --- stage folders --------------------------------------------------------------------
    @property
    def heldout(self) -> Path:
        return self.root / "heldout"

    @property
    def generate(self) -> Path:
        return self.root / "generate"

    @property
    def curate(self) -> Path:
        return self.root / "curate"

    @property
    def review(self) -> Path:
        return self.root / "review"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def blindspots(self) -> Path:
        return self.root / "blindspots"

    @property
    def decide(self) -> Path:
        return self.root / "decide"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def serve(self) -> Path:
        return self.root / "serve"

    @property
    def abtest(self) -> Path:
        return self.root / "abtest"

    # --- what one stage hands the next ------------------------------------------------------
    @property
    def lock_json(self) -> Path:
        return self.heldout / "lock.json"

    @property
    def generated_rows(self) -> Path:
        return self.generate / "rows"

    @property
    def generated_prefs(self) -> Path:
        return self.generate / "prefs"

    @property
    def curated(self) -> Path:
        return self.curate / "curated"

    @property
    def review_export(self) -> Path:
        return self.review / "export"

    @property
    def adapter(self) -> Path:
        return self.train / "adapter"

    @property
    def merged(self) -> Path:
        return self.train / "merged"

    @property
    def model_card(self) -> Path:
        return self.train / "README.md"

    @property
    def metrics(self) -> Path:
        return self.eval / "metrics.json"

    @property
    def endpoint_results(self) -> Path:
        return self.eval / "endpoints"

    @property
    def blindspots_json(self) -> Path:
        return self.blindspots / "blindspots.json"

    @property
    def targets_yaml(self) -> Path:
        return self.blindspots / "targets.yaml"

    @property
    def row_clusters(self) -> Path:
        return self.blindspots / "row_clusters.json"

    @property
    def decision(self) -> Path:
        return self.decide / "decision.json"

    # --- inside train/ and export/ (training package) -----------------------------------------
    @property
    def sft(self) -> Path:  # sft/{checkpoints,adapter,done.json}
        return self.train / "sft"

    @property
    def dpo(self) -> Path:  # dpo/{checkpoints,adapter,done.json}
        return self.train / "dpo"

    @property
    def train_tb(self) -> Path:  # TensorBoard logs, tb/{sft,dpo}
        return self.train / "tb"

    @property
    def export_hf(self) -> Path:
        return self.export / "hf"

    @property
    def export_gguf(self) -> Path:
        return self.export / "gguf"

    # --- inside review/ (labeling package) ------------------------------------------------------
    @property
    def push_json(self) -> Path:  # what `review push` sent where (dataset names, ids, api_url)
        return self.review / "push.json"

    @property
    def reviews(self) -> Path:  # every pulled response, one row per (record, user)
        return self.review / "reviews"

    @property
    def approved(self) -> Path:  # the approved rows of `review export`: what train uses once they exist
        return self.review_export / "approved"

    # --- inside serve/, decide/ and abtest/ (decision package) ---------------------------------
    @property
    def serve_benchmark(self) -> Path:  # benchmarks/serving.py: measured tasks/s per quantization
        return self.serve / "benchmark.json"

    @property
    def cost_plot(self) -> Path:  # decide's cost vs volume chart (only when every cost is known)
        return self.decide / "cost_vs_volume.png"

    @property
    def shadow_log(self) -> Path:  # `abtest --shadow`: both arms' answers, one JSON line per input
        return self.abtest / "shadow.jsonl"

    # --- inside traffic/ (curation package: real inputs labelled by the teacher) ---------------
    @property
    def traffic(self) -> Path:
        return self.root / "traffic"

    @property
    def traffic_rows(self) -> Path:  # teacher-labelled real rows, generate's columns: curate reads them
        return self.traffic / "rows"

    @property
    def traffic_dev(self) -> Path:  # the dev split (id, text, label, label_source): eval scores on it
        return self.traffic / "dev"
