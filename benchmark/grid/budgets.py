"""Rankings per fine-tuning budget: which method to use at N steps, and how cheap a budget still ranks the
methods as the largest one does.

Within a backbone and a budget the weight-training rows are ranked by FID with ties: a row's rank is one
plus the number of rows whose FID is lower beyond noise (the leaderboard's Welch test over seeds), so rows
that cannot be told apart share a rank. Each budget's ranking is compared with the largest budget's by
Kendall's tau-b over the rows present at both, and the pairs whose order flips beyond noise are named; the
loss right after pruning is compared with the final FID by Spearman's rank correlation.
"""
from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd
from scipy import stats

from benchmark import significance
from benchmark.grid.store import REFERENCE_METHOD

MIN_ROWS = 3  # fewer rows than this give no rank correlation
SAME_LOSS = 1e-5  # relative spread below which a row's seeds prune alike (thread counts move the 8th digit)


def weight_training_rows(cells: pd.DataFrame) -> pd.DataFrame:
    """The ok per-seed cells of chains that trained weights, with their budget as ``steps``."""
    ok = cells[cells["status"] == "ok"].copy()
    ok["steps"] = pd.to_numeric(ok["train_steps"], errors="coerce")
    ok["fid"] = pd.to_numeric(ok["fid"], errors="coerce")
    return ok[(ok["steps"] > 0) & ok["fid"].notna()]


def ranks(groups: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Each row's rank: one plus the number of rows with a lower FID beyond noise."""
    return {m: 1 + sum(_compare(other, mine).verdict == "lower" for o, other in groups.items() if o != m)
            for m, mine in groups.items()}


def swaps(at: dict[str, pd.DataFrame], largest: dict[str, pd.DataFrame]) -> list[tuple[str, str]]:
    """Pairs ``(a, b)`` with ``a`` lower than ``b`` beyond noise at one budget and higher beyond noise at the largest."""
    common = sorted(at.keys() & largest.keys())
    return [(a, b) for a in common for b in common if a != b
            and _compare(at[a], at[b]).verdict == "lower" and _compare(largest[a], largest[b]).verdict == "higher"]


def same_ranking(at: dict[str, pd.DataFrame], largest: dict[str, pd.DataFrame]) -> bool:
    """Whether the rows present at both budgets get the same ranks at each (ranked among themselves)."""
    common = at.keys() & largest.keys()
    return ranks({m: at[m] for m in common}) == ranks({m: largest[m] for m in common})


def budget_table(cells: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per backbone with at least two budgets: the budgets, each row's FID mean and rank per budget, Kendall's
    tau of each budget's ranks against the largest's, the swapped pairs, whether the rows both budgets have
    rank alike, and the loss-after-pruning vs FID correlation per budget. A row may lack a budget (a grid
    still computing): comparisons between budgets take the rows both have."""
    rows = weight_training_rows(cells)
    result: dict[str, dict[str, Any]] = {}
    for backbone, mine in rows.groupby("backbone", sort=True):
        budgets = sorted(int(s) for s in mine["steps"].unique())
        if len(budgets) < 2:
            continue
        groups = {b: {m: g for m, g in mine[mine["steps"] == b].groupby("method")} for b in budgets}
        ranked = {b: ranks(groups[b]) for b in budgets}
        largest = budgets[-1]
        same = {b: same_ranking(groups[b], groups[largest]) for b in budgets[:-1]}
        result[backbone] = {
            "budgets": budgets,
            "fid": {b: {m: float(g["fid"].mean()) for m, g in groups[b].items()} for b in budgets},
            "half_width": {b: {m: _half_width(g) for m, g in groups[b].items()} for b in budgets},
            "seeds": {b: {m: len(g) for m, g in groups[b].items()} for b in budgets},
            "ranks": ranked,
            "tau": {b: _tau(ranked[b], ranked[largest]) for b in budgets[:-1]},
            "swaps": {b: swaps(groups[b], groups[largest]) for b in budgets[:-1]},
            "same": same,
            "cheapest": next((b for b in budgets[:-1] if same[b]), largest),
            "change": {m: _compare(groups[largest][m], groups[budgets[0]][m])
                       for m in groups[largest].keys() & groups[budgets[0]].keys()},
            "loss_vs_fid": {b: _loss_correlation(groups[b]) for b in budgets},
            "loss_vs_fid_within": {b: _loss_correlation_within(groups[b]) for b in budgets},
            "dense": _dense(cells, backbone),
        }
    return result


def _compare(a: pd.DataFrame, b: pd.DataFrame) -> significance.Comparison:
    return significance.compare(_fids(a), _sds(a), _fids(b), _sds(b))


def _dense(cells: pd.DataFrame, backbone: str) -> tuple[float, float, int] | None:
    """The backbone's dense row (no fine-tuning): mean FID, half-width, seeds; None where the run has none."""
    rows = cells[(cells["backbone"] == backbone) & (cells["method"] == REFERENCE_METHOD) & (cells["status"] == "ok")]
    rows = rows.assign(fid=pd.to_numeric(rows["fid"], errors="coerce")).dropna(subset=["fid"])
    return None if rows.empty else (float(rows["fid"].mean()), _half_width(rows), len(rows))


def _tau(mine: dict[str, int], theirs: dict[str, int]) -> tuple[float, int]:
    common = sorted(mine.keys() & theirs.keys())
    if len(common) < MIN_ROWS:
        return float("nan"), len(common)
    tau = stats.kendalltau([mine[m] for m in common], [theirs[m] for m in common]).statistic
    return float(tau), len(common)


def _tau_text(tau: float, rows: int) -> str:
    if rows < MIN_ROWS:
        return f"no tau over {rows} rows"
    if math.isnan(tau):  # a ranking in which every row shares one rank has no order to correlate
        return f"tau undefined over {rows} rows (one budget ranks them all alike)"
    return f"tau {tau:.2f} over {rows} rows"


def _loss_correlation(groups: dict[str, pd.DataFrame]) -> tuple[float, int]:
    pairs = [(pd.to_numeric(g["loss_after_pruning"], errors="coerce").mean(), g["fid"].mean()) for g in groups.values()]
    pairs = [(loss, fid) for loss, fid in pairs if math.isfinite(loss)]
    if len(pairs) < MIN_ROWS:
        return float("nan"), len(pairs)
    return float(stats.spearmanr(*zip(*pairs)).statistic), len(pairs)


def _loss_correlation_within(groups: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Per row whose seeds prune to different losses (a seed-dependent architecture or init): Spearman's rho
    of its seeds' losses after pruning against their final FIDs; rows with one loss for every seed have none."""
    result = {}
    for method, group in sorted(groups.items()):
        losses = pd.to_numeric(group["loss_after_pruning"], errors="coerce")
        if losses.notna().sum() >= MIN_ROWS and losses.max() - losses.min() > SAME_LOSS * abs(losses.mean()):
            result[method] = float(stats.spearmanr(losses, group["fid"], nan_policy="omit").statistic)
    return result


def _half_width(group: pd.DataFrame) -> float:
    """Half the 95% interval of the row's mean FID, as the leaderboard gives it (seeds and samples)."""
    summary = significance.summarize(_fids(group), _sds(group))
    return (summary.high - summary.low) / 2


def _fids(group: pd.DataFrame) -> list[float]:
    return group["fid"].tolist()


def _sds(group: pd.DataFrame) -> list[float]:
    return pd.to_numeric(group["fid_sd"], errors="coerce").fillna(0.0).tolist()


LEGEND = ("Mean FID over seeds ± the half-width of its 95% interval (rank: one plus the rows lower beyond noise, "
          "so ties share a rank; n: seeds); Kendall's tau-b of each budget's ranks against the largest budget's; "
          "pairs whose order flips beyond noise; each row's change from the smallest budget to the largest (Welch's "
          "t over seeds; lower: more fine-tuning helped beyond noise); Spearman's rho of the loss right after "
          "pruning against the final FID, across rows and, for rows whose seeds prune differently, across a row's "
          "seeds.")


def sections(table: dict[str, dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """Per backbone, as plain text for any markup: its name, the ranking table's header and rows (best at the
    largest budget first), and the notes below the table."""
    result = []
    for backbone, entry in table.items():
        budgets, largest = entry["budgets"], entry["budgets"][-1]
        methods = sorted({m for b in budgets for m in entry["fid"][b]},
                         key=lambda m: (entry["ranks"][largest].get(m, 99), entry["fid"][largest].get(m, math.inf)))
        header = ["method", *(f"{b} steps" for b in budgets), f"{budgets[0]} → {largest}"]
        rows = []
        for method in methods:
            cells = [f"{entry['fid'][b][method]:.2f} ± {entry['half_width'][b][method]:.2f} "
                     f"({entry['ranks'][b][method]}; n={entry['seeds'][b][method]})" if method in entry["fid"][b] else ""
                     for b in budgets]
            change = entry["change"].get(method)
            cells.append("" if change is None else f"{change.difference:+.2f} (p {change.p_value:.2g}, {change.verdict})")
            rows.append([method, *cells])
        notes = []
        if entry["dense"] is not None:
            mean, half, n = entry["dense"]
            notes.append(f"dense reference, no fine-tuning: {mean:.2f} ± {half:.2f} (n={n})")
        notes.append(f"cheapest budget ranking the rows as {largest} steps does: {entry['cheapest']} steps")
        for b in budgets[:-1]:
            tau, n = entry["tau"][b]
            flips = ", ".join(f"{a} < {c}" for a, c in entry["swaps"][b]) or "none"
            same = "yes" if entry["same"][b] else "no"
            notes.append(f"{b} steps vs {largest}: {_tau_text(tau, n)}; same ranks: {same}; "
                         f"flipped beyond noise (order at {b}): {flips}")
        for b in budgets:
            rho, n = entry["loss_vs_fid"][b]
            notes.append(f"loss after pruning vs FID at {b} steps: rho {rho:.2f} over {n} rows")
        for b in budgets:
            within = entry["loss_vs_fid_within"][b]
            if within:
                rhos = ", ".join(f"{m} {rho:.2f}" for m, rho in within.items())
                notes.append(f"loss after pruning vs FID within rows at {b} steps, over seeds: {rhos}")
        result.append((backbone, header, rows, notes))
    return result


def render(table: dict[str, dict[str, Any]]) -> str:
    """The per-budget rankings as Markdown (``budgets.md``): one section per backbone."""
    lines = ["# Rankings per fine-tuning budget", "", LEGEND, ""]
    for backbone, header, rows, notes in sections(table):
        lines += [f"## {backbone}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", *(f"- {note}" for note in notes), ""]
    return "\n".join(lines)


def render_html(table: dict[str, dict[str, Any]]) -> str:
    """The same rankings as an HTML fragment, for the leaderboard page; empty without several budgets."""
    if not table:
        return ""
    parts = ["<h2>Rankings per fine-tuning budget</h2>", f"<p>{html.escape(LEGEND)}</p>"]
    for backbone, header, rows, notes in sections(table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(f'<tr><td class="text">{html.escape(row[0])}</td>'
                       + "".join(f"<td>{html.escape(c)}</td>" for c in row[1:]) + "</tr>" for row in rows)
        items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
        parts.append(f"<h3>{html.escape(backbone)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                     f"</table><ul>{items}</ul>")
    return "\n".join(parts)
