"""The filter stats as a table: for ``distill-filter``'s console output and ``report.md``."""

from __future__ import annotations


def stats_rows(stats: dict) -> list[tuple[str, int, int, str]]:
    """(stage, documents in, kept, dropped by reason) per stage, in pipeline order."""
    rows = []
    skipped = stats.get("source_skipped") or {}
    if skipped:
        rows.append(
            ("source (bad input skipped)", stats["input"] + sum(skipped.values()), stats["input"], _reasons(skipped))
        )
    for name, s in stats["stages"].items():
        rows.append((name, s["input"], s["kept"], _reasons(s["dropped"])))
    return rows


def _reasons(dropped: dict) -> str:
    items = sorted(dropped.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:,}" for k, v in items) or "—"


def markdown_table(stats: dict) -> list[str]:
    lines = ["| filter | documents in | kept | dropped, by reason |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {n_in:,} | {kept:,} | {reasons} |" for name, n_in, kept, reasons in stats_rows(stats)]
    lines.append(
        f"| **total** | {stats['input']:,} | {stats['kept']:,} ({100 * stats['kept_fraction']:.1f}%) | "
        f"{stats['dropped']:,} |"
    )
    return lines


def print_table(stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="data filters (training split)")
    for col, justify in (("filter", "left"), ("in", "right"), ("kept", "right"), ("dropped, by reason", "left")):
        table.add_column(col, justify=justify)
    for name, n_in, kept, reasons in stats_rows(stats):
        table.add_row(name, f"{n_in:,}", f"{kept:,}", reasons)
    table.add_row(
        "total",
        f"{stats['input']:,}",
        f"{stats['kept']:,} ({100 * stats['kept_fraction']:.1f}%)",
        f"{stats['dropped']:,}",
    )
    Console().print(table)
