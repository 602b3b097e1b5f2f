"""``distill-report <multirun dir>``: one table and a Pareto plot across a sweep's trials.

A plain argparse CLI, not a Hydra app like the others: it composes no training config and
starts no run (a Hydra app would open a run dir of its own for a read-only summary); it reads
finished run dirs, so its one argument is a path. Errors end in one line and exit 2, as elsewhere.
"""

from __future__ import annotations

import argparse

from distill.cli.errors import run_with_one_line_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="distill-report",
        description="Summarize a sweep (a Hydra multirun dir): sweep_report.md and sweep_report.png in it.",
    )
    parser.add_argument("sweep_dir", help="the multirun dir, e.g. multirun/train/2026-01-01_12-00-00")
    parser.add_argument("--out", default=None, help="write the report here instead of into the sweep dir")
    return parser.parse_args(argv)


def report(argv: list[str] | None = None) -> None:
    from distill.eval.sweep_report import write_sweep_report

    args = parse_args(argv)
    md_path, png_path, trials = write_sweep_report(args.sweep_dir, args.out)
    print(md_path.read_text())
    print(f"wrote {md_path} and {png_path} ({sum(t.ok for t in trials)} of {len(trials)} trials finished)")


def main(argv: list[str] | None = None) -> None:
    run_with_one_line_errors(lambda: report(argv), "distill-report")


if __name__ == "__main__":
    main()
