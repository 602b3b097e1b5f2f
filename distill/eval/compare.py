"""``distill-eval``: several causal LMs side by side on one validation split, one table.

Quality (perplexity, top-1 agreement and KL to the reference teacher) comes from one pass of
``metrics.evaluate`` over every model; cost (parameters, bytes on disk, scoring and generation
speed on this machine) from ``speed``; plus greedy samples for a few prompts. lm-evaluation-harness
scores one model on benchmark tasks; it has no teacher-relative metrics (agreement, KL), hence this.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from distill.cache import write_atomic
from distill.errors import DistillError
from distill.eval import lm_eval_task
from distill.eval.answers import answer_metrics
from distill.eval.metrics import evaluate, num_params
from distill.eval.speed import generation_latency, median, scoring_throughput, size_on_disk
from distill.safety import pretrained_kwargs, weight_kwargs
from distill.teacher.load import check_model_dir, load_causal_lm

log = logging.getLogger(__name__)

# (key, header, format) of the results table, in order
COLUMNS = [
    ("params", "params", lambda v: f"{v / 1e6:.2f}M"),
    ("size_bytes", "size on disk", lambda v: f"{v / 2**20:.1f} MiB"),
    ("val_ppl", "val ppl", lambda v: f"{v:.3f}"),
    ("top1_agreement", "top-1 agreement", lambda v: f"{v:.3f}"),
    ("kl_to_teacher", "KL(teacher‖model)", lambda v: f"{v:.4f}"),
    ("scoring_tokens_per_s", "scoring tokens/s", lambda v: f"{v:,.0f}"),
    ("gen_tokens_per_s", "generation tokens/s", lambda v: f"{v:,.1f}"),
    ("ms_per_token", "ms/token", lambda v: f"{v:.2f}"),
    ("ttft_ms", "time to first token (ms)", lambda v: f"{v:.2f}"),
    # data=stdlib_instruct only (distill/eval/answers.py): a column no model has is left out
    ("answer_compile_rate", "answers compile", lambda v: f"{v:.3f}"),
    ("answer_first_line_match", "def line matches", lambda v: f"{v:.3f}"),
]


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


def check_shared_tokenizer(paths: dict[str, Path]) -> None:
    """One tokenizer for all: the same validation tokens for every model, and comparable logits."""
    from transformers import AutoTokenizer

    vocabs = {}
    for name, path in paths.items():
        try:
            vocabs[name] = AutoTokenizer.from_pretrained(str(path), **pretrained_kwargs()).get_vocab()
        except Exception as e:
            raise DistillError(f"models.{name}: cannot load a tokenizer from {path} ({type(e).__name__})") from e
    first, *rest = vocabs
    for name in rest:
        if vocabs[name] != vocabs[first]:
            differ = len(set(vocabs[first].items()) ^ set(vocabs[name].items()))
            raise DistillError(
                f"models {first} and {name} have different tokenizers ({len(vocabs[first])} vs "
                f"{len(vocabs[name])} tokens, {differ} entries differ): distill-eval compares "
                f"models that share one tokenizer"
            )


@torch.no_grad()
def prompt_ids(tokenizer, prompt: str, chat: bool) -> torch.Tensor:
    """``prompt`` as token ids ``[1, n]``: as text, or (``generation.chat=true``) as a user turn rendered
    by the tokenizer's chat template with the generation prompt, as the chat model was trained."""
    if not chat:
        return tokenizer(prompt, return_tensors="pt").input_ids
    if not tokenizer.chat_template:
        raise DistillError("generation.chat=true: the reference model's tokenizer has no chat template")
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
    check_shared_tokenizer(paths)
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
    vocab_size = len(dm.tokenizer)
    models = {name: load_causal_lm(path, what=f"models.{name}").to(device) for name, path in paths.items()}
    check_vocab(vocab_size, **models)

    log.info("scoring %d models on %d validation blocks of %d tokens", len(models), len(dm.val_blocks), dm.seq_len)
    quality = evaluate(models, dm.val_dataloader(), vocab_size, reference=reference, device=device, autocast_dtype=amp)
    batches = [b[0] for b in dm.val_dataloader()][: cfg.speed.batches]
    prompts, chat = list(cfg.generation.prompts), bool(cfg.generation.get("chat", False))
    ids = [prompt_ids(dm.tokenizer, p, chat) for p in prompts]
    timings = {name: [] for name in models}
    for r in range(cfg.speed.rounds):  # rounds interleave the models, so machine noise hits them alike
        for name, model in models.items():
            log.info("timing %s (round %d of %d)", name, r + 1, cfg.speed.rounds)
            t = {"scoring_tokens_per_s": scoring_throughput(model, batches, device, amp, warmup=cfg.speed.warmup)}
            t.update(generation_latency(model, ids, cfg.speed.new_tokens, device, amp))
            timings[name].append(t)
    rows, texts = {}, {}
    for name, model in models.items():
        rows[name] = {
            "path": str(paths[name]),
            "params": num_params(model),
            "size_bytes": size_on_disk(paths[name]),
            **quality[name],
            **{k: median([t[k] for t in timings[name]]) for k in timings[name][0]},
        }
        if rows[name]["ms_per_token"] > 0:  # from the median latency, so the two columns agree
            rows[name]["gen_tokens_per_s"] = 1e3 / rows[name]["ms_per_token"]
        texts[name] = samples(model, dm.tokenizer, prompts, cfg.generation.max_new_tokens, device, cfg.seed, chat)
        if getattr(dm, "answers_are_python", False):  # data=stdlib_instruct: greedy answers to held-out prompts
            answers = answer_metrics({name: model}, dm, device)
            rows[name].update({k.removeprefix(f"{name}."): v for k, v in answers.items() if k.startswith(name)})
    add_ratios(rows, reference)
    harness_commands = run_harness(harness, dm, paths, rows, out_dir, device.type)
    result = {
        "reference": reference,
        "models": rows,
        "samples": texts,
        "data": {
            "val_tokens": quality[reference]["tokens"],
            "val_blocks": len(dm.val_blocks),
            "seq_len": dm.seq_len,
            "speed_batches": len(batches),
            "speed_batch_size": dm.batch_size,
        },
        "device": device_name(device),
        "precision": str(cfg.trainer.precision),
        "settings": OmegaConf.to_container(cfg.speed, resolve=True),
        "lm_eval_commands": harness_commands,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    write_atomic(out_dir / "eval.md", markdown)
    print(markdown)
    return result


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
    """Each model against the reference: how many times smaller and faster (> 1 = better)."""
    ref = rows[reference]
    for row in rows.values():
        row["params_x"] = ref["params"] / row["params"]
        row["size_x"] = ref["size_bytes"] / max(1, row["size_bytes"])
        row["speed_x"] = row["scoring_tokens_per_s"] / ref["scoring_tokens_per_s"]
        row["gen_speed_x"] = ref["ms_per_token"] / row["ms_per_token"] if row["ms_per_token"] else float("nan")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def to_markdown(result: dict) -> str:
    ref = result["reference"]
    columns = [c for c in COLUMNS if any(c[0] in row for row in result["models"].values())]
    head = ["model", *(h for _, h, _ in columns), "× smaller", "× faster (scoring)"]
    lines = [
        f"# Model comparison (reference teacher: {ref})",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for name, row in result["models"].items():
        cells = [fmt(row[k]) if k in row else "—" for k, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['params_x']:.2f} | {row['speed_x']:.2f} |")
    d = result["data"]
    harness = sorted({k for row in result["models"].values() for k in row if k.startswith("lm_eval.")})
    if harness:
        lines += [
            "",
            "## lm-evaluation-harness (local tasks from the validation split)",
            "",
            "| model | " + " | ".join(k.removeprefix("lm_eval.") for k in harness) + " |",
            "|---|" + "---:|" * len(harness),
        ]
        for name, row in result["models"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row[k]:.4g}" if k in row else "—" for k in harness) + " |")
    lines += [
        "",
        f"Validation: {d['val_tokens']:,} target tokens ({d['val_blocks']} blocks of {d['seq_len']}). "
        f"Speed on {result['device']}, {result['precision']}: scoring over {d['speed_batches']} validation "
        f"batches of {d['speed_batch_size']}; generation greedy, batch 1, {result['settings']['new_tokens']} "
        f"new tokens; medians over the prompts and {result['settings']['rounds']} rounds that interleave the models, "
        f"each after a warm-up.",
        "",
        "## Samples (greedy)",
        "",
    ]
    for name, items in result["samples"].items():
        lines += [f"### {name}", ""]
        for item in items:
            lines += ["```", item["prompt"] + item["completion"], "```", ""]
    if result.get("lm_eval_commands"):
        lines += ["## lm-evaluation-harness commands", "", "```bash", *result["lm_eval_commands"].values(), "```", ""]
    return "\n".join(lines)
