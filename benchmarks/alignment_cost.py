"""What cross-tokenizer alignment costs, as a share of one training step of a small student.

Goal (issue 18): aligning a batch costs <= 15% of a step. One batch is ``--batch`` rows of stdlib
text, each cut to ``--seq-len`` student tokens. The alignment of a batch is everything the data
path adds for a teacher with another tokenizer: tokenizing each row for both tokenizers with
character offsets, aligning the spans (``distill.align``) and collating the flat indices. The step
is the student's plain training step on the same batch size (forward, CE, backward, AdamW; bf16
autocast only where the CPU runs it natively, as the quickstart trains: ``auto_precision``). Also printed, for scale: the alignment
alone (rows already tokenized) and the ULD / GOLD loss on the batch's aligned spans (forward and
backward, chunked). Medians over interleaved rounds; asserts nothing.

    python benchmarks/alignment_cost.py                     # teacher BPE 4096 -> student BPE 8192, 8 x 256
    python benchmarks/alignment_cost.py --rounds 3 --steps 5   # quick check

Prints ``RATIO alignment/step`` (the goal: <= 0.15).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from distill.align.batch import collate
from distill.align.encode import TextAligner, align_encoded, encode_documents, truncate
from distill.align.vocab import vocab_mapping
from distill.cli.resolvers import auto_precision
from distill.data.tokenizer import train_bpe
from distill.losses.cross_vocab import cross_vocab_loss
from distill.losses.dual_space import DualSpace
from distill.losses.objective import Outputs
from distill.losses.uncovered import uncovered_ce
from distill.student.scratch import build_llama


def corpus(n_files: int) -> list[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(lib.glob("*.py"))[:n_files]]


def tokenizers(work: Path, texts: list[str], teacher_vocab: int, student_vocab: int):
    out = []
    for vocab in (teacher_vocab, student_vocab):
        train_bpe(texts, vocab, work / f"bpe{vocab}")
        out.append(AutoTokenizer.from_pretrained(str(work / f"bpe{vocab}")))
    return out


def rows_of_text(texts: list[str], tokenizer, batch: int, seq_len: int) -> list[str]:
    """``batch`` pieces of text of about ``seq_len`` student tokens each (from the end of the corpus,
    which the tokenizers were not trained on)."""
    rows, text = [], "\n".join(texts)
    ids = tokenizer(text[-400_000:], add_special_tokens=False, return_offsets_mapping=True)
    offsets = ids["offset_mapping"]
    base = len(text) - 400_000
    for b in range(batch):
        lo, hi = offsets[b * seq_len][0], offsets[(b + 1) * seq_len - 1][1]
        rows.append(text[base + lo : base + hi])
    return rows


def align_batch(aligner: TextAligner, rows: list[str], seq_len: int):
    """The data path's added work: tokenize for both with offsets, align, collate."""
    pairs = [aligner.encode([row], student_len=seq_len, teacher_len=2 * seq_len) for row in rows]
    alignments = [align_encoded(t, s) for t, s in pairs]
    t_len, s_len = max(len(t.ids) for t, _ in pairs), max(len(s.ids) for _, s in pairs)
    return pairs, collate(alignments, t_len, s_len)


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-vocab", type=int, default=4096)
    parser.add_argument("--student-vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--files", type=int, default=120, help="stdlib files to train the tokenizers on")
    args = parser.parse_args()

    texts = corpus(args.files)
    with tempfile.TemporaryDirectory() as work:
        teacher_tok, student_tok = tokenizers(Path(work), texts[:-20], args.teacher_vocab, args.student_vocab)
    aligner = TextAligner(teacher_tok, student_tok)
    rows = rows_of_text(texts, student_tok, args.batch, args.seq_len)
    pairs, batch = align_batch(aligner, rows, args.seq_len)
    print(f"tokenizers: teacher BPE {len(teacher_tok)}, student BPE {len(student_tok)}; {len(rows)} rows")
    stats = sum((align_encoded(t, s).stats for t, s in pairs), start=type(aligner.align(["x"])[2].stats)())
    print("alignment:", stats.summary())

    student = build_llama(
        len(student_tok), hidden_size=args.hidden, num_layers=args.layers, num_heads=4, max_seq_len=args.seq_len + 1
    )
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    x = torch.randint(0, len(student_tok), (args.batch, args.seq_len + 1))
    precision = auto_precision("cpu")
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    print(f"student: {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M params, {precision}")

    def step():
        with amp:
            out = student(input_ids=x[:, :-1], labels=x[:, 1:], use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    encoded_docs = [(encode_documents(teacher_tok, [r]), encode_documents(student_tok, [r])) for r in rows]
    align_only = lambda: [align_encoded(t, truncate(s, args.seq_len)) for t, s in encoded_docs]
    s_logits = torch.randn(args.batch, max(len(s.ids) for _, s in pairs), len(student_tok), requires_grad=True)
    t_logits = torch.randn(args.batch, max(len(t.ids) for t, _ in pairs), len(teacher_tok))
    labels = torch.randint(0, len(student_tok), s_logits.shape[:2])
    mapping = vocab_mapping(teacher_tok, student_tok, projection=True, prefixes=True)
    # each loss as it runs: the term, with its settings (prefix_kl with cuts=both restricts its classes; within
    # adds the KL inside the class, distill/losses/within.py)
    terms = {
        "uld": ("uld", {}),
        "gold": ("gold", {}),
        "projected_kl": ("projected_kl", {}),
        "prefix_kl": ("prefix_kl", {}),
        "prefix_kl_both": ("prefix_kl", {"prefix_cuts": "both"}),
        "prefix_kl_within": ("prefix_kl", {"prefix_cuts": "both", "prefix_within": 1.0, "prefix_within_rows": "both"}),
        "alm": ("alm", {}),
        "dual_space": ("dual_space", {}),
        "uncovered_ce": ("uncovered_ce", {}),  # prefix_kl's CE on the rows no span starts at (losses/uncovered.py)
    }
    # dual_space reads both models' final hidden states and LM heads (distill/losses/dual_space.py)
    dual = DualSpace(args.hidden, args.hidden)
    hidden = lambda logits, grad: torch.randn(*logits.shape[:2], args.hidden, requires_grad=grad)
    s_out = Outputs(
        s_logits, hidden_states=(hidden(s_logits, True),), head_weight=torch.randn(len(student_tok), args.hidden)
    )
    t_out = Outputs(
        t_logits, hidden_states=(hidden(t_logits, False),), head_weight=torch.randn(len(teacher_tok), args.hidden)
    )

    def loss(name):
        term, settings = terms[name]
        if term == "dual_space":
            dual(s_out, t_out, batch, 1.0, 256)[0].backward()
            return
        if term == "uncovered_ce":
            uncovered_ce(s_logits, labels, batch.student.rows[batch.weight > 0]).backward()
            return
        value, _ = cross_vocab_loss(s_logits, t_logits, batch, weights={term: 1.0}, mapping=mapping, **settings)
        value.backward()

    step(), step()  # warm up
    results = {"step": [], "alignment": [], "align_only": [], **{name: [] for name in terms}}
    for _ in range(args.rounds):  # interleaved, so machine noise hits every row alike
        results["step"].append(timed(step, args.steps))
        results["alignment"].append(timed(lambda: align_batch(aligner, rows, args.seq_len), args.steps))
        results["align_only"].append(timed(align_only, args.steps))
        for name in terms:
            results[name].append(timed(lambda name=name: loss(name), 2))
    med = {k: statistics.median(v) for k, v in results.items()}
    for name, seconds in med.items():
        print(f"{name:>10}: {seconds * 1e3:8.1f} ms")
    print(f"RATIO align_only/step {med['align_only'] / med['step']:.3f}")
    losses = "  ".join(f"{name}_loss/step {med[name] / med['step']:.3f}" for name in terms)
    print(f"RATIO {losses}")
    print(f"RATIO alignment/step {med['alignment'] / med['step']:.3f}  (goal <= 0.15)")


if __name__ == "__main__":
    main()
