"""`SQLiteSearchEngine`: Argilla's SearchEngine answered from Argilla's own SQLite tables.

Argilla 2.8 needs Elasticsearch/OpenSearch only for search; everything it searches is already in
its SQL database. This engine (registered as ARGILLA_SEARCH_ENGINE=distilforge-sqlite) reads the
rows directly, so responses, suggestions, metadata and record status are never stale and there is
no second copy to keep in sync, except the FTS5 text index (bm25 ranking), which the
index/update/delete hooks maintain. Import this module in every process that looks engines up by
name: the server, the rq worker and the `argilla_server` CLI tools.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
from argilla_server.enums import MetadataPropertyType, SimilarityOrder
from argilla_server.models import Dataset, MetadataProperty, Record, Response, Suggestion, User, VectorSettings
from argilla_server.search_engine import (
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataMetrics,
    Order,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    TermsMetrics,
    TextQuery,
)
from argilla_server.search_engine import Filter

from labeling.server import ENGINE_NAME
from labeling.server.query import SQLBuilder, fts_expression, json_path
from labeling.server.store import STORE, Store, term_text

MAX_TERMS = 2**14  # ES engine's max_terms_size
MAX_SIMILARITY_RESULTS = 1000


@SearchEngine.register(engine_name=ENGINE_NAME)
class SQLiteSearchEngine(SearchEngine):
    """Stateless facade over the per-process `STORE`; Argilla creates one instance per request."""

    def __init__(self, store: Store = STORE) -> None:
        self.store = store

    @classmethod
    async def new_instance(cls) -> "SQLiteSearchEngine":
        return cls()

    async def close(self) -> None:
        # Connections are per thread and reused across requests; nothing to release per instance.
        return None

    async def ping(self) -> bool:
        def _ping(conn: sqlite3.Connection) -> bool:
            conn.execute("SELECT 1 FROM records LIMIT 1").fetchall()
            return True

        try:
            return await self.store.run(_ping)
        except sqlite3.Error:
            return False

    async def info(self) -> dict:
        return {"distribution": ENGINE_NAME, "version": sqlite3.sqlite_version, "text_search": "fts5-bm25"}

    # -- index configuration hooks -----------------------------------------------------------
    async def create_index(self, dataset: Dataset) -> None:
        await self.store.run(self.store.ensure_index, dataset.id.hex)

    async def delete_index(self, dataset: Dataset) -> None:
        await self.store.run(self.store.drop_index, dataset.id.hex)
        self.store.forget_vectors()

    async def configure_metadata_property(self, dataset: Dataset, metadata_property: MetadataProperty) -> None:
        # Metadata is read from the records' JSON column at query time: no mapping to maintain.
        return None

    async def configure_index_vectors(self, vector_settings: VectorSettings) -> None:
        self.store.forget_vectors()

    # -- write hooks (all run after Argilla committed the rows) ------------------------------
    async def index_records(self, dataset: Dataset, records: Iterable[Record]) -> None:
        ids = [record.id.hex for record in records]
        await self.store.run(self.store.upsert_records, dataset.id.hex, ids)

    async def partial_record_update(self, record: Record, **update: Any) -> None:
        # Status and other columns are read live; only field text lives in the FTS index.
        if "fields" in update:
            await self.store.run(self.store.upsert_records, record.dataset_id.hex, [record.id.hex])

    async def delete_records(self, dataset: Dataset, records: Iterable[Record]) -> None:
        ids = [record.id.hex for record in records]
        await self.store.run(self.store.delete_records, dataset.id.hex, ids)

    async def update_record_response(self, response: Response) -> None:
        return None  # responses are read from the `responses` table at query time

    async def delete_record_response(self, response: Response) -> None:
        return None

    async def update_record_suggestion(self, suggestion: Suggestion) -> None:
        return None  # suggestions are read from the `suggestions` table at query time

    async def delete_record_suggestion(self, suggestion: Suggestion) -> None:
        return None

    # -- progress and metrics ----------------------------------------------------------------
    async def get_dataset_progress(self, dataset: Dataset) -> dict:
        if dataset.is_draft:
            return {}

        def _progress(conn: sqlite3.Connection) -> dict:
            rows = conn.execute("SELECT status, COUNT(*) FROM records WHERE dataset_id = ? GROUP BY status",
                                (dataset.id.hex,)).fetchall()
            return {"total": sum(n for _, n in rows), **{status: n for status, n in rows}}

        return await self.store.run(_progress)

    async def get_dataset_user_progress(self, dataset: Dataset, user: User) -> dict:
        if dataset.is_draft:
            return {}

        def _progress(conn: sqlite3.Connection) -> dict:
            rows = conn.execute(
                "SELECT rs.status, COUNT(*) FROM responses rs JOIN records r ON r.id = rs.record_id "
                "WHERE r.dataset_id = ? AND rs.user_id = ? GROUP BY rs.status",
                (dataset.id.hex, user.id.hex)).fetchall()
            return {"total": sum(n for _, n in rows), **{status: n for status, n in rows}}

        return await self.store.run(_progress)

    async def compute_metrics_for(self, metadata_property: MetadataProperty) -> MetadataMetrics:
        dataset_hex = metadata_property.dataset_id.hex
        path = json_path(metadata_property.name)
        kind = metadata_property.type

        def _terms(conn: sqlite3.Connection) -> TermsMetrics:
            counts: Dict[str, set] = {}
            total = 0
            for rid, jtype, value in conn.execute(
                    "SELECT r.id, je.type, je.value FROM records r, json_each(r.metadata, ?) je "
                    "WHERE r.dataset_id = ?", (path, dataset_hex)):
                term = term_text(jtype, value)
                if term is None:
                    continue
                total += 1  # ES value_count: every element of a list counts
                counts.setdefault(term, set()).add(rid)  # terms agg doc_count: once per record
            ranked = sorted(((t, len(ids)) for t, ids in counts.items()), key=lambda kv: (-kv[1], kv[0]))
            return TermsMetrics(total=total, values=[TermsMetrics.TermCount(term=t, count=n)
                                                     for t, n in ranked[:MAX_TERMS]])

        def _numeric(conn: sqlite3.Connection) -> Tuple[Any, Any]:
            return conn.execute(
                "SELECT MIN(je.value), MAX(je.value) FROM records r, json_each(r.metadata, ?) je "
                "WHERE r.dataset_id = ? AND je.type IN ('integer', 'real')", (path, dataset_hex)).fetchone()

        if kind == MetadataPropertyType.terms:
            return await self.store.run(_terms)
        low, high = await self.store.run(_numeric)
        if kind == MetadataPropertyType.integer:
            return IntegerMetadataMetrics(min=None if low is None else int(low),
                                          max=None if high is None else int(high))
        return FloatMetadataMetrics(min=low, max=high)

    # -- search ------------------------------------------------------------------------------
    async def search(
        self,
        dataset: Dataset,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        sort: Optional[List[Order]] = None,
        offset: int = 0,
        limit: int = 100,
        user_id: Optional[Any] = None,
    ) -> SearchResponses:
        seed = str(user_id) if user_id else None

        def _search(conn: sqlite3.Connection) -> SearchResponses:
            built = self._select(conn, dataset, query, filter)
            if built is None:
                return SearchResponses(items=[], total=0)
            with_clause, sql, params, builder, has_text = built
            if sort:
                score = "NULL"
                order = builder.order_by(sort) + ["r.inserted_at ASC", "r.id ASC"]
            else:
                score = "t.score" if has_text else "1.0"
                if seed is not None:  # ES function_score(random_score) multiplies the query score
                    score = f"({score} * df_rand({builder.p(seed)}, r.id))"
                order = ["score DESC", "r.inserted_at ASC", "r.id ASC"]
            params.update(builder.params)
            params.update(lim=int(limit), off=int(offset))
            rows = conn.execute(
                f"{with_clause}SELECT r.id, {score} AS score, COUNT(*) OVER () AS total {sql} "
                f"ORDER BY {', '.join(order)} LIMIT :lim OFFSET :off", params).fetchall()
            if rows:
                total = rows[0][2]
            else:
                total = conn.execute(f"{with_clause}SELECT COUNT(*) {sql}", params).fetchone()[0]
            return SearchResponses(items=[SearchResponseItem(record_id=rid, score=sc) for rid, sc, _ in rows],
                                   total=total)

        return await self.store.run(_search)

    def _select(self, conn: sqlite3.Connection, dataset: Dataset, query: Optional[Union[TextQuery, str]],
                flt: Optional[Filter]) -> Optional[Tuple[str, str, dict, SQLBuilder, bool]]:
        """(WITH clause, FROM/WHERE clause) for a dataset's records matching a text query and filters.

        The FTS match is a MATERIALIZED CTE so SQLite runs it once and joins records by primary
        key; left to the planner it probes the FTS table once per record (~0.4 s at 10k records).
        Returns None when the text query cannot match anything (no searchable terms)."""
        dataset_hex = dataset.id.hex
        questions = {name: (qid, (json.loads(settings or "{}") or {}).get("type"))
                     for qid, name, settings in conn.execute(
                         "SELECT id, name, settings FROM questions WHERE dataset_id = ?", (dataset_hex,))}
        builder = SQLBuilder(dataset_hex, questions)
        params: Dict[str, Any] = {}
        source = "FROM records r"
        with_clause = ""
        where = ["r.dataset_id = :ds"]
        has_text = False
        if query is not None:
            text = TextQuery(q=query) if isinstance(query, str) else query
            expression, excluded = fts_expression(text.q)
            if expression is None and not excluded:
                return None
            fields = self.store.ensure_index(conn, dataset_hex)
            table = f"fts.{Store.fts_table(dataset_hex)}"
            name = Store.fts_table(dataset_hex)
            weights = ""
            column_filter = ""
            if text.field:
                if text.field not in fields:
                    raise ValueError(f"Field {text.field} not found in dataset {dataset.id}")
                col = fields.index(text.field)
                column_filter = f"f{col} : "
                weights = ", " + ", ".join("1.0" if i == col else "0.0" for i in range(len(fields)))
            if excluded:
                blocked = " OR ".join(excluded)
                where.append(f"r.id NOT IN (SELECT d.record_id FROM {table} JOIN fts.docs d "
                             f"ON d.rid = {name}.rowid WHERE {name} MATCH "
                             f"{builder.p(column_filter + '(' + blocked + ')')})")
            if expression is not None:
                has_text = True
                with_clause = (f"WITH t AS MATERIALIZED (SELECT d.record_id AS rid, "
                               f"-bm25({name}{weights}) AS score FROM {table} JOIN fts.docs d ON d.rid = {name}.rowid "
                               f"WHERE {name} MATCH {builder.p(column_filter + '(' + expression + ')')}) ")
                source = "FROM t CROSS JOIN records r ON r.id = t.rid"
        if flt is not None:
            where.append(builder.filter(flt))
        return with_clause, f"{source} WHERE {' AND '.join(where)}", params, builder, has_text

    async def similarity_search(
        self,
        dataset: Dataset,
        vector_settings: VectorSettings,
        value: Optional[List[float]] = None,
        record: Optional[Record] = None,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        max_results: int = 100,
        order: SimilarityOrder = SimilarityOrder.most_similar,
        threshold: Optional[float] = None,
    ) -> SearchResponses:
        if bool(value) == bool(record):
            raise ValueError("Must provide either vector value or record to compute the similarity search")
        k = max(0, min(int(max_results), MAX_SIMILARITY_RESULTS))

        def _similar(conn: sqlite3.Connection) -> SearchResponses:
            vectors = self.store.vectors(conn, vector_settings.id.hex)
            exclude = record.id.hex if record is not None else None
            if value:
                target = np.asarray(value, dtype=np.float32)
            elif exclude in vectors.row:
                target = vectors.matrix[vectors.row[exclude]]
            else:
                raise ValueError("Cannot find a vector value to apply with provided info")
            norm = float(np.linalg.norm(target))
            target = target / (norm or 1.0)
            rows = np.arange(len(vectors.ids))
            if query is not None or filter is not None:
                built = self._select(conn, dataset, query, filter)
                if built is None:
                    return SearchResponses(items=[], total=0)
                with_clause, sql, params, builder, _ = built
                params.update(builder.params)
                allowed = {rid for (rid,) in conn.execute(f"{with_clause}SELECT r.id {sql}", params)}
                rows = np.array([i for i, rid in enumerate(vectors.ids) if rid in allowed], dtype=np.int64)
            if exclude is not None and exclude in vectors.row:
                rows = rows[rows != vectors.row[exclude]]
            if len(rows) == 0 or k == 0:
                return SearchResponses(items=[], total=0)
            cosine = vectors.matrix[rows] @ target
            if order == SimilarityOrder.least_similar:
                cosine = -cosine  # ES searches with the inverted vector
            scores = (1.0 + cosine) / 2.0  # ES cosine similarity score
            top = np.argsort(-scores, kind="stable")[:k] if len(rows) <= 4 * k else None
            if top is None:
                part = np.argpartition(-scores, k - 1)[:k]
                top = part[np.argsort(-scores[part], kind="stable")]
            items = [SearchResponseItem(record_id=vectors.ids[rows[i]], score=float(scores[i])) for i in top]
            total = len(items)
            if threshold is not None:
                items = [item for item in items if item.score >= threshold]
            return SearchResponses(items=items, total=total)

        return await self.store.run(_similar)
