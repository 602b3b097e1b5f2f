"""Values that types cannot rule out: ranges, and choices among names.

A rule is filed under the callable (or schema record) that declares the setting and its argument name,
``"<dotted callable>.<argument>"`` (``targets.Param.owner``), so it holds wherever that callable is a
``_target_``: any group option, any experiment, a config written tomorrow. ``<...>.weights.*`` is every
value of a dict argument. Each block says where its limits come from; where the code checks the same
limit again when it runs, the rule here only makes it fail first, before any work, in the same form as
every other setting. Choices name the tuple in the code that defines them, so the two cannot drift.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass

from distill.config.suggest import did_you_mean


@dataclass(frozen=True)
class Range:
    """Numbers between ``low`` and ``high`` (either may be open or absent); ``also``: special values
    outside it (``-1``: every core)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        else:
            text = f"{'<' if self.high_open else '<='} {self.high}"
        return " or ".join([text, *map(str, self.also)])

    def problem(self, value) -> str | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value in self.also:
            return None  # types are checked first; other alternatives of a union (a string) pass here
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if math.isfinite(value) and low_ok and high_ok:
            return None
        finite = math.isfinite(value)
        if str(self).startswith("in "):
            return f"expected a {'' if finite else 'finite '}value {self}"
        return f"expected {self}" if finite else f"expected a finite number {self}"


@dataclass(frozen=True)
class OneOf:
    """One of the choices: a tuple, or the dotted name of the tuple (or dict) in the code that holds them."""

    choices: tuple | str
    fold_case: bool = False  # the code lower-cases the value before comparing

    def problem(self, value) -> str | None:
        options = resolve(self.choices)
        given = value.lower() if self.fold_case and isinstance(value, str) else value
        if value is None or given in options:
            return None
        listed = ", ".join(repr(c) for c in options)
        hint = did_you_mean(value, [c for c in options if isinstance(c, str)]) if isinstance(value, str) else ""
        return f"expected one of {listed}{hint}"


@dataclass(frozen=True)
class KeysOf:
    """A dict argument whose keys are names from the code (``loss.weights``: the loss terms)."""

    choices: tuple | str
    also: tuple = ()  # names besides the code's (a schedule drives the temperature too)

    def names(self) -> tuple:
        return (*self.also, *resolve(self.choices))

    def unknown(self, value: dict) -> list[str]:
        return [k for k in value if k not in self.names()]


@functools.cache
def resolve(choices: tuple | str) -> tuple:
    if isinstance(choices, tuple):
        return choices
    module, _, name = choices.rpartition(".")
    return tuple(getattr(importlib.import_module(module), name))  # a dict gives its keys


def gt(low):
    return Range(low, low_open=True)


def ge(low, also=()):
    return Range(low, also=also)


def within(low, high, low_open=False, high_open=False):
    return Range(low, high, low_open, high_open)


POSITIVE_INT = ge(1)  # counts and sizes: steps, layers, batch sizes, tokens
FRACTION = within(0, 1)  # probabilities and ratios
S = "distill.config.schema."
DATA = "distill.data.datamodule.TextDataModule."
SENTENCES = "distill.embedding.data.SentenceDataModule."
TRAINER = "lightning.pytorch.trainer.trainer.Trainer."
OBJECTIVE = "distill.losses.objective.Objective."
QAT = "distill.quant.qat.QATPlugin."
QLORA = "distill.quant.qlora.QLoRAPlugin."

RULES = {
    # -- top level and optim: AdamW needs lr > 0 (Loshchilov & Hutter 2019);
    # the cosine schedule decays to min_lr_ratio x lr (distill/distillation.py). Seeds: numpy and Lightning's
    # seed_everything accept [0, 2**32 - 1] and raise otherwise.
    S + "Run.seed": within(0, 2**32 - 1),
    S + "Run.optuna_trial": ge(0),
    S + "Optim.lr": gt(0),
    S + "Optim.weight_decay": ge(0),
    S + "Optim.warmup_steps": ge(0),
    S + "Optim.min_lr_ratio": FRACTION,
    S + "Optim.max_bad_steps": POSITIVE_INT,
    S + "Memory.available_bytes": ge(0),
    # -- planning (plan=true): a device's memory, its peak FLOP/s and the fraction of it a run reaches
    S + "Planning.device_memory_gib": gt(0),
    S + "Planning.peak_tflops": gt(0),
    S + "Planning.mfu": within(0, 1, low_open=True),
    S + "Planning.tokens": POSITIVE_INT,
    # -- seq_kd (Kim & Rush 2016): temperature 0 is greedy decoding (the paper's beam-1 approximation)
    S + "SeqKD.prompt_tokens": POSITIVE_INT,
    S + "SeqKD.new_tokens": POSITIVE_INT,
    S + "SeqKD.temperature": ge(0),
    S + "SeqKD.max_examples": POSITIVE_INT,
    S + "SeqKD.batch_size": POSITIVE_INT,
    # -- teacher: the cache keeps the top_k log-probabilities at a softmax temperature (Hinton et al. 2015:
    # T > 0); read_top_k <= top_k; load_in: distill.quant.quantized_teacher.LOAD_IN (check_load_in);
    # cache_format: the formats distill.teacher.cache_manifest writes (FORMAT_VERSIONS)
    S + "Teacher.load_in": OneOf("distill.quant.quantized_teacher.LOAD_IN", fold_case=True),
    S + "Teacher.top_k": POSITIVE_INT,
    S + "Teacher.cache_format": OneOf("distill.teacher.cache_manifest.FORMAT_VERSIONS"),
    S + "Teacher.temperature": gt(0),
    S + "Teacher.shard_rows": POSITIVE_INT,
    S + "Teacher.micro_batch": POSITIVE_INT,
    S + "Teacher.read_top_k": POSITIVE_INT,
    S + "Teacher.samples": POSITIVE_INT,  # cache_mode=sample: draws per token (<= vocab: the writer checks)
    S + "Teacher.sample_seed": ge(0),
    S + "TeacherScratch.hidden_size": POSITIVE_INT,
    S + "TeacherScratch.num_layers": POSITIVE_INT,
    S + "TeacherScratch.num_heads": POSITIVE_INT,
    S + "TeacherScratch.intermediate_size": POSITIVE_INT,
    S + "TeacherScratch.max_steps": POSITIVE_INT,
    S + "TeacherScratch.lr": gt(0),
    S + "TeacherScratch.weight_decay": ge(0),
    S + "TeacherScratch.warmup_steps": ge(0),
    # -- data: a block is seq_len + 1 tokens, so >= 2 gives one next-token pair (TextDataModule);
    # both splits non-empty (distill.data.split.split_documents); executor and tasks: filters/runner.py
    DATA + "seq_len": ge(2),
    DATA + "batch_size": POSITIVE_INT,
    DATA + "val_fraction": within(0, 1, low_open=True, high_open=True),
    DATA + "vocab_size": POSITIVE_INT,
    DATA + "max_val_blocks": POSITIVE_INT,
    DATA + "num_workers": ge(0),  # torch DataLoader: 0 loads in the main process
    DATA + "executor": OneOf(("local", "slurm")),
    DATA + "filter_tasks": POSITIVE_INT,
    DATA + "filter_workers": ge(1, also=(-1,)),  # -1: one per core
    "distill.data.datamodule.from_stdlib.max_docs": POSITIVE_INT,
    "distill.data.datamodule.from_files.max_docs": POSITIVE_INT,
    "distill.data.prompt_response.from_prompt_response_files.max_docs": POSITIVE_INT,
    # data=chat / stdlib_instruct: distill/data/chat/render.py TRAIN_ON
    "distill.data.chat.datamodule.from_chat_files.max_docs": POSITIVE_INT,
    "distill.data.chat.datamodule.from_stdlib_instruct.max_docs": POSITIVE_INT,
    "distill.data.chat.datamodule.from_stdlib_instruct.max_chars": POSITIVE_INT,
    "distill.data.chat.datamodule.ChatDataModule.train_on": OneOf("distill.data.chat.render.TRAIN_ON"),
    SENTENCES + "max_docs": POSITIVE_INT,
    SENTENCES + "min_chars": ge(0),
    SENTENCES + "max_length": ge(2),  # distill/embedding/data.py: [CLS] and [SEP] at least
    SENTENCES + "batch_size": POSITIVE_INT,
    SENTENCES + "eval_batch_size": POSITIVE_INT,
    SENTENCES + "val_fraction": within(0, 1, low_open=True, high_open=True),
    SENTENCES + "max_train_texts": POSITIVE_INT,
    SENTENCES + "max_val_texts": POSITIVE_INT,
    SENTENCES + "num_workers": ge(0),
    # -- data/filters: thresholds as their sources define them (docstrings of each filter module);
    # a scored text needs 2 tokens for one next-token log-probability (filters/scoring.py)
    "distill.data.filters.code.CodeQualityFilter.max_line_length": POSITIVE_INT,
    "distill.data.filters.code.CodeQualityFilter.mean_line_length": gt(0),
    "distill.data.filters.code.CodeQualityFilter.min_alphanumeric_fraction": FRACTION,
    "distill.data.filters.code.CodeQualityFilter.autogenerated_scan_lines": ge(0),
    "distill.data.filters.code.CodeQualityFilter.min_chars_per_token": gt(0),
    "distill.data.filters.dedup.MinhashDedup.n_grams": POSITIVE_INT,
    "distill.data.filters.dedup.MinhashDedup.num_buckets": POSITIVE_INT,
    "distill.data.filters.dedup.MinhashDedup.hashes_per_bucket": POSITIVE_INT,
    "distill.data.filters.classifier.QualityClassifier.batch_size": POSITIVE_INT,
    "distill.data.filters.classifier.QualityClassifier.max_tokens": ge(2),
    "distill.data.filters.classifier.QualityClassifier.hidden": ge(0),  # 0: a linear head (FineWeb-Edu)
    "distill.data.filters.scoring.ReferenceRatio.keep_fraction": within(0, 1, low_open=True),
    "distill.data.filters.scoring.ReferenceRatio.batch_size": POSITIVE_INT,
    "distill.data.filters.scoring.ReferenceRatio.max_tokens": ge(2),
    "distill.data.filters.scoring.TeacherPerplexity.low_percentile": within(0, 100),
    "distill.data.filters.scoring.TeacherPerplexity.high_percentile": within(0, 100),
    "distill.data.filters.scoring.TeacherPerplexity.batch_size": POSITIVE_INT,
    "distill.data.filters.scoring.TeacherPerplexity.max_tokens": ge(2),
    # -- loss: divergences of softmax(logits / T) need T > 0 (Hinton et al. 2015); beta interpolates forward
    # (0) and reverse (1) KL in the generalized JSD, lmbda is a probability (GKD, Agarwal et al. 2024);
    # sampling temperature 0 is greedy. distill.losses.spec.loss_spec checks them again when it builds.
    OBJECTIVE + "weights": KeysOf("distill.losses.terms.TERMS"),
    OBJECTIVE + "weights.*": ge(0),
    OBJECTIVE + "temperature": gt(0),
    OBJECTIVE + "beta": FRACTION,
    OBJECTIVE + "tail": OneOf("distill.teacher.outputs.TAIL_MODES"),
    OBJECTIVE + "chunk_size": POSITIVE_INT,
    OBJECTIVE + "compile": OneOf("distill.losses.compiled.COMPILE_MODES"),
    "distill.losses.spec.OnPolicy.lmbda": FRACTION,
    "distill.losses.spec.OnPolicy.max_new_tokens": POSITIVE_INT,
    "distill.losses.spec.OnPolicy.temperature": ge(0),
    S + "HiddenPairs.metric": OneOf("distill.losses.representation.HIDDEN_METRICS"),
    "distill.embedding.losses.EmbeddingObjective.weights": KeysOf("distill.embedding.losses.TERMS"),
    "distill.embedding.losses.EmbeddingObjective.weights.*": ge(0),
    # -- embedding: distill/embedding/pooling.py; dropout is a probability < 1 (torch.nn.Dropout)
    S + "Embedding.pooling": OneOf(("auto", "mean", "cls")),
    S + "Embedding.queries": POSITIVE_INT,
    S + "Embedding.top_k": POSITIVE_INT,
    S + "Embedding.speed_batches": POSITIVE_INT,
    S + "Embedding.speed_rounds": POSITIVE_INT,
    S + "Embedding.student_dropout": within(0, 1, high_open=True),
    # -- students: sizes and calibration counts are >= 1 (distill/student/calibration.py); width's
    # target_params is a count or a fraction of the teacher's (width.py); sparsity is the zeroed
    # fraction of each row (Sun et al. 2023), or an N:M string; LoRA (Hu et al. 2021): r = 0 is off
    "distill.student.depth.depth_pruned.num_layers": POSITIVE_INT,
    "distill.student.depth.depth_pruned.target_params": POSITIVE_INT,
    "distill.student.depth.depth_pruned.calibration_samples": POSITIVE_INT,
    "distill.student.depth.depth_pruned.calibration_batch_size": POSITIVE_INT,
    "distill.student.width.width_pruned.hidden_size": POSITIVE_INT,
    "distill.student.width.width_pruned.intermediate_size": POSITIVE_INT,
    "distill.student.width.width_pruned.num_kv_groups": POSITIVE_INT,
    "distill.student.width.width_pruned.target_params": gt(0),
    "distill.student.width.width_pruned.calibration_samples": POSITIVE_INT,
    "distill.student.width.width_pruned.calibration_batch_size": POSITIVE_INT,
    "distill.student.prune.every_other_layer.offset": ge(0),
    "distill.student.sparsity.sparse_student.method": OneOf("distill.student.sparsity.METHODS"),
    "distill.student.sparsity.sparse_student.sparsity": within(0, 1, high_open=True),
    "distill.student.sparsity.sparse_student.calibration_samples": POSITIVE_INT,
    "distill.student.sparsity.sparse_student.calibration_batch_size": POSITIVE_INT,
    "distill.student.moe.moe_upcycle.num_experts": POSITIVE_INT,
    "distill.student.moe.moe_upcycle.experts_per_token": POSITIVE_INT,
    "distill.student.moe.moe_upcycle.router_init_std": ge(0),
    "distill.student.moe.moe_upcycle.expert_noise_std": ge(0),
    "distill.student.scratch.scratch_student.preset": OneOf("distill.student.scratch.PRESETS", fold_case=True),
    "distill.student.scratch.scratch_student.hidden_size": POSITIVE_INT,
    "distill.student.scratch.scratch_student.num_layers": POSITIVE_INT,
    "distill.student.scratch.scratch_student.num_heads": POSITIVE_INT,
    "distill.student.scratch.scratch_student.num_kv_heads": POSITIVE_INT,
    "distill.student.scratch.scratch_student.intermediate_size": POSITIVE_INT,
    "distill.student.scratch.scratch_student.max_seq_len": ge(2),
    "distill.student.scratch.scratch_student.num_experts": POSITIVE_INT,
    "distill.student.scratch.scratch_student.experts_per_token": POSITIVE_INT,
    "distill.student.lora.apply_lora.type": OneOf("distill.student.lora.TYPES", fold_case=True),
    "distill.student.lora.apply_lora.r": ge(0),
    "distill.student.lora.apply_lora.alpha": gt(0),
    "distill.student.lora.apply_lora.dropout": within(0, 1, high_open=True),
    # -- quant: the bit widths and formats each plugin implements (its module's tuples); a group of
    # weights shares one scale, so it holds at least one weight
    QAT + "weight_bits": OneOf("distill.quant.qat.WEIGHT_BITS"),
    QAT + "group_size": POSITIVE_INT,
    QAT + "activations": OneOf(("int8",)),
    QLORA + "quant_type": OneOf("distill.quant.qlora.QUANT_TYPES"),
    QLORA + "compute_dtype": OneOf("distill.quant.qlora.COMPUTE_DTYPES"),
    QLORA + "export": OneOf("distill.quant.qlora.EXPORTS"),
    "distill.quant.ggml_qat.GGMLQATPlugin.weights": OneOf("distill.quant.ggml_qat.WEIGHT_TYPES"),
    "distill.quant.ggml_qat.GGMLPTQPlugin.weights": OneOf("distill.quant.ggml_qat.WEIGHT_TYPES"),
    "distill.quant.ggml_qat.GGMLQATPlugin.embeddings": OneOf("distill.quant.ggml.TYPES"),
    "distill.quant.ggml_qat.GGMLPTQPlugin.embeddings": OneOf("distill.quant.ggml.TYPES"),
    # -- export: the GGUF types distill/export writes (llama.cpp's ggml types)
    S + "Export.gguf": OneOf(("auto", "f32", "f16", "bf16", "q8_0", "q4_0", "tq2_0")),
    S + "Export.embeddings": OneOf("distill.quant.ggml.TYPES"),
    S + "Export.fallback": OneOf("distill.quant.ggml.TYPES"),
    "distill.quant.ggml_qat.GGMLQATPlugin.fallback": OneOf("distill.quant.ggml.TYPES"),
    "distill.quant.ggml_qat.GGMLPTQPlugin.fallback": OneOf("distill.quant.ggml.TYPES"),
    # -- trainer (Lightning's Trainer docs): distill runs are step-based, the LR schedule needs a length, so
    # max_steps >= 1 (Lightning's -1 = unlimited is refused: a run is bounded by steps); devices -1 = all
    TRAINER + "max_steps": POSITIVE_INT,
    TRAINER + "devices": ge(1, also=(-1,)),
    TRAINER + "num_nodes": POSITIVE_INT,
    TRAINER + "accumulate_grad_batches": POSITIVE_INT,
    TRAINER + "gradient_clip_val": ge(0),
    TRAINER + "log_every_n_steps": POSITIVE_INT,
    TRAINER + "val_check_interval": gt(0),
    TRAINER + "limit_val_batches": ge(0),
    TRAINER + "check_val_every_n_epoch": POSITIVE_INT,
    # ModelCheckpoint: every_n_train_steps 0 saves on no step; save_top_k -1 keeps every checkpoint
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint.every_n_train_steps": ge(0),
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint.save_top_k": ge(-1),
    # -- loss schedules (distill/callbacks/schedules.py): the temperature or a term's weight, over >= 1 steps
    "distill.callbacks.schedules.LossSchedules.schedules": KeysOf("distill.losses.terms.TERMS", also=("temperature",)),
    "distill.callbacks.schedules.Schedule.kind": OneOf("distill.callbacks.schedules.KINDS"),
    "distill.callbacks.schedules.Schedule.steps": POSITIVE_INT,
    "distill.callbacks.schedules.Schedule.warmup_steps": ge(0),
    # -- distill-eval: at least one timed round, batch and generated token (distill/eval/compare.py)
    S + "Speed.rounds": POSITIVE_INT,
    S + "Speed.batches": POSITIVE_INT,
    S + "Speed.warmup": ge(0),
    S + "Speed.new_tokens": POSITIVE_INT,
    S + "Generation.max_new_tokens": POSITIVE_INT,
    S + "LmEval.max_docs": POSITIVE_INT,
    S + "LmEval.max_chars": POSITIVE_INT,
    S + "LmEval.max_items": POSITIVE_INT,
    S + "LmEval.batch_size": POSITIVE_INT,
    S + "LmEval.seed": within(0, 2**32 - 1),
}
