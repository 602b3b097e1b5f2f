"""One table and one Pareto plot across the trials of a sweep (a Hydra multirun dir).

Each trial is a run dir under the sweep dir (``<sweep>/<job>``) holding ``.hydra/overrides.yaml``
and, when it finished, ``metrics.json``. Trials without metrics (failed, killed, still running)
are listed with what their log says, never dropped silently. Trade-offs are three-way: validation
perplexity (lower), parameters (lower) and training tokens/s (higher); a trial is Pareto-optimal
when no other trial is at least as good on all three and better on one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from distill.errors import DistillError

PPL, PARAMS, SPEED = "student.val_ppl", "student.params", "train.tokens_per_s"
REPORT_MD, REPORT_PNG = "sweep_report.md", "sweep_report.png"


@dataclass
class Trial:
    name: str
    path: Path
    overrides: list[str]
    metrics: dict | None = None
    problem: str | None = None  # why there are no metrics
    pareto: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.metrics is not None and all(isinstance(self.metrics.get(k), (int, float)) for k in (PPL, PARAMS))


def natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def find_trials(sweep_dir: Path) -> list[Trial]:
    """Every run dir below ``sweep_dir`` (a dir with ``.hydra/overrides.yaml``), in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DistillError(f"not a directory: {sweep_dir}")
    trials = []
    for overrides_file in sweep_dir.rglob(".hydra/overrides.yaml"):
        run_dir = overrides_file.parent.parent
        if run_dir == sweep_dir:
            continue
        overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.load(overrides_file))]
        trials.append(read_trial(run_dir, run_dir.relative_to(sweep_dir).as_posix(), overrides))
    if not trials:
        raise DistillError(
            f"no trials in {sweep_dir} (expected run dirs with .hydra/overrides.yaml: "
            "a multirun dir such as multirun/<task>/<time>)"
        )
    return sorted(trials, key=lambda t: natural_key(t.name))


def read_trial(run_dir: Path, name: str, overrides: list[str]) -> Trial:
    trial = Trial(name, run_dir, overrides)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        try:
            trial.metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError:
            trial.problem = "metrics.json is not valid JSON"
    else:
        trial.problem = "no metrics.json: " + (last_error(run_dir) or "failed or unfinished (no error in its log)")
    if trial.metrics is not None and not trial.ok:
        trial.problem = f"metrics.json lacks {PPL} or {PARAMS}"
    trial.extra["teacher"] = teacher_column(trial)
    trial.extra["pruned_at"] = pruned_at(run_dir)
    trial.extra["cache_dir"] = cache_dir_of(run_dir) if "cache" in trial.extra["teacher"] else None
    return trial


def cache_dir_of(run_dir: Path) -> str | None:
    """The teacher cache a trial read (its resolved config in run_info.json)."""
    info = run_dir / "run_info.json"
    if not info.exists():
        return None
    return (json.loads(info.read_text()).get("config", {}).get("teacher") or {}).get("cache_dir")


def teacher_summary(trials: list[Trial]) -> list[str]:
    """Where the teacher ran: in which trials, and which caches (written once by distill-cache) the others read."""
    ran = [
        t.name
        for t in trials
        if t.metrics and (t.metrics.get("teacher.source") == "live" or t.metrics.get("teacher.trained_in_run"))
    ]
    lines = [
        f"Teacher run or trained in {len(ran)} of {len(trials)} trials" + (f" ({', '.join(ran)})." if ran else ".")
    ]
    for cache in sorted({t.extra["cache_dir"] for t in trials if t.extra.get("cache_dir")}):
        readers = [t.name for t in trials if t.extra.get("cache_dir") == cache]
        manifest = Path(cache) / "manifest.json"
        what = ""
        if manifest.exists():
            m = json.loads(manifest.read_text())
            rows = sum(split.get("num_rows", 0) for split in m.get("splits", {}).values())
            what = f" (top-{m.get('top_k')}, {rows * m.get('seq_len', 0):,} tokens, written by distill-cache)"
        lines.append(f"Teacher cache `{cache}`{what}: read by {len(readers)} trials.")
    return lines


def pruned_at(run_dir: Path) -> int | None:
    """The step at which the Optuna pruner stopped the trial (distill.sweep.OptunaPruning logs it)."""
    for log_file in sorted(run_dir.glob("*.log")):
        found = re.findall(r"optuna trial \d+ pruned at step (\d+)", log_file.read_text(errors="replace"))
        if found:
            return int(found[-1])
    return None


def last_error(run_dir: Path) -> str | None:
    """The last error-looking line of the run's Hydra job log."""
    for log_file in sorted(run_dir.glob("*.log")):
        lines = [
            ln.strip()
            for ln in log_file.read_text(errors="replace").splitlines()
            if re.search(r"Error|error:|Traceback|Killed|CANCELLED", ln)
        ]
        if lines:
            return lines[-1][:200]
    return None


def teacher_column(trial: Trial) -> str:
    """Did the teacher run in this trial? From the run's own record (metrics), else its config."""
    m = trial.metrics or {}
    source = m.get("teacher.source")
    if source is None:
        config = trial.path / ".hydra" / "config.yaml"
        if config.exists():
            source = OmegaConf.select(OmegaConf.load(config), "teacher.backend", default="live")
    words = {"cache": "read from cache", "live": "ran (live)", "none": "none (data only)"}.get(source, "?")
    if m.get("teacher.trained_in_run"):
        words += ", trained here"
    return words


def mark_pareto(trials: list[Trial]) -> None:
    """Pareto front over (val ppl min, params min, tokens/s max) among finished trials."""
    done = [t for t in trials if t.ok and t.extra.get("pruned_at") is None]  # a pruned trial trained less

    def key(t: Trial) -> tuple[float, float, float]:
        return t.metrics[PPL], t.metrics[PARAMS], -float(t.metrics.get(SPEED) or 0.0)

    for t in done:
        a = key(t)
        t.pareto = not any(all(x <= y for x, y in zip(key(o), a)) and key(o) != a for o in done if o is not t)


def common_overrides(trials: list[Trial]) -> list[str]:
    """Overrides every trial shares (the sweep's fixed settings), in the first trial's order."""
    sets = [set(t.overrides) for t in trials]
    shared = set.intersection(*sets) if sets else set()
    return [o for o in trials[0].overrides if o in shared] if trials else []


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def short_override(item: str) -> str:
    key, _, value = item.partition("=")
    try:
        value = fmt(float(value), 3) if "." in value or "e" in value.lower() else value
    except ValueError:
        pass
    return f"{key}={value}"


def markdown(trials: list[Trial], sweep_dir: Path, study: dict | None = None) -> str:
    shared = common_overrides(trials)
    lines = [f"# Sweep report: {sweep_dir}", ""]
    ok = [t for t in trials if t.ok]
    lines.append(
        f"{len(trials)} trials: {len(ok)} finished, {len(trials) - len(ok)} failed or incomplete. "
        "★ = Pareto-optimal (val perplexity ↓, parameters ↓, tokens/s ↑) among trials that were not pruned."
    )
    if shared:
        lines += ["", "Every trial: `" + " ".join(shared) + "`"]
    lines += [""] + teacher_summary(trials)
    if study:
        lines += [
            "",
            f"Optuna best value: {fmt(study.get('best_value'))} with "
            + ", ".join(f"`{k}={fmt(v, 3)}`" for k, v in (study.get("best_params") or {}).items()),
        ]
    lines += [
        "",
        "| trial | overrides | student.val_ppl | student.params | train.tokens_per_s | wall s | teacher | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in trials:
        m = t.metrics or {}
        own = " ".join(short_override(o) for o in t.overrides if o not in shared) or "—"
        wall = m.get("run.wall_s", m.get("train.wall_s"))
        status = "★" if t.pareto else ("" if t.ok else "failed / incomplete")
        if t.extra.get("pruned_at") is not None:
            status = f"pruned at step {t.extra['pruned_at']}"
        lines.append(
            f"| {t.name} | `{own}` | {fmt(m.get(PPL))} | {fmt(m.get(PARAMS))} | {fmt(m.get(SPEED))} | "
            f"{fmt(wall, 3)} | {t.extra['teacher']} | {status} |"
        )
    bad = [t for t in trials if not t.ok]
    if bad:
        lines += ["", "## Failed or incomplete trials", ""]
        lines += [f"- `{t.name}`: {t.problem}" for t in bad]
    lines += ["", f"![Pareto plot]({REPORT_PNG})", ""]
    return "\n".join(lines)


def plot(trials: list[Trial], path: Path) -> None:
    """Val perplexity against parameters, tokens/s as colour; Pareto-optimal trials ringed and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [t for t in trials if t.ok]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if ok:
        xs = [t.metrics[PARAMS] for t in ok]
        ys = [t.metrics[PPL] for t in ok]
        cs = [float(t.metrics.get(SPEED) or 0.0) for t in ok]
        points = ax.scatter(xs, ys, c=cs, cmap="viridis", s=40, zorder=2)
        fig.colorbar(points, ax=ax, label="train tokens/s")
        front = [t for t in ok if t.pareto]
        ax.scatter(
            [t.metrics[PARAMS] for t in front],
            [t.metrics[PPL] for t in front],
            s=160,
            facecolors="none",
            edgecolors="crimson",
            linewidths=1.5,
            label="Pareto-optimal",
            zorder=3,
        )
        for t in ok:
            ax.annotate(
                t.name, (t.metrics[PARAMS], t.metrics[PPL]), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished trials", ha="center", va="center", transform=ax.transAxes)
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(places=0))  # 75k, 1M: full counts overlap
    ax.set_xlabel("student parameters")
    ax.set_ylabel("student validation perplexity")
    ax.set_title(f"{len(ok)} of {len(trials)} trials finished")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def study_results(sweep_dir: Path) -> dict | None:
    """What hydra-optuna-sweeper wrote at the end of the sweep, if it got there."""
    path = Path(sweep_dir) / "optimization_results.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else None


def write_sweep_report(sweep_dir: Path, out_dir: Path | None = None) -> tuple[Path, Path, list[Trial]]:
    from distill.cache import write_atomic
    from distill.secrets import redact_text

    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir else sweep_dir
    trials = find_trials(sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mark_pareto(trials)
    md_path, png_path = out_dir / REPORT_MD, out_dir / REPORT_PNG
    write_atomic(md_path, redact_text(markdown(trials, sweep_dir, study_results(sweep_dir))))
    plot(trials, png_path)
    return md_path, png_path, trials
