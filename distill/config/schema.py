"""The plain sections of the config (no ``_target_``) as typed records, one per section, and the top level
of each app that places them and the groups.

A record lists every key its section may hold and the type of each: a key the record does not name is an
error (with the nearest valid name), a key it names may be left out (the YAML files give the values;
this checks what they and the command line give). Ranges that types cannot say are in ``ranges``.
Groups built with ``hydra.utils.instantiate`` are marked ``Built``: their schema is their target's
signature (``targets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal


@dataclass(frozen=True)
class Built:
    """A group whose value is a ``_target_`` node, or with ``many`` a dict of them (name -> node)."""

    many: bool = False  # logger, callbacks: an entry without _target_ is a leftover override of a preset
    # that was switched off (callbacks=none under an experiment that tunes a callback): skipped, as the run does
    optional: bool = False  # quant=none leaves {}: nothing is built
    # keys the run takes out of the node before instantiating it: key -> the callable they are arguments of
    extra: tuple[tuple[str, str], ...] = ()


@dataclass
class Optim:
    """``optim``: AdamW with linear warmup and a cosine decay to ``min_lr_ratio`` (``DistillationModule``)."""

    lr: float
    weight_decay: float
    warmup_steps: int
    min_lr_ratio: float
    max_bad_steps: int  # non-finite steps in a row that stop the run


@dataclass
class Memory:
    """``memory``: the check that the estimated peak fits the device (``distill.safety.check_memory_fits``)."""

    force: bool
    available_bytes: int | None


@dataclass
class Planning:
    """``planning``: the device and budget ``plan=true`` plans for (``distill/run/plan.py``)."""

    device_memory_gib: float
    peak_tflops: float
    mfu: float
    tokens: int | None


@dataclass
class SeqKD:
    """``seq_kd``: sequence-level KD (Kim & Rush 2016), the teacher's continuations as training data."""

    enabled: bool
    prompt_tokens: int
    new_tokens: int | None
    temperature: float
    max_examples: int | None
    batch_size: int


@dataclass
class Paths:
    """``paths``: where runs write and where cached products live."""

    output_dir: str
    cache_dir: str


@dataclass
class TeacherScratch:
    """``teacher.scratch``: the Llama trained from scratch on the corpus when ``teacher.path`` is null."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int | None
    max_steps: int
    lr: float
    weight_decay: float
    warmup_steps: int


@dataclass
class Teacher:
    """``teacher`` (configs/teacher/): a live model, its offline top-k cache, or none."""

    backend: Literal["live", "cache", "none"]
    path: str | None
    load_in: str | None  # null | fp32 | bf16 | 8bit | 4bit (ranges.CHOICES)
    scratch: TeacherScratch
    package: str | None  # task=embedding: a Python package whose get_model_path() is the teacher
    # teacher=cache
    cache_dir: str
    top_k: int
    cache_format: str  # fp16 | compact (distill.teacher.cache_manifest.FORMAT_VERSIONS)
    temperature: float
    shard_rows: int
    micro_batch: int
    read_top_k: int | None
    cache_mode: Literal["topk", "sample"]  # what distill-cache keeps per token (distill.teacher.sampled)
    samples: int  # cache_mode=sample: tokens drawn per position
    sample_seed: int  # cache_mode=sample: the draws' seed (a cache's identity)


@dataclass
class TeacherEntry(Teacher):
    """One entry of ``teachers`` (several teachers): ``teacher``'s keys, its weight and a name."""

    weight: float  # >= 0, not all 0; normalized to sum to 1 (distill.run.teachers)
    name: str | None  # what loss.hidden.teacher / loss.attention.teacher may call it


@dataclass
class Embedding:
    """``embedding`` (task: embedding): pooling and the held-out evaluation of a sentence encoder."""

    pooling: str
    normalize: str | bool  # auto, or true/false
    queries: int
    top_k: int
    speed_batches: int
    speed_rounds: int
    student_dropout: float | None


@dataclass
class LayerPairs:
    """``loss.attention``: the (teacher layer, student layer) pairs compared; ``auto`` spaces them evenly."""

    pairs: str | list[list[int]]
    teacher: int | str | None  # with several teachers (teachers=): the one paired with, by index or name


@dataclass
class HiddenPairs(LayerPairs):
    """``loss.hidden``: the pairs and how their hidden states are compared."""

    metric: str


@dataclass
class Generation:
    """``generation`` (distill-eval): greedy samples from every model."""

    prompts: list[str]
    max_new_tokens: int
    chat: bool = False  # each prompt a user turn, rendered with the chat template


@dataclass
class Speed:
    """``speed`` (distill-eval): timing rounds, batches and generated tokens."""

    rounds: int
    batches: int
    warmup: int
    new_tokens: int


@dataclass
class LmEval:
    """``lm_eval`` (distill-eval): the lm-evaluation-harness tasks written from the validation split."""

    run: bool
    max_docs: int
    max_chars: int
    max_items: int
    batch_size: int
    seed: int


@dataclass
class Export:
    """``export`` (configs/export/): the GGUF file for llama.cpp (``distill.export``)."""

    gguf: str | None  # null | auto | f32 | f16 | bf16 | q8_0 | q4_0 | tq2_0 (ranges)
    embeddings: str | None
    fallback: str | None


@dataclass
class Run:
    """The top level of ``configs/train.yaml``: distill-train, -prune, -cache and -filter compose it."""

    # A key added here that is near no setting (+note=..., +hub.token=...) is the user's own, recorded in
    # run_info.json and the loggers' config; one near a setting (+seeed=1) is a misspelling, an error.
    user_keys: ClassVar[bool] = True

    task_name: str
    task: Literal["causal_lm", "embedding"]
    seed: int
    control: bool
    ckpt_path: str | None
    allow_pickle: bool
    trust_remote_code: bool
    memory: Memory
    plan: bool  # print the plan (memory per device, largest micro-batch, time) and exit
    planning: Planning
    optimized_metric: str
    attn_implementation: str
    optim: Optim
    seq_kd: SeqKD
    paths: Paths
    teacher: Teacher
    teachers: list[TeacherEntry] | None  # several teachers: replaces teacher (distill.run.teachers)
    teachers_mix: Literal["mixture", "sum"]  # their mixture as one target, or the weighted sum of per-teacher losses
    data: Annotated[dict, Built()]
    # student.lora, .tokenizer, .vocab_size and .tokenizer_style are taken out before the builder is called
    # (distill.run.student.student_spec); the last three are the student's own tokenizer (distill.run.cross)
    student: Annotated[
        dict,
        Built(
            extra=(
                ("lora", "distill.student.lora.apply_lora"),
                ("tokenizer", "distill.run.cross.own_tokenizer"),
                ("vocab_size", "distill.run.cross.own_tokenizer"),
                ("tokenizer_style", "distill.run.cross.own_tokenizer"),
            )
        ),
    ]
    loss: Annotated[dict, Built()]
    quant: Annotated[dict | None, Built(optional=True)]
    trainer: Annotated[dict, Built()]
    logger: Annotated[dict | None, Built(many=True)]
    callbacks: Annotated[dict | None, Built(many=True)]
    optuna_trial: int | None  # hparams_search: the sweeper's trial number
    embedding: Embedding  # task: embedding
    export: Export


@dataclass
class Eval(Run):
    """The top level of ``configs/eval.yaml``: the training config plus what distill-eval compares."""

    models: list[str] | dict[str, str] | str
    reference: str | None
    generation: Generation
    speed: Speed
    lm_eval: LmEval


@dataclass
class ExportRun(Run):
    """The top level of ``configs/export.yaml``: distill-export's run (or model) dir."""

    run_dir: str


APPS = {"train": Run, "prune": Run, "cache": Run, "filter": Run, "eval": Eval, "export": ExportRun}

# Dict-valued arguments whose keys are known: "<callable>.<argument>" -> the callable (or record) whose
# arguments they are. Other dict arguments (data.slurm: any sbatch option) are checked for type only.
NESTED = {
    "distill.losses.objective.Objective.on_policy": "distill.losses.spec.OnPolicy",
    "distill.losses.objective.Objective.hidden": "distill.config.schema.HiddenPairs",
    "distill.losses.objective.Objective.attention": "distill.config.schema.LayerPairs",
    "distill.embedding.losses.EmbeddingObjective.hidden": "distill.config.schema.HiddenPairs",
}


def _schedules():
    # imported already when this runs: LossSchedules is the target being checked
    from distill.callbacks.schedules import Schedule

    return dict[str, Schedule | None]


# Where a signature's hint says less than the callable accepts or reads: "<callable>.<argument>" -> a
# function giving the hint to check instead (a function, so nothing is imported before it is needed).
HINTS = {
    # a weight of null leaves its term out (distill.losses.spec.check_weights)
    "distill.losses.objective.Objective.weights": lambda: dict[str, float | None],
    # name -> the Schedule record's keys (distill/callbacks/schedules.py); null switches one off
    "distill.callbacks.schedules.LossSchedules.schedules": _schedules,
}
