"""``distill-eval``: several causal LMs side by side on one validation split, one table.

Quality (perplexity, top-1 agreement and KL to the reference teacher) comes from one pass of
``metrics.evaluate`` over the models that tokenize as the reference does; cost (parameters, bytes on
disk, scoring and generation speed on this machine) from ``speed``; plus greedy samples for a few
prompts. lm-evaluation-harness scores one model on benchmark tasks; it has no teacher-relative
metrics (agreement, KL), hence this.

Models with other tokenizers are compared without tokens (``distill.eval.bytes``): every model gets
bits per byte and per character on one validation text, each under its own tokenizer, and a model
whose tokenizer differs from the reference's gets top-1 agreement on the aligned positions whose
tokens are the same string instead of the per-token metrics. Its speed ratios are per byte of text.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from distill.align.checks import same_tokenization
from distill.cache import write_atomic
from distill.data.packing import tokenize
from distill.errors import DistillError
from distill.eval import lm_eval_task
from distill.eval.answers import answer_metrics
from distill.eval.bytes import model_window, tokenizer_free, validation_text
from distill.eval.compare_table import to_markdown
from distill.eval.llama_cpp_rows import gguf_rows, named_files
from distill.eval.metrics import evaluate, num_params
from distill.eval.speed import generation_latency, median, scoring_throughput, size_on_disk
from distill.safety import pretrained_kwargs, weight_kwargs
from distill.teacher.load import check_model_dir, load_causal_lm

log = logging.getLogger(__name__)


def model_paths(spec) -> dict[str, Path]:
    """``models`` as given: a list of directories (named by their last component, or the last two
    when those clash), a dict name -> directory, or one directory."""
    if isinstance(spec, (DictConfig, dict)):
        named = {str(k): str(v) for k, v in spec.items()}
    elif isinstance(spec, (ListConfig, list, tuple)):
        paths = [str(p) for p in spec]
        names = [Path(p).name for p in paths]
        if len(set(names)) < len(names):
            names = ["/".join(Path(p).parts[-2:]) for p in paths]
        named = dict(zip(names, paths))
        if len(named) < len(paths):
            raise DistillError(f"models: the same directory is given twice: {paths}")
    elif spec:
        named = {Path(str(spec)).name: str(spec)}
    else:
        named = {}
    if not named:
        raise DistillError("models is empty: give model directories, e.g. models='[/runs/a/student,/teachers/t]'")
    dirs = {name: check_model_dir(path, what=f"models.{name}") for name, path in named.items()}
    for name, path in dirs.items():
        weight_kwargs(path, f"models.{name}")  # pickle-only weights refused here, unless allow_pickle
    return dirs


AGREEMENT_ROWS = 16  # rows of the validation text (data.seq_len + 1 reference tokens each): aligned top-1 agreement


def load_tokenizers(paths: dict[str, Path]) -> dict:
    from transformers import AutoTokenizer

    tokenizers = {}
    for name, path in paths.items():
        try:
            tokenizers[name] = AutoTokenizer.from_pretrained(str(path), **pretrained_kwargs())
        except Exception as e:
            raise DistillError(f"models.{name}: cannot load a tokenizer from {path} ({type(e).__name__})") from e
    return tokenizers


def shared_with(reference: str, tokenizers: dict) -> list[str]:
    """The models that tokenize every text as the reference does (``same_tokenization``): only they
    see the same validation tokens, so only their logits compare position by position."""
    return [name for name, tok in tokenizers.items() if same_tokenization(tokenizers[reference], tok)]


@torch.no_grad()
def prompt_ids(tokenizer, prompt: str, chat: bool, whose: str = "the reference model's") -> torch.Tensor:
    """``prompt`` as token ids ``[1, n]``: as text, or (``generation.chat=true``) as a user turn rendered
    by the tokenizer's chat template with the generation prompt, as the chat model was trained."""
    if not chat:
        return tokenizer(prompt, return_tensors="pt").input_ids
    if not tokenizer.chat_template:
        raise DistillError(f"generation.chat=true: {whose} tokenizer has no chat template")
    messages = [{"role": "user", "content": prompt}]
    return torch.tensor([tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]])


def samples(model, tokenizer, prompts: list[str], max_new_tokens: int, device, seed: int, chat=False) -> list[dict]:
    """Greedy continuations (seeded anyway, so a sampling config change stays reproducible); a chat
    model stops at its end of turn (its generation_config's eos ids, set at export)."""
    out = []
    for prompt in prompts:
        torch.manual_seed(seed)
        ids = prompt_ids(tokenizer, prompt, chat).to(device)
        gen = model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=model.config.eos_token_id
        )
        out.append({"prompt": prompt, "completion": tokenizer.decode(gen[0, ids.shape[1] :])})
    return out


def run_eval(cfg: DictConfig) -> dict:
    from distill.run.setup import seed, setup_run  # the load policy and checks of every distill command

    out_dir = setup_run(cfg, "eval")
    seed(cfg)
    paths = model_paths(cfg.models)
    reference = cfg.get("reference") or next(iter(paths))
    if reference not in paths:
        raise DistillError(f"reference {reference!r} is not one of the models: {list(paths)}")
    tokenizers = load_tokenizers(paths)
    shared = shared_with(reference, tokenizers)
    llama_cpp = cfg.get("llama_cpp") or {}
    gguf_files = named_files(llama_cpp.get("files", "auto"), paths)
    harness = cfg.lm_eval
    if harness.run and importlib.util.find_spec("lm_eval") is None:
        raise DistillError("lm_eval.run=true needs lm-evaluation-harness: pip install 'distill[eval]' (or lm_eval)")
    from distill.run.setup import autocast_dtype, device_of  # heavy: after the one-line checks
    from distill.run.student import check_vocab

    device, amp = torch.device(device_of(cfg)), autocast_dtype(cfg.trainer.precision)

    dm = instantiate(cfg.data)  # the training run's data config: the same split, packing and val blocks
    dm.load_documents()
    dm.use_tokenizer(paths[reference])
    dm.setup("fit")
    tokenizers.update({name: dm.tokenizer for name in shared})  # as the data path set it up (chat template)
    models = {name: load_causal_lm(path, what=f"models.{name}").to(device) for name, path in paths.items()}
    for name, model in models.items():
        check_vocab(len(tokenizers[name]), **{name: model})
    quality, texts = score_quality(models, tokenizers, reference, shared, dm, device, amp)
    batches = [b[0] for b in dm.val_dataloader()][: cfg.speed.batches]
    prompts, chat = list(cfg.generation.prompts), bool(cfg.generation.get("chat", False))
    inputs = {}
    for name, tok in tokenizers.items():  # each model is timed in its own tokens
        own = name not in shared
        ids = [prompt_ids(tok, p, chat, f"models.{name}'s" if own else "the reference model's") for p in prompts]
        inputs[name] = (own_batches(tok, texts, batches, model_window(models[name])) if own else batches, ids)
    timings = time_models(models, inputs, cfg.speed, device, amp)
    rows, texts_out = {}, {}
    for name, model in models.items():
        rows[name] = {
            "path": str(paths[name]),
            "shared_tokenizer": name in shared,
            "params": num_params(model),
            "size_bytes": size_on_disk(paths[name]),
            **quality.get(name, {}),
            **{k: median([t[k] for t in timings[name]]) for k in timings[name][0]},
        }
        if rows[name]["ms_per_token"] > 0:  # from the median latency, so the two columns agree
            rows[name]["gen_tokens_per_s"] = 1e3 / rows[name]["ms_per_token"]
        texts_out[name] = samples(
            model, tokenizers[name], prompts, cfg.generation.max_new_tokens, device, cfg.seed, chat
        )
        # data=stdlib_instruct: greedy answers to held-out prompts, in rows of the reference's tokens
        if getattr(dm, "answers_are_python", False) and name in shared:
            answers = answer_metrics({name: model}, dm, device)
            rows[name].update({k.removeprefix(f"{name}."): v for k, v in answers.items() if k.startswith(name)})
    add_ratios(rows, reference)
    gguf = gguf_rows(
        gguf_files,
        paths,
        tokenizers,
        reference,
        shared,
        list(dm.val_dataloader()),
        {name: [p[0].tolist() for p in ids] for name, (_, ids) in inputs.items()},  # generation.chat applied
        cfg.speed,
        llama_cpp.get("threads"),
    )
    harness_commands = run_harness(harness, dm, paths, rows, out_dir, device.type)  # each with its own tokenizer
    result = {
        "reference": reference,
        "models": rows,
        "samples": texts_out,
        "data": {
            "val_tokens": quality[reference]["tokens"],
            "val_blocks": len(dm.val_blocks),
            "seq_len": dm.seq_len,
            "speed_batches": len(batches),
            "speed_batch_size": dm.batch_size,
            "text_docs": len(texts),
            "text_chars": sum(len(t) for t in texts),
            "text_bytes": sum(len(t.encode()) for t in texts),
        },
        "device": device_name(device),
        "precision": str(cfg.trainer.precision),
        "settings": OmegaConf.to_container(cfg.speed, resolve=True),
        "lm_eval_commands": harness_commands,
        "llama_cpp": gguf,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    write_atomic(out_dir / "eval.md", markdown)
    print(markdown)
    return result


def score_quality(models, tokenizers, reference, shared, dm, device, amp) -> tuple[dict, list[str]]:
    """Per model: the per-token metrics (``evaluate``) where it shares the reference's tokenizer, and
    the tokenizer-free ones on the validation text for every model; returns them and that text."""
    log.info("scoring %d models on %d validation blocks of %d tokens", len(shared), len(dm.val_blocks), dm.seq_len)
    same = {name: models[name] for name in shared}
    quality = evaluate(same, dm.val_dataloader(), len(dm.tokenizer), reference, device, autocast_dtype=amp)
    texts = validation_text(dm)
    if not texts:
        if len(shared) < len(models):
            raise DistillError(
                "models with different tokenizers compare by bits per byte: this data has no validation text"
            )
        return quality, texts
    pairs = {name: (model, tokenizers[name]) for name, model in models.items()}
    with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
        for name, metrics in tokenizer_free(pairs, reference, shared, texts, dm.seq_len + 1, AGREEMENT_ROWS).items():
            quality.setdefault(name, {}).update(metrics)
    return quality, texts


def own_batches(tokenizer, texts: list[str], like: list[torch.Tensor], window: int) -> list[torch.Tensor]:
    """Batches of the shapes the reference is timed on (the length capped at the model's window),
    from this tokenizer's tokens of the validation text, repeated where they are fewer."""
    ids = torch.from_numpy(tokenize(texts, tokenizer).astype(np.int64))
    out = []
    for batch in like:
        shape = (batch.shape[0], min(batch.shape[1], window))
        numel = shape[0] * shape[1]
        out.append(ids.repeat(-(-numel // len(ids)))[:numel].view(shape))
    return out


def time_models(models: dict, inputs: dict, speed: DictConfig, device, amp) -> dict[str, list[dict]]:
    """Scoring throughput and generation latency per model, on its ``inputs`` (batches, prompt ids)."""
    timings = {name: [] for name in models}
    for r in range(speed.rounds):  # rounds interleave the models, so machine noise hits them alike
        for name, model in models.items():
            log.info("timing %s (round %d of %d)", name, r + 1, speed.rounds)
            batches, ids = inputs[name]
            t = {"scoring_tokens_per_s": scoring_throughput(model, batches, device, amp, warmup=speed.warmup)}
            t.update(generation_latency(model, ids, speed.new_tokens, device, amp))
            timings[name].append(t)
    return timings


def run_harness(
    harness: DictConfig, dm, paths: dict[str, Path], rows: dict[str, dict], out_dir: Path, device: str
) -> dict[str, str]:
    """Local lm-evaluation-harness tasks from the validation documents (always written, cheap), and
    the ``lm_eval`` command for each model; with ``lm_eval.run=true`` the commands run and their
    metrics join the rows as ``lm_eval.<task>.<metric>``."""
    tasks_dir = out_dir / "lm_eval_tasks"
    tasks = lm_eval_task.write_tasks(
        [d.text for d in dm.val_docs],
        tasks_dir,
        max_docs=harness.max_docs,
        max_chars=harness.max_chars,
        max_items=harness.max_items,
        seed=harness.seed,
    )
    commands = {}
    for name, path in paths.items():
        results_dir = out_dir / "lm_eval" / name.replace("/", "_")
        cmd = lm_eval_task.lm_eval_command(path, tasks, tasks_dir, results_dir, device, harness.batch_size)
        commands[name] = lm_eval_task.shell(cmd)
        if not harness.run:
            continue
        log.info("lm-evaluation-harness on %s: %s", name, commands[name])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DistillError(
                f"lm_eval failed on {name} (exit {proc.returncode}): "
                f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}"
            )
        for task, metrics in lm_eval_task.read_results(results_dir).items():
            rows[name].update({f"lm_eval.{task}.{k}": v for k, v in metrics.items()})
    return commands


def add_ratios(rows: dict[str, dict], reference: str) -> None:
    """Each model against the reference: how many times smaller and faster (> 1 = better). Speed of
    a model with another tokenizer is per byte of text (its tokens times its bytes per token), since
    its tokens are not the reference's."""
    ref = rows[reference]
    for row in rows.values():
        per_byte = not row.get("shared_tokenizer", True)
        scale = (lambda r: r["bytes_per_token"]) if per_byte else (lambda r: 1.0)
        row["params_x"] = ref["params"] / row["params"]
        row["size_x"] = ref["size_bytes"] / max(1, row["size_bytes"])
        row["speed_x"] = row["scoring_tokens_per_s"] * scale(row) / (ref["scoring_tokens_per_s"] * scale(ref))
        row["gen_speed_x"] = (
            ref["ms_per_token"] / scale(ref) / (row["ms_per_token"] / scale(row))
            if row["ms_per_token"]
            else float("nan")
        )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
