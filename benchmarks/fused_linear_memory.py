"""Peak memory and time of the fused LM-head + distillation loss vs. the naive one, on CPU.

Naive: ``s = h @ W_sᵀ`` and (no_grad) ``t = h_t @ W_tᵀ`` materialized, then the plain
reference forward KL (T²-scaled) + CE with autograd and ``.backward()``. Fused:
``distill.losses.fused_linear.fused_linear_loss`` (chunks of tokens, gradients computed
in the forward pass). Compiled: the fused loss with the compiled chunk kernels (``loss.compile``,
``distill.losses.compiled``), compiled during the warm-up step. All compute the same loss from the
same inputs.

Each variant runs in its own subprocess so their peaks do not mix: inputs are allocated,
a small warm-up step runs, then RSS is recorded, the peak counter is reset (writing 5 to
/proc/self/clear_refs resets VmHWM), one forward+backward is timed, and the peak of the
loss is VmHWM − RSS before (gradient buffers of the hidden state and the LM head
included, in both variants). Values and gradients are saved and compared in the parent.
Wall time and process CPU time are both printed: on a shared machine the wall time of a
run can swing by 2× while its CPU time stays within a few percent. Prints ratios; asserts
nothing. The goal (at Llama-3's vocabulary, fp32): peak ≤ 25% of naive, time ≤ 1.3× naive,
relative error ≤ 1e-5. Measured on 2 CPU cores at the default sizes: naive 14,038 MiB,
87 s; fused (chunk 256) 1,267 MiB, 53 s: peak 0.09×, time 0.61×, errors < 1e-6.

    python benchmarks/fused_linear_memory.py    # 4,096 × 1,024 × 128,256 fp32: needs ~16 GiB free, ~3 min
    python benchmarks/fused_linear_memory.py --tokens 512 --vocab 32000 --chunk-size 128   # quick check
    python benchmarks/fused_linear_memory.py --variants fused --chunk-size 512              # one variant only
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from distill.losses.compiled import chunk_kernel
from distill.losses.divergences import IGNORE_INDEX, cross_entropy, forward_kl
from distill.losses.fused_linear import fused_linear_loss

MiB = 2**20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--teacher-hidden", type=int, default=None, help="default: --hidden")
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--ce-weight", type=float, default=1.0)
    p.add_argument("--warmup-tokens", type=int, default=256, help="tokens of the warm-up step (0: none)")
    p.add_argument("--variants", default="naive,fused,compiled", help="comma-separated subset of naive,fused,compiled")
    p.add_argument("--worker", choices=["naive", "fused", "compiled"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- worker (one variant, own process) ---------------------------------------------------
def make_inputs(args):
    """Same inputs in every process: hidden ~ N(0, 1), heads scaled so logits have std ≈ 2."""
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    h_t = args.teacher_hidden or args.hidden
    h = torch.randn(args.tokens, args.hidden, generator=g).to(dtype).requires_grad_(True)
    w = (torch.randn(args.vocab, args.hidden, generator=g) * (2 / args.hidden**0.5)).to(dtype).requires_grad_(True)
    th = torch.randn(args.tokens, h_t, generator=g).to(dtype)
    tw = (torch.randn(args.vocab, h_t, generator=g) * (2.5 / h_t**0.5)).to(dtype)
    y = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    y[::16] = IGNORE_INDEX  # some unlabelled tokens
    return h, w, th, tw, y


def naive_step(args, h, w, th, tw, y):
    s = h @ w.t()
    with torch.no_grad():
        t = th @ tw.t()
    mask = y != IGNORE_INDEX
    loss = args.kl_weight * forward_kl(s, t, args.temperature, mask) + args.ce_weight * cross_entropy(s, y)
    loss.backward()
    return loss.detach()


def fused_step(args, h, w, th, tw, y, kernel=None):
    loss, _ = fused_linear_loss(
        h,
        w,
        th,
        tw,
        y,
        weights={"forward_kl": args.kl_weight, "ce": args.ce_weight},
        temperature=args.temperature,
        chunk_size=args.chunk_size,
        kernel=kernel,
    )
    loss.backward()
    return loss.detach()


def compiled_step(args, h, w, th, tw, y):
    """The fused loss with the compiled chunk kernels (``loss.compile``); compiled in the warm-up step."""
    return fused_step(args, h, w, th, tw, y, kernel=chunk_kernel)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args) -> None:
    step = {"naive": naive_step, "fused": fused_step, "compiled": compiled_step}[args.worker]
    h, w, th, tw, y = make_inputs(args)
    if args.warmup_tokens:
        n = min(args.warmup_tokens, args.tokens)
        hw = h[:n].detach().requires_grad_(True)
        step(args, hw, w, th[:n], tw, y[:n])
        w.grad = None
        del hw
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the warm-up's freed heap back, so the run cannot reuse it
    rss_before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = step(args, h, w, th, tw, y)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _status_kib("VmHWM") - rss_before
    torch.save({"loss": loss, "grad_h": h.grad, "grad_w": w.grad}, args.out)
    print(
        json.dumps(
            {
                "peak_mib": peak / 1024,
                "inputs_mib": rss_before / 1024,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "loss": loss.item(),
            }
        )
    )


# -- parent ------------------------------------------------------------------------------
def run_variant(variant: str, argv: list[str], out: Path) -> dict:
    cmd = [sys.executable, __file__, *argv, "--worker", variant, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| (elementwise relative error is meaningless near zero)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    variants = [v for v in args.variants.split(",") if v]
    print(
        f"tokens={args.tokens} hidden={args.hidden} teacher_hidden={args.teacher_hidden or args.hidden} "
        f"vocab={args.vocab} dtype={args.dtype} chunk_size={args.chunk_size} T={args.temperature} "
        f"threads={torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for v in variants:
            results[v] = run_variant(v, argv, Path(tmp) / f"{v}.pt")
            r = results[v]
            print(
                f"  {v:6s} peak {r['peak_mib']:9.1f} MiB   time {r['seconds']:7.2f} s "
                f"(cpu {r['cpu_seconds']:.2f} s)   (inputs {r['inputs_mib']:.0f} MiB, loss {r['loss']:.6f})",
                flush=True,
            )
        if "naive" in results and len(results) > 1:
            report(results, Path(tmp))


def report(results: dict, tmp: Path) -> None:
    n = results["naive"]
    print("\n| variant | peak MiB | wall s | process CPU s |\n|---|---:|---:|---:|")
    for v in (v for v in ("naive", "fused", "compiled") if v in results):
        r = results[v]
        print(f"| {v} | {r['peak_mib']:.0f} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} |")
    for v in (v for v in ("fused", "compiled") if v in results):
        f = results[v]
        mem, tim, cpu = (f[k] / n[k] for k in ("peak_mib", "seconds", "cpu_seconds"))
        print(f"\n{v}/naive: peak {mem:.3f} (goal <= 0.25)   wall time {tim:.3f} (goal <= 1.3)   CPU time {cpu:.3f}")
        a, b = torch.load(tmp / f"{v}.pt"), torch.load(tmp / "naive.pt")
        errs = {k: rel_err(a[k], b[k]) for k in ("loss", "grad_h", "grad_w")}
        print(f"max rel error (max|{v} − naive| / max|naive|): " + "   ".join(f"{k} {e:.2e}" for k, e in errs.items()))


if __name__ == "__main__":
    main()
