"""Building blocks of the report page (decision/report.py): escaping, number formats, tables,
"didn't run" notes and matplotlib charts embedded as base64 PNGs, so the page opens offline.

Kept apart from the sections so every section module shares one look and one set of formats.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

COLORS = ["#8c8c8c", "#dd8452", "#4c72b0", "#55a868", "#c44e52"]


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def num(x: Any, fmt: str = "{:,.0f}") -> str:
    if x is None:
        return "?"
    try:
        return fmt.format(x)
    except (ValueError, TypeError):
        return esc(x)


def _cell(c: Any) -> str:
    return esc(f"{c:.6g}" if isinstance(c, float) else c)


def usd(x: Any, nd: int = 4) -> str:
    return "?" if x is None else f"{'-' if x < 0 else ''}${abs(x):,.{nd}f}"


def table(header: list[str] | None, rows: list[list[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def not_run(what: str, path: Path) -> str:
    return f'<p class="not-run">{esc(what)} didn\'t run: <code>{esc(path)}</code> not found.</p>'


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def img(fig, alt: str) -> str:
    data = base64.b64encode(png_bytes(fig)).decode()
    return f'<img class="chart" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def columns(path: Path, cols: list[str]) -> dict[str, list]:
    """Only the named columns of a saved dataset (missing columns come back empty)."""
    from distilforge.manifest import load_dataset_dir

    ds = load_dataset_dir(path)
    return {c: (list(ds[c]) if c in ds.column_names else []) for c in cols}


def counts(values: list) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def ci_text(ci: Any) -> str:
    return "[" + ", ".join(num(c, "{:.3f}") for c in ci or []) + "]"
