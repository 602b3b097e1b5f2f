"""The exported student: a Hugging Face encoder directory that is also a sentence-transformers model.

``AutoModel.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load it as for any run, and
``SentenceTransformer(path)`` loads it with the teacher's pooling: the sentence-transformers
files are written by that library (not by hand), so they stay in its format.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from distill.embedding.pooling import Pooling


def export_encoder(student, tokenizer, pooling: Pooling, path: Path, max_seq_length: int) -> None:
    """Write to a temp dir first, so no half export remains."""
    from sentence_transformers import SentenceTransformer, models  # slow import: only at export

    hf_dir, tmp = path.with_name(path.name + ".hf"), path.with_name(path.name + ".partial")
    for d in (hf_dir, tmp):
        shutil.rmtree(d, ignore_errors=True)
    student.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    encoder = models.Transformer(str(hf_dir), max_seq_length=max_seq_length)
    modules = [encoder, models.Pooling(encoder.get_word_embedding_dimension(), pooling_mode=pooling.mode)]
    if pooling.normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(tmp))
    shutil.rmtree(hf_dir)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
