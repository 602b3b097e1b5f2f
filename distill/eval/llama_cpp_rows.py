"""distill-eval's llama.cpp section: every exported GGUF file run by llama.cpp itself (llama-cpp-python,
the ``deploy`` extra) on this machine's CPU threads: perplexity on the same validation rows as the
PyTorch models above it, size on disk, generation tokens/s and time to first token.

Which files (``gguf``): ``auto`` (the default) takes the exports beside each model, as ``distill-export``
names them (``<run>/student.<type>.gguf`` for the model dir ``<run>/student``, and ``*.gguf`` inside a
model dir), when llama.cpp is installed; a list of files or a dict name -> file names them. Each file
is matched to the model whose tokenizer it carries (its token list, id by id): perplexity is measured
only where that is the reference's tokenizer (the rows above are in its tokens); a file of a student
with its own tokenizer gets size and speed, and a note says why no perplexity.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from distill.errors import DistillError
from distill.eval.speed import median


def auto_files(paths: dict[str, Path]) -> dict[str, Path]:
    """``<model>.<type>`` -> file, for the exports beside each model dir (so each file's model is known)."""
    found = {}
    for name, path in paths.items():
        path = Path(path)
        beside = sorted(path.parent.glob(f"{path.name}.*.gguf")) + sorted(path.glob("*.gguf"))
        for file in beside:
            found[f"{name}.{file.name.removesuffix('.gguf').split('.')[-1]}"] = file
    return found


def model_of(name: str, paths: dict[str, Path]) -> str | None:
    """The model an auto-found file was exported from (its name's prefix), else None."""
    return next((m for m in paths if name.startswith(f"{m}.") and "." not in name[len(m) + 1 :]), None)


def named_files(spec, paths: dict[str, Path]) -> dict[str, Path]:
    """The GGUF files of ``llama_cpp.files``: auto (only with llama.cpp installed), a list, or a dict."""
    if spec in (None, "none", False) or spec == []:
        return {}
    if spec == "auto":
        return auto_files(paths) if importlib.util.find_spec("llama_cpp") else {}
    if isinstance(spec, (str, Path)):
        spec = [spec]
    if isinstance(spec, (list, ListConfig)):
        spec = {Path(str(f)).stem: f for f in spec}
    elif not isinstance(spec, (dict, DictConfig)):
        raise DistillError(f"llama_cpp.files={spec!r}: expected auto, a list of .gguf files or a dict name -> file")
    files = {str(k): Path(str(v)).expanduser() for k, v in spec.items()}
    for name, file in files.items():
        if not file.is_file() or file.suffix != ".gguf":
            raise DistillError(f"llama_cpp.files.{name}: {file} is not a .gguf file")
    if files:
        from distill.export.llama_cpp import require

        require()  # one line: install the deploy extra
    return files


def token_list(file: Path) -> list[str]:
    """The vocabulary the file carries (``tokenizer.ggml.tokens``), read with the gguf package."""
    import gguf

    field = gguf.GGUFReader(file).fields.get("tokenizer.ggml.tokens")
    if field is None:
        raise DistillError(f"{file}: no tokenizer.ggml.tokens in its metadata (not a distill-export file?)")
    return [str(t) for t in field.contents()]


def same_vocabulary(tokens: list[str], tokenizer) -> bool:
    """The file holds exactly this tokenizer: each of its ids the same token string, and nothing else
    (the export pads the embedding's extra rows with ``[PAD<i>]``). Exact both ways, since two BPEs
    trained on one text share their first merges: a smaller one is a prefix of the larger."""
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= len(tokens) or any(tokens[i] != t for t, i in vocab.items()):
        return False
    ids = set(vocab.values())
    return all(t == f"[PAD{i}]" for i, t in enumerate(tokens) if i not in ids)


def tokenizer_of(name: str, file: Path, tokenizers: dict, reference: str) -> list[str]:
    """The models whose tokenizer the file carries, the reference's group first."""
    tokens = token_list(file)
    found = [m for m in sorted(tokenizers, key=lambda n: n != reference) if same_vocabulary(tokens, tokenizers[m])]
    if not found:
        raise DistillError(
            f"llama_cpp.files.{name}: {file} carries a tokenizer that none of the models has; add the model it "
            "was exported from to models"
        )
    return found


def gguf_rows(
    files: dict[str, Path], paths, tokenizers: dict, reference: str, shared, batches, prompts, speed, threads
):
    """One row per file: llama.cpp's perplexity (on the reference's rows, where it shares that
    tokenizer), size, and generation speed on the generation prompts (medians, as for the models):
    ``prompts`` maps each model to its prompts' ids, as the PyTorch models were timed on them.
    A file's model: where it lies (auto), else the one model carrying its tokenizer (None if several)."""
    from distill.export import llama_cpp as runtime

    carriers = {name: tokenizer_of(name, file, tokenizers, reference) for name, file in files.items()}  # checks first
    vocab, seq = len(tokenizers[reference]), int(batches[0][0].shape[-1])
    rows = {}
    for name, file in files.items():
        source, placed = carriers[name][0], model_of(name, paths)
        model = placed if placed in carriers[name] else (source if len(carriers[name]) == 1 else None)
        ids = [p or [0] for p in prompts[source]]
        n_ctx = max(seq, max(map(len, ids)) + speed.new_tokens + 1)
        llm = runtime.load(file, n_ctx=n_ctx, threads=threads)
        row = {"path": str(file), "model": model, "size_bytes": file.stat().st_size}
        if source in shared:
            row.update(runtime.perplexity(llm, batches, vocab))
        speeds = [runtime.speed(llm, p, speed.new_tokens, speed.rounds) for p in ids]
        row["gen_tokens_per_s"] = median([s["tokens_per_s"] for s in speeds])
        row["ttft_ms"] = 1e3 * median([s["ttft_s"] for s in speeds])
        row["threads"] = llm.n_threads
        rows[name] = row
        del llm  # frees llama.cpp's context before the next file
    return rows
