"""`distilforge export RUN --format hf|gguf [--quant q8_0|q4_k_m]`: ship the kept student.

What comes out, under RUN/export/:
    hf/                          merged model (adapter folded in, fp32), tokenizer, chat template,
                                 README.md (HF model card, library_name: transformers), export.json
    gguf/<task>-<adapter8>-f16.gguf      llama.cpp's own converter on hf/
    gguf/<task>-<adapter8>-q8_0.gguf     quantized from the f16 file by llama.cpp (q4_k_m likewise)
    gguf/<file>.json                     beside each GGUF: what it is vouched by

Why these choices:
* Only a student that is vouched for ships: a train manifest, an eval of *this* adapter (the
  adapter hash in eval/metrics.json equals the one in the train manifest and on disk), an intact
  held-out lock that eval and training both used, and the contamination gate re-run on the
  training rows against today's lock (a lock replaced after training could overlap them). Any
  miss is one `ExportError` line; nothing is written.
* The chat template of the export inserts the task's training prompt as the system message when a
  request has none, so a plain client (transformers, vLLM, llama.cpp, the `serve` front) sends only
  the input text and the model sees exactly the prompt it was trained on.
* GGUF conversion runs llama.cpp's `convert_hf_to_gguf.py` + `gguf-py` from the llama-cpp-python
  sdist the embedded server is built from (cached by training/setup_converter.sh), so the file
  format matches the server's llama.cpp revision; quantization calls the server's own bound
  `llama_model_quantize`. No extra binary, nothing downloaded at run time.
* The file name carries the adapter hash: the embedded server keys its state by file name, so two
  different students never share a server by accident.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from distilforge.assets import cache_dir
from distilforge.errors import RuntimeFailure, UserError
from distilforge.atomic import atomic_path, atomic_write_json
from distilforge.layout import Run
from distilforge.manifest import sha256_file
from distilforge.records import Metrics, ModelScore, TrainResult
from distilforge.sources import verified_source

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec

LLAMA_VER = "0.3.36"
QUANTS = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama_ftype values (LLAMA_FTYPE_MOSTLY_*)
FORMATS = ("hf", "gguf")


class ExportError(UserError, ValueError):
    """The run cannot be exported as asked (not vouched for, or bad option)."""


class ConvertError(RuntimeFailure, RuntimeError):
    """llama.cpp's converter or quantizer failed."""


def _metrics(run: Path) -> Metrics | None:
    return Metrics.read(run, ExportError, hint=": re-run `distilforge eval RUN`")


def vouch(run: Path, spec: TaskSpec) -> dict:
    """What an export is vouched by, or an ExportError saying why the student may not ship."""
    from heldout.lock import HeldoutError, verify
    from heldout.stages import trained_prompt
    from training.common import dir_hash, with_prompts
    from training.stages import ContaminationError, contamination_gate

    r = Run(run)
    tm = TrainResult.read(r, ExportError)
    if not tm:
        raise ExportError(f"{r.train}: no trained student; run `distilforge train {run}` first")
    adapter = r.train / (tm.adapter or "adapter")
    if not adapter.is_dir():
        raise ExportError(f"{adapter}: the kept adapter is missing; re-run `distilforge train {run}`")
    on_disk = dir_hash(adapter)
    if on_disk != tm.adapter_sha256:
        raise ExportError(f"{adapter}: adapter changed since training (sha256 {on_disk[:12]} != "
                          f"{str(tm.adapter_sha256)[:12]} in train/manifest.json); re-run train and eval")
    m = _metrics(run)
    if not m:
        raise ExportError(f"refusing to export an unevaluated student: {r.metrics} is missing; "
                          f"run `distilforge eval {run}` first")
    if m.adapter_sha256 != tm.adapter_sha256:
        raise ExportError(f"refusing to export: eval/metrics.json scored another adapter "
                          f"({str(m.adapter_sha256)[:12]}, kept is {str(tm.adapter_sha256)[:12]}); "
                          f"run `distilforge eval {run}`")
    try:
        lock = verify(spec.heldout, spec, r.heldout)
    except HeldoutError as e:
        raise ExportError(f"refusing to export: {e}") from None
    for what, h in (("eval", m.heldout_sha256), ("train", tm.heldout_lock_sha256)):
        if h != lock["sha256"]:
            raise ExportError(f"refusing to export: {what} used held-out lock {str(h)[:12]}, the run's lock is "
                              f"{lock['sha256'][:12]}; re-run train and eval")
    try:
        src, ds, h = verified_source(run)  # re-hashed: data edited since it was written is refused
    except UserError as e:
        raise ExportError(f"refusing to export: {e}") from None
    if h != tm.data_sha256:
        raise ExportError(f"refusing to export: {src} changed since the adapter was trained "
                          f"({h[:12]} != {str(tm.data_sha256)[:12]}); re-run train and eval")
    try:
        contamination_gate(spec, run, ("training", with_prompts(ds, spec, trained_prompt(spec, tm.model_dump())[0])))
    except ContaminationError as e:
        raise ExportError(f"refusing to export: the student failed the contamination gate: "
                          f"{str(e).removeprefix('refusing to train: ')}") from None
    student = m.models.get("student") or ModelScore()
    return {"task": spec.name, "type": spec.type, "adapter_sha256": tm.adapter_sha256,
            "heldout_lock_sha256": lock["sha256"], "heldout_n": m.n,
            "training_data": {"source": src, "sha256": h, "rows": len(ds)},
            "contamination_gate": {"passed": True, "rows_checked": len(ds), "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "eval": {"metrics_sha256": sha256_file(r.metrics), "n": m.n,
                     "student": {k: getattr(student, k) for k in ("accuracy", "accuracy_ci", "macro_f1")},
                     "kept": (student.kept or {}).get("which")},
            "base_model": tm.base_model}


def training_chat_template(template: str, system: str) -> str:
    """`template` with the training system prompt inserted when the request has no system message."""
    lit = json.dumps(system, ensure_ascii=True)  # a JSON string literal is a valid Jinja string literal
    pre = ("{%- if messages and messages[0]['role'] != 'system' %}"
           f"{{%- set messages = [{{'role': 'system', 'content': {lit}}}] + messages %}}"
           "{%- endif %}")
    return pre + template


def export_hf(run: Path, spec: TaskSpec, info: dict, out: Path | None = None) -> Path:
    """Merged HF folder with the training prompt baked into its chat template, card, export.json."""
    from distilforge.card import render_card
    from distilforge.models import load_tokenizer, merge_adapter, student_base_dir
    from heldout.stages import trained_prompt

    r = Run(run)
    tm = TrainResult.read(r, ExportError) or TrainResult()
    base = tm.base_dir if Path(tm.base_dir or "/nonexistent").exists() else student_base_dir(tm.base_model)
    dest = Path(out or r.export_hf)
    with atomic_path(dest, is_dir=True) as tmp:  # a refusal below leaves an earlier export as it was
        merge_adapter(base, r.train / (tm.adapter or "adapter"), tmp)
        tok = load_tokenizer(str(tmp))
        if not tok.chat_template:
            raise ExportError(f"{tm.base_model}: the student's tokenizer has no chat template to serve it with")
        # the prompt the kept adapter was trained with (train/manifest.json), not today's spec's
        tok.chat_template = training_chat_template(tok.chat_template, trained_prompt(spec, tm.model_dump())[1])
        tok.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(render_card(run, _metrics(run), library="transformers"))
        atomic_write_json(tmp / "export.json", {**info, "format": "hf", "created": _now()})
    return dest


def converter_dir() -> Path:
    """The cached llama.cpp converter (extracted once from the sdist by setup_converter.sh)."""
    d = cache_dir() / "converter" / f"llama.cpp-{LLAMA_VER}"
    if not (d / "convert_hf_to_gguf.py").exists():
        script = Path(__file__).with_name("setup_converter.sh")
        r = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                           env={**os.environ, "PIP": str(Path(sys.executable).with_name("pip"))})
        if r.returncode != 0 or not (d / "convert_hf_to_gguf.py").exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConvertError(f"GGUF converter not cached in {d} and {script.name} failed: {tail[0]}")
    return d


def convert_to_gguf(hf_dir: Path, dest: Path, name: str) -> dict:
    """HF folder -> f16 GGUF with llama.cpp's convert_hf_to_gguf.py (vendored gguf-py first)."""
    conv = converter_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(conv / "gguf-py"), str(conv)]
                                                     + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
           "NO_LOCAL_GGUF": "1"}  # the PYTHONPATH above already puts the vendored gguf-py first
    t0 = time.time()
    with atomic_path(dest) as tmp:
        cmd = [sys.executable, str(conv / "convert_hf_to_gguf.py"), str(hf_dir), "--outfile", str(tmp),
               "--outtype", "f16", "--model-name", name]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0 or not tmp.exists():
            lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
            raise ConvertError(f"convert_hf_to_gguf.py failed (exit {r.returncode}): "
                               f"{lines[-1] if lines else 'no output'}")
    return {"seconds": round(time.time() - t0, 2), "converter": (conv / "SOURCE").read_text().strip().splitlines()}


def quantize(src: Path, dest: Path, quant: str) -> dict:
    """llama.cpp's own quantizer through llama-cpp-python's binding (the server's library)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant]
    params.nthread = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    t0 = time.time()
    with atomic_path(dest) as tmp:
        with _stderr_to(dest.with_name("quantize.log")):  # llama.cpp prints every tensor on fd 2
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.exists():
            raise ConvertError(f"llama_model_quantize {src.name} -> {quant} failed (code {rc})")
    return {"seconds": round(time.time() - t0, 2)}


@contextlib.contextmanager
def _stderr_to(log: Path):
    """Send the C library's stderr (fd 2) to `log` for the duration (Python's own stderr too)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "ab") as fh:
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def gguf_name(info: dict, quant: str) -> str:
    return f"{info['task']}-{info['adapter_sha256'][:8]}-{quant}.gguf"


def export_gguf(run: Path, spec: TaskSpec, info: dict, quant: str = "f16") -> Path:
    """f16 GGUF from the merged export (made first if needed), then the quantized file."""
    out = Run(run).export_gguf
    out.mkdir(parents=True, exist_ok=True)
    hf = Run(run).export_hf
    if _vouched_by(hf / "export.json") != info["adapter_sha256"]:
        export_hf(run, spec, info)
    f16 = out / gguf_name(info, "f16")
    meta_f16 = f16.with_suffix(".json")
    if not f16.exists() or _vouched_by(meta_f16) != info["adapter_sha256"]:
        conv = convert_to_gguf(hf, f16, f"{spec.name}-student")
        atomic_write_json(meta_f16, {**info, "format": "gguf", "quant": "f16", "file": f16.name,
                                     "bytes": f16.stat().st_size, "sha256": sha256_file(f16), "convert": conv,
                                     "created": _now()})
    if quant == "f16":
        return f16
    dest = out / gguf_name(info, quant)
    q = quantize(f16, dest, quant)
    atomic_write_json(dest.with_suffix(".json"), {**info, "format": "gguf", "quant": quant, "file": dest.name,
                                                  "bytes": dest.stat().st_size, "sha256": sha256_file(dest),
                                                  "quantized_from": f16.name, "quantize": q,
                                                  "convert": json.loads(meta_f16.read_text()).get("convert"),
                                                  "created": _now()})
    return dest


def _vouched_by(p: Path) -> str | None:
    try:
        return json.loads(p.read_text()).get("adapter_sha256")
    except (OSError, json.JSONDecodeError):
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def export(run: Path, spec: TaskSpec, fmt: str = "hf", quant: str | None = None) -> Path:
    """Vouch, then write the export; returns the folder (hf) or the .gguf file."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quant is not None and fmt != "gguf":
        raise ExportError("--quant: only with --format gguf")
    quant = quant or ("f16" if fmt == "gguf" else None)
    if quant is not None and quant not in QUANTS:
        raise ExportError(f"--quant: must be one of {', '.join(QUANTS)}, got {quant!r}")
    info = vouch(run, spec)
    if fmt == "hf":
        return export_hf(run, spec, info)
    return export_gguf(run, spec, info, quant)


def find_gguf(run: Path, quant: str) -> tuple[Path, dict]:
    """The exported GGUF of the run's kept adapter at `quant` (ExportError when not exported)."""
    r = Run(run)
    tm = TrainResult.read(r, ExportError)
    h = tm.adapter_sha256 if tm else None
    if not h:
        raise ExportError(f"{r.train}: no trained student; run `distilforge train {run}` first")
    for meta in sorted(r.export_gguf.glob(f"*-{quant}.json")):
        info = json.loads(meta.read_text())
        f = meta.with_name(info.get("file", ""))
        if info.get("adapter_sha256") == h and f.is_file():
            return f, info
    raise ExportError(f"{r.export_gguf}: no {quant} GGUF of the kept adapter; "
                      f"run `distilforge export {run} --format gguf --quant {quant}` first")
