"""The GPU suite: what issue 21 asks to measure on one GPU, in one run (under 8 minutes on one H100),
written to one JSON file.

Checks (``benchmarks/gpu_checks/``), each a function returning numbers or saying why it cannot run:

- ``kd_step``: the KD training step, student ~1B (Llama-3.2-1B shape, fp32 master weights under bf16
  autocast), live teacher ~8B (Llama-3.1-8B shape, loaded in bf16), sequence 2,048, the micro-batch the
  memory model plans for 70% of the device; tokens/s and model FLOPs utilisation (FLOPs per token from
  ``distill.eval.flops`` × tokens/s ÷ the device's dense bf16 peak, from a table keyed by device name);
- ``peak_vs_plan``: the same step on the chunked-logits path; measured peak (``max_memory_allocated``)
  against ``distill.quant.memory.estimate_memory`` (``kd_step`` reports the fused path's ratio too);
- ``fused_vs_naive``: the fused LM-head loss (eager and compiled) against full logits + log_softmax + KL
  at a 128k vocabulary: peak memory, time, agreement (``benchmarks/fused_linear_memory.py``'s functions);
- ``qlora_vs_lora``: QLoRA (bitsandbytes NF4 base) against bf16 LoRA: stored bytes, step peak, tokens/s;
- ``teacher_4bit``: the 8B teacher in 4 bits against bf16: bytes, forward tokens/s, logit agreement;
- ``qat_int4``: the step-time overhead of int4-weight / int8-activation fake quantization (torchao);
- ``fsdp2_sharded_teacher``: FSDP2 on one process with the teacher sharded: same loss as unsharded;
- ``sparse_2_4``: semi-structured 2:4 sparse kernels against dense at the student's layer shapes, and
  greedy generation of a 2:4 student with its decoder linears swapped to semi-structured weights.

A check that cannot run here (a package, kernel or device missing) is recorded as ``skipped`` with the
reason; one that raises is ``failed`` with the error's first line; the suite always goes on. The JSON is
rewritten after every check, so a run cut short keeps what it measured. ``--dry`` runs every check at toy
shapes on the CPU (a smoke test for CI: its numbers mean nothing, and the JSON says ``"dry": true``).

    python benchmarks/gpu_suite.py                         # on the GPU machine (see benchmarks/README.md)
    python benchmarks/gpu_suite.py --only kd_step,sparse_2_4 --out /tmp/suite.json
    python benchmarks/gpu_suite.py --dry --out /tmp/dry.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository (distill, uninstalled on the GPU machine), gpu_checks

import torch  # noqa: E402
from gpu_checks import CHECKS  # noqa: E402
from gpu_checks.common import Context, Skip, device_info  # noqa: E402

DEFAULT_OUT = HERE / "results" / "gpu_suite.json"
HEADLINES = ("_ratio", "_over_naive", "_speedup", "_overhead", "_rel_diff", "tokens_per_s")  # keys a summary line shows
PACKAGES = ("torch", "transformers", "lightning", "peft", "accelerate", "bitsandbytes", "torchao", "omegaconf")

# The goals: (name, check, key, comparison, threshold, what it means)
GOALS = (
    ("kd_step_mfu", "kd_step", "mfu", ">=", 0.40, "KD step model FLOPs utilisation"),
    ("peak_within_plan_fused", "kd_step", "peak_over_plan", "within", 0.10, "measured peak / plan, fused loss"),
    ("peak_within_plan_logits", "peak_vs_plan", "peak_over_plan", "within", 0.10, "measured peak / plan, logits"),
    ("qlora_memory", "qlora_vs_lora", "weights_ratio", "<=", 0.40, "QLoRA student bytes / bf16 LoRA student"),
    ("sparse_matmul_speedup", "sparse_2_4", "matmul_speedup", ">=", 1.30, "2:4 over dense, student layer"),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry", action="store_true", help="every check at toy shapes on the CPU (CI smoke test)")
    p.add_argument("--only", default="", help=f"comma list of checks (default: all): {', '.join(CHECKS)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file to write")
    return p.parse_args(argv)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def run_check(name: str, fn, ctx: Context) -> dict:
    """One check, never raising: ok with its numbers, skipped with why, or failed with one line."""
    start = time.perf_counter()
    try:
        result = {"status": "ok", **fn(ctx)}
    except Skip as s:
        result = {"status": "skipped", "why": str(s), **s.partial}
    except Exception as e:  # noqa: BLE001 - a broken check must not stop the suite
        result = {"status": "failed", "error": one_line(e)}
    finally:
        ctx.free()
    result["seconds"] = time.perf_counter() - start
    return result


def summary(name: str, result: dict) -> str:
    """One printed line per finished check."""
    status, seconds = result["status"], result["seconds"]
    if status == "skipped":
        detail = result["why"]
    elif status == "failed":
        detail = result["error"]
    else:
        keys = [g[2] for g in GOALS if g[1] == name] + [k for k in result if k.endswith(HEADLINES)]
        shown = [k for k in dict.fromkeys(keys) if k in result][:4]
        detail = ", ".join(f"{k}={short(result[k])}" for k in shown)
    return f"[{status:7s}] {name:22s} {seconds:6.1f} s  {detail}"


def short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def goal_status(goal: tuple, checks: dict, dry: bool) -> dict:
    name, check, key, op, threshold, what = goal
    value = checks.get(check, {}).get(key)
    out = {"goal": f"{what} {op} {threshold:g}" if op != "within" else f"{what} within 1 ± {threshold:g}"}
    out.update(check=check, key=key, measured=value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        out["met"] = None  # not measured (skipped, failed, or no peak FLOPs for this device)
    elif op == ">=":
        out["met"] = value >= threshold
    elif op == "<=":
        out["met"] = value <= threshold
    else:
        out["met"] = abs(value - 1) <= threshold
    if dry:
        out["note"] = "dry run: toy shapes on the CPU, the value means nothing"
    return out


def versions() -> dict:
    out = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for package in PACKAGES:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def plain(value):
    """JSON for what a check returned that json does not know (numpy or 0-dim torch numbers, anything else)."""
    return float(value) if hasattr(value, "__float__") else str(value)


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=plain) + "\n")
    tmp.replace(path)


def run_suite(dry: bool, only: list[str] | None, out: Path, checks: dict | None = None) -> dict:
    """Run the chosen checks in order; returns the report (also written to ``out`` after each check)."""
    checks = CHECKS if checks is None else checks
    unknown = [n for n in only or [] if n not in checks]
    if unknown:
        raise SystemExit(f"gpu_suite: unknown check(s) {', '.join(unknown)}; known: {', '.join(checks)}")
    ctx = Context.make(dry)
    report = {
        "suite": "benchmarks/gpu_suite.py",
        "dry": dry,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(ctx),
        "versions": versions(),
        "settings": {"seq_len": ctx.seq_len, "warmup": ctx.warmup, "steps": ctx.steps},
        "checks": {},
    }
    start = time.perf_counter()
    print(f"gpu_suite: {report['device']['name']}, torch {torch.__version__}, dry={dry}", flush=True)
    for name, fn in checks.items():
        if only and name not in only:
            continue
        report["checks"][name] = run_check(name, fn, ctx)
        print(summary(name, report["checks"][name]), flush=True)
        report["wall_s"] = time.perf_counter() - start
        report["goals"] = {g[0]: goal_status(g, report["checks"], dry) for g in GOALS}
        write(out, report)
    for name, g in report.get("goals", {}).items():
        met = {True: "met", False: "MISSED", None: "not measured"}[g["met"]] + (
            ", dry run: means nothing" if dry else ""
        )
        print(f"goal {name}: {g['goal']}: {short(g['measured'])} ({met})")
    print(f"wrote {out} ({report.get('wall_s', 0.0):.0f} s)")
    return report


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.dry:
        # One thread: on a shared CPU two threads spin waiting for each other (measured here: a toy
        # forward took 0.8 s with 2 threads on a loaded 2-core machine, 0.04 s with one)
        torch.set_num_threads(1)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    run_suite(args.dry, only, args.out)


if __name__ == "__main__":
    main()
