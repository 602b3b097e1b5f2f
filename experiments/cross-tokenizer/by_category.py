"""Where each student's bits go: its NLL on the validation text split by the kind of character each of its
tokens starts with (a digit, a newline, punctuation, a space or tab, a letter starting a word, a letter inside
one), in bits per byte of the whole text, so a row sums to the run's bits per byte (up to the windows: rows of
256 tokens here). Two students with one tokenizer compare category by category; across tokenizers the
categories move (Llama 3's split starts '.append' with punctuation, GPT-2's starts 'append' inside a word).
``--chars``: each token's bits spread evenly over the characters it covers, summed by each character's kind
(a newline, the indentation at a line's start, another space, a letter starting a word or inside one, a digit,
punctuation): one set of categories for every tokenizer (GPT-2's '\n' + indentation in one token, Llama 3's
apart, are the same characters).

    python experiments/cross-tokenizer/by_category.py [--chars] /tmp/xtok_bf16/same_tokenizer_kd \\
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
CHAR_CATEGORIES = ("newline", "indent", "space", "word-start", "word-mid", "digit", "punct")
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


def char_categories(text: str) -> list[str]:
    """Each character's kind (``CHAR_CATEGORIES``); a space or tab before a line's first other character: indent."""
    out, line_start = [], True
    for i, c in enumerate(text):
        if c == "\n":
            out.append("newline")
        elif c in " \t":
            out.append("indent" if line_start else "space")
        elif c.isalpha() or c == "_":
            out.append("word-mid" if i and (text[i - 1].isalnum() or text[i - 1] == "_") else "word-start")
        else:
            out.append("digit" if c.isdigit() else "punct")
        line_start = c == "\n" or (line_start and c in " \t")
    return out


def by_token_start(text: str):
    return lambda start, end, v: {category(text, start): v}


def by_characters(text: str):
    kinds = char_categories(text)

    def spread(start: int, end: int, v: float) -> Counter:
        return Counter({k: n * v / (end - start) for k, n in Counter(kinds[start:end]).items()})

    return spread


@torch.no_grad()
def nll_by_category(model, tokenizer, text: str, split=by_token_start) -> Counter:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = [context_id(tokenizer), *enc["input_ids"]], enc["offset_mapping"]
    out, share = Counter(), split(text)
    for s in range(0, len(ids) - 1, WINDOW - 1):  # each window starts with the previous one's last token
        x = torch.tensor([ids[s : s + WINDOW]])
        logp = F.log_softmax(model(input_ids=x).logits[0, :-1, : len(tokenizer)].float(), -1)
        for j, v in enumerate((-logp.gather(-1, x[0, 1:, None])[:, 0]).tolist()):
            out.update(share(*offsets[s + j], v))
    return out


def main(runs: list[str]) -> None:
    chars = runs[0] == "--chars"
    runs, categories, split = (
        (runs[1:], CHAR_CATEGORIES, by_characters) if chars else (runs, CATEGORIES, by_token_start)
    )
    config = json.loads(open(f"{runs[0]}/run_info.json").read())["config"]
    texts = validation_text(prepare_data(OmegaConf.create(config)))
    scale = math.log(2) * sum(len(t.encode()) for t in texts)  # nats -> bits per byte of the whole text
    print("| run | " + " | ".join(categories) + " | total |")
    print("|---|" + "---:|" * (len(categories) + 1))
    for run in runs:
        model = AutoModelForCausalLM.from_pretrained(f"{run}/student").eval()
        tokenizer = AutoTokenizer.from_pretrained(f"{run}/student")
        total = sum((nll_by_category(model, tokenizer, t, split) for t in texts), Counter())
        cells = [f"{total[c] / scale:.4f}" for c in categories]
        print(f"| {run.rstrip('/').split('/')[-1]} | " + " | ".join(cells) + f" | {sum(total.values()) / scale:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
