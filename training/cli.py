"""`distilforge train`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distilforge.errors import DistilforgeError
from distilforge.layout import Run
from distilforge.runctx import ProfileOpt, RespecOpt, RunArg, SpecOpt, cli_errors, fail, prepare, set_threads


@cli_errors
def train_cmd(run: Path = RunArg, spec: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
              respec: bool = RespecOpt,
              config: Optional[Path] = typer.Option(None, "--config",
                                                    help="Training YAML; overrides the spec's `training` block."),
              resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of this config."),
              force: bool = typer.Option(False, "--force", help="Retrain even if inputs are unchanged.")):
    """LoRA SFT (+ optional DPO) of the student on the approved export (or the curated set)."""
    from training.stages import train_stage

    try:
        s = prepare(run, spec, profile, respec=respec)
        if config is not None:
            from distilforge.atomic import atomic_write_json
            from training.config import apply_training_file

            s = apply_training_file(s, config)
            # record what was trained, so a later `eval RUN` / `train RUN` sees the same block
            raw = json.loads(Run(run).spec_json.read_text())
            # `_spec_training`: the block as the spec had it, what a later --spec is compared with
            atomic_write_json(Run(run).spec_json, {**raw, "training": s.training.model_dump(mode="json"),
                                                  "student": s.student.model_dump(mode="json"),
                                                  "_spec_training": raw.get("_spec_training", raw["training"]),
                                                  "_spec_student": raw.get("_spec_student", raw.get("student")),
                                                  "_training_config": str(config)})
        set_threads()
        train_stage(s, run, force=force, resume=resume)
    except DistilforgeError:
        raise  # cli_errors: one line, the class's exit code
    except (FileNotFoundError, ValueError) as e:
        # not DistilforgeErrors (a missing stage output, bad training data, a library refusing a value):
        # rc 2 and the message as this command always gave them
        fail(str(e))


def export_cmd(run: Path = typer.Argument(..., help="Run directory with a trained and evaluated student."),
               fmt: str = typer.Option("hf", "--format", help="hf (merged folder) | gguf (llama.cpp)."),
               quant: Optional[str] = typer.Option(None, "--quant", help="gguf only: f16 (default) | q8_0 | q4_k_m.")):
    """Ship the student: merged HF folder or GGUF (quantized), vouched by its held-out eval."""
    from training.export import export

    s = prepare(run)
    set_threads()
    out = export(run, s, fmt, quant)
    info = json.loads((out / "export.json" if out.is_dir() else out.with_suffix(".json")).read_text())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    acc = (info.get("eval") or {}).get("student") or {}
    typer.echo(f"exported {out} ({size / 1e6:.1f} MB); vouched by adapter {info['adapter_sha256'][:12]}, "
               f"held-out lock {info['heldout_lock_sha256'][:12]}, student accuracy {acc.get('accuracy')} "
               f"{acc.get('accuracy_ci')}")


def serve_cmd(target: str = typer.Argument(..., help="RUN directory to serve, or `status`, or `stop`."),
              name: Optional[str] = typer.Argument(None, help="stop: the task name or RUN (default: every served student)."),
              quant: str = typer.Option("q8_0", "--quant", help="Which exported GGUF: f16 | q8_0 | q4_k_m."),
              port: Optional[int] = typer.Option(None, "--port", help="Port of the OpenAI-compatible front (127.0.0.1)."),
              replicas: int = typer.Option(1, "--replicas", min=1, help="Single-thread llama.cpp servers (one per core).")):
    """`serve RUN`: the exported student on 127.0.0.1 (OpenAI chat API, task prompt and output format applied);
    `serve status`; `serve stop [NAME|RUN]`."""
    from training import serve as sv

    if target == "status":
        rows = sv.status()
        if not rows:
            typer.echo("no student served")
        for st in rows:
            typer.echo(f"{st['name']}: {st['base_url']} ({'healthy' if st['healthy'] else 'NOT healthy'}), "
                       f"{Path(st['gguf']).name}, {st['replicas']} replica(s), front pid {st['pid']}")
        return
    if target == "stop":
        key = name
        if name and Run(name).spec_json.exists():
            key = prepare(Path(name)).name
        stopped = sv.stop(key)
        typer.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing to stop")
        return
    run = Path(target)
    if not run.is_dir():
        raise sv.ServeError(f"{run}: no such run directory (or say `serve status` / `serve stop`)")
    st = sv.serve(run, prepare(run), quant=quant, port=port, replicas=replicas)
    typer.echo(f"{'already serving' if st.get('reused') else 'serving'} {st['name']} at {st['base_url']} "
               f"({Path(st['gguf']).name}, {st['replicas']} replica(s)); stop with `distilforge serve stop {st['name']}`")
