"""``leaderboard.html``: the leaderboard as one self-contained page (no network at view time).

The table is plain HTML, readable without JavaScript; a small inline script sorts it by any column (click a
header) and filters rows by backbone, method family and budget. A run with several budgets adds its rankings
per budget below it. The run's plots are inlined as PNG data, and each row links its first seed's sample grid
(``samples/`` beside the page), shown on demand.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark import __version__
from benchmark.grid.store import SCHEMA_VERSION, cell_stem, now_iso

PLOTS = ("pareto_fid_vs_macs.png", "pareto_fid_vs_latency.png", "budget_curves.png")

SCRIPT = """
(function () {
  const table = document.getElementById("leaderboard");
  const body = table.tBodies[0];
  const filters = Array.from(document.querySelectorAll("select[data-filter]"));
  function sortValue(cell) {
    const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    const number = parseFloat(raw);
    return raw !== "" && !isNaN(number) && isFinite(raw) ? number : raw.toLowerCase();
  }
  Array.from(table.tHead.rows[0].cells).forEach(function (header, column) {
    header.addEventListener("click", function () {
      const ascending = header.dataset.order !== "asc";
      Array.from(table.tHead.rows[0].cells).forEach(function (h) { delete h.dataset.order; });
      header.dataset.order = ascending ? "asc" : "desc";
      const rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        const x = sortValue(a.cells[column]), y = sortValue(b.cells[column]);
        if (x === y) return 0;
        if (x === "") return 1;
        if (y === "") return -1;
        const order = (typeof x === typeof y) ? (x < y ? -1 : 1) : (typeof x === "number" ? -1 : 1);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  filters.forEach(function (select) {
    select.addEventListener("change", function () {
      Array.from(body.rows).forEach(function (row) {
        row.hidden = !filters.every(function (f) { return f.value === "" || row.dataset[f.dataset.filter] === f.value; });
      });
    });
  });
})();
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { cursor: pointer; background: #f3f3f3; position: sticky; top: 0; }
th[data-order="asc"]::after { content: " ▲"; } th[data-order="desc"]::after { content: " ▼"; }
td.text, th:first-child { text-align: left; }
img.plot { max-width: 100%; }
"""


def render_page(df: pd.DataFrame, cells: pd.DataFrame, out_dir: str | Path, shown: list[str],
                headers: list[str], cell_text, rankings: str = "") -> str:
    """The page for leaderboard rows ``df`` (``shown`` columns under ``headers``, each cell as ``cell_text``
    renders it) with per-seed ``cells`` for the sample links, the ``rankings`` per budget (an HTML fragment)
    and the plots found in ``out_dir``."""
    out_dir = Path(out_dir)
    families = sorted({_family(m) for m in df["method"]})
    budgets = sorted({int(b) for b in pd.to_numeric(df["train_steps"], errors="coerce").dropna()})
    filters = [_select("backbone", "backbone", sorted(df["backbone"].unique())), _select("family", "method family", families)]
    if len(budgets) > 1:
        filters.append(_select("budget", "fine-tuning steps", [str(b) for b in budgets]))
    rows = [_row(record, cells, out_dir, shown, cell_text) for record in df.to_dict("records")]
    plots = [f'<figure><img class="plot" alt="{name}" src="data:image/png;base64,'
             f'{base64.b64encode((out_dir / name).read_bytes()).decode()}"><figcaption>{name}</figcaption></figure>'
             for name in PLOTS if (out_dir / name).is_file()]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "<th>samples</th>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Leaderboard: {html.escape(out_dir.name)}</title>
<style>{STYLE}</style></head>
<body>
<h1>Leaderboard: {html.escape(out_dir.name)}</h1>
<p>Generated {now_iso()} by diffprune-bench {__version__} (cell schema {SCHEMA_VERSION}) from {int(df['seeds'].sum())}
cells. FIDs are means over seeds ± the half-width of their 95% interval; <code>vs_reference</code> is Welch's t-test
against the reference row at p &lt; 0.05, a difference inside the noise being a tie. Click a header to sort.</p>
<p>{" ".join(filters)}</p>
<table id="leaderboard"><thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
{rankings}
{chr(10).join(plots)}
<script>{SCRIPT}</script>
</body></html>
"""


def _family(method: str) -> str:
    return "+".join(part.split("@")[0] for part in method.split("+"))


def _select(key: str, label: str, values: list[str]) -> str:
    options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)
    return (f'<label>{label} <select data-filter="{key}" id="filter-{key}"><option value="">all</option>'
            f"{options}</select></label>")


def _row(record: dict[str, Any], cells: pd.DataFrame, out_dir: Path, shown: list[str], cell_text) -> str:
    tds = []
    for column in shown:
        value = record.get(column)
        sort = "" if value is None or (isinstance(value, float) and value != value) or value is pd.NA else str(value)
        css = ' class="text"' if isinstance(value, str) else ""
        tds.append(f'<td{css} data-sort="{html.escape(sort)}">{html.escape(cell_text(column, record))}</td>')
    tds.append(f'<td class="text">{_samples(record, cells, out_dir)}</td>')
    steps = pd.to_numeric(pd.Series([record.get("train_steps")]), errors="coerce").iloc[0]
    budget = "" if pd.isna(steps) else str(int(steps))
    return (f'<tr data-backbone="{html.escape(record["backbone"])}" data-family="{html.escape(_family(record["method"]))}" '
            f'data-budget="{budget}">{"".join(tds)}</tr>')


def _samples(record: dict[str, Any], cells: pd.DataFrame, out_dir: Path) -> str:
    """The first seed's sample grid, shown when opened (the file beside the page)."""
    mine = cells[(cells["backbone"] == record["backbone"]) & (cells["method"] == record["method"])]
    budget = record.get("budget")
    budget = None if budget is None or pd.isna(budget) else int(budget)
    for seed in sorted(mine["seed"].dropna().astype(int)):
        relative = f"samples/{cell_stem(record['backbone'], record['method'], seed, budget)}.png"
        if (out_dir / relative).is_file():
            return (f'<details><summary>seed {seed}</summary><img loading="lazy" alt="samples" '
                    f'src="{html.escape(relative)}"></details>')
    return ""
