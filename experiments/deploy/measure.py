"""Every GGUF file of the given run dirs in llama.cpp, against the same model in PyTorch.

For each ``<run>/student.<type>.gguf`` (and ``--teacher DIR``'s F16 export): validation perplexity
in llama.cpp on the quickstart's validation split, the same model's perplexity in PyTorch (fp32;
the student's weights rounded exactly as the file holds them, so for a QAT file it is the student
itself), size on disk, time to first token and generation tokens/s on ``--threads`` CPU threads.

    python experiments/deploy/measure.py /work/deploy_runs/fp /work/deploy_runs/qat_q4_0 ... \
        --teacher ~/.cache/distill/teachers/<key> --out experiments/deploy/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from distill.eval.metrics import evaluate
from distill.export import llama_cpp as runtime
from distill.export.command import export_dir, load_student
from distill.export.gguf_file import FileTypes, resolve_types, trained_types
from distill.quant.ggml import fake_quantize

log = logging.getLogger("deploy")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def validation(experiment: str, max_blocks: int | None, seed: int = 0, overrides: list[str] = ()):
    """The validation loader of ``experiment`` at ``seed`` with the runs' other ``overrides`` (their data
    split and tokenizer, from the cache) and the tokenizer size."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from distill.cli.resolvers import register
    from distill.run.data import prepare_data

    register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={experiment}",
                f"seed={seed}",
                *overrides,
                "hydra.runtime.output_dir=/tmp/deploy_measure",
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    dm = prepare_data(cfg)
    batches = [b for _, b in zip(range(max_blocks or 10**9), dm.val_dataloader())]
    return batches, len(dm.tokenizer), dm.seq_len


def as_file_holds(model, types: FileTypes):
    """The PyTorch model with every weight rounded as the GGUF of ``types`` stores it."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if isinstance(w, torch.nn.Parameter) and w.ndim >= 2:
                w.copy_(fake_quantize(w, types.pick(module is embed or module is head, w.ndim, w.shape[-1])))
    return model


def embedding_type(gguf_path: Path) -> str:
    """The type the file holds its token embedding (and tied head) in: a PTQ file may have been written
    with any ``export.embeddings``, which its name does not say."""
    import gguf

    tensor = next(t for t in gguf.GGUFReader(gguf_path).tensors if t.name == "token_embd.weight")
    return tensor.tensor_type.name.lower()


def measure(student_dir: Path, gguf: Path, batches, vocab: int, n_ctx: int, threads: int, fallback=None) -> dict:
    model = load_student(student_dir)
    qtype = gguf.name.split(".")[-2]
    embeddings = embedding_type(gguf) if qtype not in ("f16", "bf16", "f32") else None
    types = resolve_types(qtype, embeddings, trained_types(model.config), fallback)
    model = as_file_holds(model, types)
    torch_ppl = evaluate({"m": model}, batches, vocab, reference="m")["m"]["val_ppl"]
    llm = runtime.load(gguf, n_ctx=n_ctx, threads=threads)
    cpp = runtime.perplexity(llm, batches, vocab)
    prompt = [int(t) for t in batches[0][0][0][:32]]
    speed = runtime.speed(llm, prompt, 64)
    return {
        "file": str(gguf),
        "type": types.qtype,
        "embeddings": types.embeddings,
        "bytes": gguf.stat().st_size,
        "torch_val_ppl": torch_ppl,
        "llama_cpp_val_ppl": cpp["val_ppl"],
        "val_tokens": cpp["tokens"],
        "ppl_ratio": cpp["val_ppl"] / torch_ppl,
        **speed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--teacher", type=Path, help="a teacher model dir: exported to F16 and measured too")
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--max-blocks", type=int, default=None, help="validation batches (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fallback", default=None, help="the export.fallback the files were written with")
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed=, which splits the data")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="another of the runs' overrides that shapes their data "
        "(teacher.path=DIR: its tokenizer, as the runs had it); repeatable",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    batches, vocab, seq_len = validation(args.experiment, args.max_blocks, args.seed, args.override)
    rows = {}
    targets = [(run / "student", gguf, run.name) for run in args.runs for gguf in sorted(run.glob("student.*.gguf"))]
    if args.teacher:
        if not (args.teacher / "student.f16.gguf").exists():
            export_dir(args.teacher, "f16")
        targets.insert(0, (args.teacher, args.teacher / "student.f16.gguf", "teacher"))
    for student_dir, gguf, run in targets:
        key = f"{run}/{gguf.name}"
        rows[key] = measure(student_dir, gguf, batches, vocab, seq_len, args.threads, args.fallback)
        log.info("%s: %s", key, json.dumps(rows[key]))
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
