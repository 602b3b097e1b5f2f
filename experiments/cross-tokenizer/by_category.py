"""Where each student's bits go: its NLL on the validation text split by the kind of character each of its
tokens starts with (a digit, a newline, punctuation, a space or tab, a letter starting a word, a letter inside
one), in bits per byte of the whole text, so a row sums to the run's bits per byte (up to the windows: rows of
256 tokens here). Two students with one tokenizer compare category by category; across tokenizers the
categories move (Llama 3's split starts '.append' with punctuation, GPT-2's starts 'append' inside a word).

    python experiments/cross-tokenizer/by_category.py /tmp/xtok_bf16/same_tokenizer_kd \\
        /tmp/xtok_bf16/same_tokenizer_control /tmp/xtok_bf16/prefix_kl_cut_split_4096_llama3 ...

The first run's config gives the validation text (every run of a study reads the same: data.seed=0).
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.eval.bytes import context_id, validation_text
from distill.run.data import prepare_data

CATEGORIES = ("digit", "newline", "punct", "space", "word-start", "word-mid")
WINDOW = 256


def category(text: str, start: int) -> str:
    c, before = text[start], text[start - 1] if start else "\n"
    if c == "\n":
        return "newline"
    if c in " \t":
        return "space"
    if c.isalpha() or c == "_":
        return "word-mid" if before.isalnum() or before == "_" else "word-start"
    return "digit" if c.isdigit() else "punct"


@torch.no_grad()
def nll_by_category(model, tokenizer, text: str) -> Counter:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = [context_id(tokenizer), *enc["input_ids"]], enc["offset_mapping"]
    out = Counter()
    for s in range(0, len(ids) - 1, WINDOW - 1):  # each window starts with the previous one's last token
        x = torch.tensor([ids[s : s + WINDOW]])
        logp = F.log_softmax(model(input_ids=x).logits[0, :-1, : len(tokenizer)].float(), -1)
        for j, v in enumerate((-logp.gather(-1, x[0, 1:, None])[:, 0]).tolist()):
            out[category(text, offsets[s + j][0])] += v
    return out


def main(runs: list[str]) -> None:
    config = json.loads(open(f"{runs[0]}/run_info.json").read())["config"]
    texts = validation_text(prepare_data(OmegaConf.create(config)))
    scale = math.log(2) * sum(len(t.encode()) for t in texts)  # nats -> bits per byte of the whole text
    print("| run | " + " | ".join(CATEGORIES) + " | total |")
    print("|---|" + "---:|" * (len(CATEGORIES) + 1))
    for run in runs:
        model = AutoModelForCausalLM.from_pretrained(f"{run}/student").eval()
        tokenizer = AutoTokenizer.from_pretrained(f"{run}/student")
        total = sum((nll_by_category(model, tokenizer, t) for t in texts), Counter())
        cells = [f"{total[c] / scale:.4f}" for c in CATEGORIES]
        print(f"| {run.rstrip('/').split('/')[-1]} | " + " | ".join(cells) + f" | {sum(total.values()) / scale:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
