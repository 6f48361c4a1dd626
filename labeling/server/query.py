"""Translate Argilla search-engine filters, sorts and text queries into SQL over Argilla's tables.

Why: the ES engine answers from a denormalized copy of each record; we answer from the rows
themselves (records, responses, suggestions, JSON metadata), with the same semantics:
- terms filters compare keyword spellings (numbers stored in JSON match their string form;
  a list value matches if any element does), range filters compare numbers or timestamps;
- response filters look at one user's responses when a user is given, and "pending" means
  "no response from that user" (or no response at all without a user);
- sorts put missing values last in both directions, like ES's default `missing: _last`.
"""
from __future__ import annotations

import re
import shlex
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple
from uuid import UUID

from argilla_server.search_engine import (
    AndFilter,
    Filter,
    MetadataFilterScope,
    Order,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SuggestionFilterScope,
    TermsFilter,
)

_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_TERM_SQL = ("(CASE je.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
             "ELSE CAST(je.value AS TEXT) END)")
_RECORD_COLUMNS = {"id", "external_id", "inserted_at", "updated_at", "status"}


def hexid(value: Any) -> Optional[str]:
    """Argilla stores UUIDs as 32-char hex in SQLite."""
    if isinstance(value, UUID):
        return value.hex
    try:
        return UUID(str(value)).hex
    except (ValueError, AttributeError):
        return None


def json_path(key: str) -> str:
    return '$."' + key.replace('"', '\\"') + '"'


def to_timestamp(value: Any) -> str:
    """ES date range bounds: ISO strings or epoch milliseconds -> Argilla's stored text format."""
    if isinstance(value, (int, float)):
        moment = datetime.fromtimestamp(value / 1000, tz=timezone.utc)
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.strftime(_TS_FORMAT)


class SQLBuilder:
    """Accumulates named parameters while rendering filter and sort expressions for one query."""

    def __init__(self, dataset_hex: str, questions: Dict[str, Tuple[str, str]]) -> None:
        self.params: Dict[str, Any] = {"ds": dataset_hex}
        self.questions = questions  # name -> (question hex id, question type)

    def p(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    # -- value matchers over a JSON document ------------------------------------------------
    def _json_terms(self, column: str, path: str, values: List[str]) -> str:
        texts = ", ".join(self.p(str(v)) for v in values)
        numbers = []
        for v in values:
            try:
                numbers.append(self.p(float(v)))
            except (TypeError, ValueError):
                pass
        numeric = (f" OR (je.type IN ('integer', 'real') AND je.value IN ({', '.join(numbers)}))"
                   if numbers else "")
        return (f"EXISTS (SELECT 1 FROM json_each({column}, {self.p(path)}) je "
                f"WHERE {_TERM_SQL} IN ({texts}){numeric})")

    def _json_range(self, column: str, path: str, ge: Any, le: Any) -> str:
        conds = ["je.type IN ('integer', 'real')"]
        if ge is not None:
            conds.append(f"je.value >= {self.p(float(ge))}")
        if le is not None:
            conds.append(f"je.value <= {self.p(float(le))}")
        return f"EXISTS (SELECT 1 FROM json_each({column}, {self.p(path)}) je WHERE {' AND '.join(conds)})"

    def _question(self, name: str) -> Tuple[str, str]:
        if name not in self.questions:
            raise ValueError(f"question `{name}` not found in dataset")
        return self.questions[name]

    # -- filters ----------------------------------------------------------------------------
    def filter(self, flt: Filter) -> str:
        if isinstance(flt, AndFilter):
            parts = [self.filter(f) for f in flt.filters]
            return "(" + " AND ".join(parts) + ")" if parts else "1"
        if not isinstance(flt, (TermsFilter, RangeFilter)):
            raise ValueError(f"cannot process filter {flt!r}")
        scope = flt.scope
        if isinstance(scope, MetadataFilterScope):
            path = json_path(scope.metadata_property)
            if isinstance(flt, TermsFilter):
                return self._json_terms("r.metadata", path, flt.values)
            return self._json_range("r.metadata", path, flt.ge, flt.le)
        if isinstance(scope, RecordFilterScope):
            return self._record_filter(flt, scope.property)
        if isinstance(scope, SuggestionFilterScope):
            return self._suggestion_filter(flt, scope)
        if isinstance(scope, ResponseFilterScope):
            return self._response_filter(flt, scope)
        raise ValueError(f"cannot process filter scope {scope!r}")

    def _record_filter(self, flt: Filter, prop: str) -> str:
        prop = str(getattr(prop, "value", prop))
        if prop not in _RECORD_COLUMNS:
            raise ValueError(f"cannot filter on record property `{prop}`")
        if isinstance(flt, TermsFilter):
            values = flt.values
            if prop == "id":
                values = [h for h in (hexid(v) for v in values) if h]
            if prop in ("inserted_at", "updated_at"):
                values = [to_timestamp(v) for v in values]
            if not values:
                return "0"
            return f"r.{prop} IN ({', '.join(self.p(str(v)) for v in values)})"
        conds = []
        for op, bound in ((">=", flt.ge), ("<=", flt.le)):
            if bound is not None:
                value = to_timestamp(bound) if prop in ("inserted_at", "updated_at") else bound
                conds.append(f"r.{prop} {op} {self.p(value)}")
        return "(" + " AND ".join(conds) + ")" if conds else "1"

    def _suggestion_filter(self, flt: Filter, scope: SuggestionFilterScope) -> str:
        qid, _ = self._question(scope.question)
        prop = str(scope.property or "value")
        where = f"s.record_id = r.id AND s.question_id = {self.p(qid)}"
        if prop in ("value", "score"):
            matcher = (self._json_terms(f"s.{prop}", "$", flt.values) if isinstance(flt, TermsFilter)
                       else self._json_range(f"s.{prop}", "$", flt.ge, flt.le))
        elif prop in ("agent", "type") and isinstance(flt, TermsFilter):
            matcher = f"s.{prop} IN ({', '.join(self.p(str(v)) for v in flt.values)})"
        else:
            raise ValueError(f"cannot filter suggestion property `{prop}` with {type(flt).__name__}")
        return f"EXISTS (SELECT 1 FROM suggestions s WHERE {where} AND {matcher})"

    def _response_filter(self, flt: Filter, scope: ResponseFilterScope) -> str:
        user = f" AND rs.user_id = {self.p(scope.user.id.hex)}" if scope.user is not None else ""
        if scope.question:
            self._question(scope.question)
            path = f'{json_path(scope.question)}.value'
            matcher = (self._json_terms('rs."values"', path, flt.values) if isinstance(flt, TermsFilter)
                       else self._json_range('rs."values"', path, flt.ge, flt.le))
            return f"EXISTS (SELECT 1 FROM responses rs WHERE rs.record_id = r.id{user} AND {matcher})"
        if scope.property == "status" and isinstance(flt, TermsFilter):
            statuses = [str(getattr(v, "value", v)) for v in flt.values]
            parts = []
            if "pending" in statuses:
                parts.append(f"NOT EXISTS (SELECT 1 FROM responses rs WHERE rs.record_id = r.id{user})")
            others = [s for s in statuses if s != "pending"]
            if others:
                marks = ", ".join(self.p(s) for s in others)
                parts.append(f"EXISTS (SELECT 1 FROM responses rs WHERE rs.record_id = r.id{user} "
                             f"AND rs.status IN ({marks}))")
            return "(" + " OR ".join(parts) + ")" if parts else "1"
        raise ValueError(f"cannot process response filter scope {scope!r}")

    # -- sorts ------------------------------------------------------------------------------
    def order_by(self, sort: List[Order]) -> List[str]:
        terms = []
        for order in sort:
            direction = "DESC" if str(getattr(order.order, "value", order.order)) == "desc" else "ASC"
            terms.append(f"{self._sort_expr(order.scope, direction)} {direction} NULLS LAST")
        return terms

    def _sort_expr(self, scope: Any, direction: str) -> str:
        pick = "MAX" if direction == "DESC" else "MIN"
        if isinstance(scope, MetadataFilterScope):
            return f"json_extract(r.metadata, {self.p(json_path(scope.metadata_property))})"
        if isinstance(scope, RecordFilterScope):
            prop = str(getattr(scope.property, "value", scope.property))
            if prop not in _RECORD_COLUMNS:
                raise ValueError(f"cannot sort on record property `{prop}`")
            return f"r.{prop}"
        if isinstance(scope, SuggestionFilterScope):
            qid, _ = self._question(scope.question)
            prop = str(scope.property or "value")
            column = f"json_extract(s.{prop}, '$')" if prop in ("value", "score") else f"s.{prop}"
            return (f"(SELECT {column} FROM suggestions s WHERE s.record_id = r.id "
                    f"AND s.question_id = {self.p(qid)})")
        if isinstance(scope, ResponseFilterScope):
            user = f" AND rs.user_id = {self.p(scope.user.id.hex)}" if scope.user is not None else ""
            if scope.question:
                _, qtype = self._question(scope.question)
                value = f'json_extract(rs."values", {self.p(json_path(scope.question) + ".value")})'
                agg = "AVG" if qtype == "rating" else pick  # ES nested sort uses mode=avg
            else:
                value, agg = "rs.status", pick
            return f"(SELECT {agg}({value}) FROM responses rs WHERE rs.record_id = r.id{user})"
        raise ValueError(f"cannot sort on scope {scope!r}")


_WORD = re.compile(r"\w", re.UNICODE)


def fts_expression(text: str) -> Tuple[Optional[str], List[str]]:
    """simple_query_string-like syntax -> (FTS5 expression of required terms, excluded terms).

    Terms are ANDed; `a | b` is OR; `"a phrase"`; `pre*` is a prefix; `-term` excludes. Each term is
    quoted so FTS5 runs it through the same tokenizer as the documents: `word5` is the token
    `word5` and never matches `word50`.
    """
    try:
        tokens = shlex.split(text, posix=True)
    except ValueError:  # unbalanced quote
        tokens = text.replace('"', " ").split()
    groups: List[List[str]] = [[]]
    excluded: List[str] = []
    pending_or = False
    for token in tokens:
        if token == "|":
            pending_or = True
            continue
        negate = token.startswith("-") and len(token) > 1
        token = token.lstrip("+-") if token[:1] in "+-" else token
        prefix = token.endswith("*")
        token = token.rstrip("*")
        if not _WORD.search(token):
            continue
        quoted = '"' + token.replace('"', '""') + '"' + ("*" if prefix else "")
        if negate:
            excluded.append(quoted)
        elif pending_or and groups[-1]:
            groups[-1].append(quoted)
        else:
            groups.append([quoted])
        pending_or = False
    parts = [g[0] if len(g) == 1 else "(" + " OR ".join(g) + ")" for g in groups if g]
    return (" AND ".join(parts) if parts else None), excluded
