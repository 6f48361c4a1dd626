"""SQLite plumbing for the search engine: connections, the FTS5 text index and the vector cache.

Why this shape:
- Argilla's own tables are the truth. Every query reads them through a plain `sqlite3` connection
  (the server writes through aiosqlite; the database runs in WAL mode so reads never block writes).
- The only derived data is the FTS5 text index, kept in a separate file attached as schema `fts`:
  one FTS5 table per dataset (bm25 statistics per dataset, like one ES index per dataset), one
  column per record field, rowids mapped to record ids through `fts.docs`. It can be deleted and
  rebuilt at any time (`create_index` backfills; `argilla_server search-engine reindex` too).
- Blocking sqlite calls run on a small thread pool so the server's event loop keeps serving.
- Vectors are parsed from JSON once into a normalized float32 matrix per vector setting and
  reloaded only when the table's fingerprint (count, last update) changes.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

FTS_TOKENIZER = "unicode61 remove_diacritics 2"
_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def argilla_db_path() -> Path:
    """Path of Argilla's SQLite file, from the server's own settings (ARGILLA_DATABASE_URL)."""
    from argilla_server.settings import settings
    from sqlalchemy import make_url

    url = make_url(settings.database_url)
    if not url.drivername.startswith("sqlite") or not url.database:
        raise RuntimeError("the distilforge-sqlite search engine needs a file-backed SQLite database")
    return Path(url.database)


def fts_db_path() -> Path:
    override = os.environ.get("DISTILFORGE_ARGILLA_FTS_PATH")
    return Path(override) if override else argilla_db_path().with_name("search-index.db")


def user_rand(seed: str, record_id: str) -> float:
    """Stable pseudo-random number in [0, 1) per (user, record): each annotator gets their own queue
    order, like ES's `random_score` seeded with the user id."""
    digest = hashlib.blake2b(f"{seed}:{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def term_text(json_type: str, value: Any) -> Optional[str]:
    """How an ES keyword field would spell a JSON scalar (metadata terms arrive as strings)."""
    if json_type == "true":
        return "true"
    if json_type == "false":
        return "false"
    if json_type in ("null", "object", "array") or value is None:
        return None
    return str(value)


class Store:
    """Per-process access point; cheap to share across the short-lived engine instances Argilla
    creates for every request."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._pid = os.getpid()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()  # held while (re)building an FTS table
        self._vectors: Dict[str, "VectorMatrix"] = {}

    # -- connections -------------------------------------------------------------------------
    def _reset_after_fork(self) -> None:
        # rq forks a work horse per job: threads and sqlite handles do not survive a fork.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._local = threading.local()
            self._executor = None
            self._vectors = {}

    def conn(self) -> sqlite3.Connection:
        self._reset_after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(argilla_db_path()), timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("ATTACH DATABASE ? AS fts", (str(fts_db_path()),))
            conn.execute("PRAGMA fts.journal_mode = WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS fts.docs (rid INTEGER PRIMARY KEY, "
                         "record_id TEXT NOT NULL UNIQUE, dataset_id TEXT NOT NULL)")
            conn.execute("CREATE INDEX IF NOT EXISTS fts.docs_dataset ON docs (dataset_id)")
            conn.execute("CREATE TABLE IF NOT EXISTS fts.indexes (dataset_id TEXT PRIMARY KEY, "
                         "fields TEXT NOT NULL)")
            conn.create_function("df_rand", 2, user_rand, deterministic=True)
            self._local.conn = conn
        return conn

    async def run(self, fn: Callable, *args: Any) -> Any:
        """Run `fn(conn, *args)` on the engine's thread pool."""
        self._reset_after_fork()
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="df-search")
            executor = self._executor
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, lambda: fn(self.conn(), *args))

    # -- FTS index ---------------------------------------------------------------------------
    @staticmethod
    def fts_table(dataset_hex: str) -> str:
        return f"ds_{dataset_hex}"

    @staticmethod
    def dataset_fields(conn: sqlite3.Connection, dataset_hex: str) -> List[Tuple[str, str]]:
        rows = conn.execute("SELECT name, settings FROM fields WHERE dataset_id = ? "
                            "ORDER BY inserted_at, name", (dataset_hex,)).fetchall()
        return [(name, (json.loads(settings or "{}") or {}).get("type", "text")) for name, settings in rows]

    def indexed_fields(self, conn: sqlite3.Connection, dataset_hex: str) -> Optional[List[str]]:
        row = conn.execute("SELECT fields FROM fts.indexes WHERE dataset_id = ?", (dataset_hex,)).fetchone()
        return json.loads(row[0]) if row else None

    def ensure_index(self, conn: sqlite3.Connection, dataset_hex: str) -> List[str]:
        """Create (and backfill) the dataset's FTS table if missing or built for other fields."""
        wanted = [name for name, _ in self.dataset_fields(conn, dataset_hex)]
        if self.indexed_fields(conn, dataset_hex) == wanted:
            return wanted
        with self._index_lock:  # one builder per process; BEGIN IMMEDIATE serializes across processes
            table = self.fts_table(dataset_hex)
            cols = ", ".join(f"f{i}" for i in range(len(wanted))) or "f0"
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                if self.indexed_fields(conn, dataset_hex) == wanted:
                    return wanted
                conn.execute(f"DROP TABLE IF EXISTS fts.{table}")
                conn.execute("DELETE FROM fts.docs WHERE dataset_id = ?", (dataset_hex,))
                conn.execute(f"CREATE VIRTUAL TABLE fts.{table} USING fts5({cols}, "
                             f"tokenize = '{FTS_TOKENIZER}')")
                conn.execute("INSERT OR REPLACE INTO fts.indexes (dataset_id, fields) VALUES (?, ?)",
                             (dataset_hex, json.dumps(wanted)))
            ids = [row[0] for row in conn.execute("SELECT id FROM records WHERE dataset_id = ?", (dataset_hex,))]
            for start in range(0, len(ids), 500):
                self.upsert_records(conn, dataset_hex, ids[start:start + 500], ensure=False)
        return wanted

    def drop_index(self, conn: sqlite3.Connection, dataset_hex: str) -> None:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"DROP TABLE IF EXISTS fts.{self.fts_table(dataset_hex)}")
            conn.execute("DELETE FROM fts.docs WHERE dataset_id = ?", (dataset_hex,))
            conn.execute("DELETE FROM fts.indexes WHERE dataset_id = ?", (dataset_hex,))

    @staticmethod
    def _field_text(kind: str, value: Any) -> str:
        if value is None or kind == "image":
            return ""
        if kind == "chat" and isinstance(value, list):
            return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
        if isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False)

    def upsert_records(self, conn: sqlite3.Connection, dataset_hex: str, record_hexes: Iterable[str],
                       ensure: bool = True) -> None:
        """(Re)index the text of these records, read back from Argilla's `records` table."""
        record_hexes = list(record_hexes)
        if not record_hexes:
            return
        if ensure:
            self.ensure_index(conn, dataset_hex)  # may backfill everything, these included
        kinds = dict(self.dataset_fields(conn, dataset_hex))
        names = self.indexed_fields(conn, dataset_hex) or []
        table = self.fts_table(dataset_hex)
        marks = ",".join("?" * len(record_hexes))
        rows = conn.execute(f"SELECT id, fields FROM records WHERE dataset_id = ? AND id IN ({marks})",
                            (dataset_hex, *record_hexes)).fetchall()
        present = {rid for rid, _ in rows}
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for rid in record_hexes:
                if rid not in present:  # deleted meanwhile: drop from the index
                    self._delete_one(conn, table, rid)
            for rid, fields_json in rows:
                fields = json.loads(fields_json or "{}")
                texts = [self._field_text(kinds.get(n, "text"), fields.get(n)) for n in names] or [""]
                conn.execute("INSERT OR IGNORE INTO fts.docs (record_id, dataset_id) VALUES (?, ?)",
                             (rid, dataset_hex))
                doc = conn.execute("SELECT rid FROM fts.docs WHERE record_id = ?", (rid,)).fetchone()[0]
                conn.execute(f"DELETE FROM fts.{table} WHERE rowid = ?", (doc,))
                cols = ", ".join(f"f{i}" for i in range(len(texts)))
                conn.execute(f"INSERT INTO fts.{table} (rowid, {cols}) VALUES (?{', ?' * len(texts)})",
                             (doc, *texts))

    @staticmethod
    def _delete_one(conn: sqlite3.Connection, table: str, record_hex: str) -> None:
        doc = conn.execute("SELECT rid FROM fts.docs WHERE record_id = ?", (record_hex,)).fetchone()
        if doc:
            conn.execute(f"DELETE FROM fts.{table} WHERE rowid = ?", (doc[0],))
            conn.execute("DELETE FROM fts.docs WHERE rid = ?", (doc[0],))

    def delete_records(self, conn: sqlite3.Connection, dataset_hex: str, record_hexes: Iterable[str]) -> None:
        if self.indexed_fields(conn, dataset_hex) is None:
            return
        table = self.fts_table(dataset_hex)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for rid in record_hexes:
                self._delete_one(conn, table, rid)

    # -- vectors -----------------------------------------------------------------------------
    def vectors(self, conn: sqlite3.Connection, settings_hex: str) -> "VectorMatrix":
        fingerprint = conn.execute(
            "SELECT COUNT(*), MAX(updated_at), MAX(inserted_at) FROM vectors WHERE vector_settings_id = ?",
            (settings_hex,)).fetchone()
        cached = self._vectors.get(settings_hex)
        if cached is not None and cached.fingerprint == fingerprint:
            return cached
        rows = conn.execute("SELECT record_id, value FROM vectors WHERE vector_settings_id = ?",
                            (settings_hex,)).fetchall()
        matrix = VectorMatrix(fingerprint, [r[0] for r in rows], [json.loads(r[1]) for r in rows])
        self._vectors[settings_hex] = matrix
        return matrix

    def forget_vectors(self) -> None:
        self._vectors = {}


class VectorMatrix:
    """Row-normalized float32 matrix of one vector setting, with record-id lookup."""

    def __init__(self, fingerprint: tuple, ids: List[str], values: List[List[float]]) -> None:
        self.fingerprint = fingerprint
        self.ids = np.array(ids, dtype=object)
        self.row = {rid: i for i, rid in enumerate(ids)}
        raw = np.asarray(values, dtype=np.float32) if values else np.zeros((0, 1), np.float32)
        norms = np.linalg.norm(raw, axis=1, keepdims=True) if len(raw) else np.ones((0, 1), np.float32)
        self.matrix = raw / np.where(norms == 0, 1, norms)


STORE = Store()
