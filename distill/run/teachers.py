"""The teacher step with ``teachers=[...]``: each entry resolved and connected like the one teacher of a
run (``distill.run.teacher``, on the config ``member_config`` gives it), then queried through one
``MixtureTeacher``; the memory they add, and what the run reports of each (``teachers.<i>.*``).

With one teacher (``teachers`` unset) every function here is the single-teacher step.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from omegaconf import DictConfig
from torch import nn

from distill.errors import DistillError
from distill.eval.metrics import evaluate, num_params
from distill.losses.mixture import mixture_logprobs, normalized
from distill.quant.memory import fsdp_gathered_teacher, teacher_bytes
from distill.run.cross_teachers import member_metrics
from distill.run.setup import autocast_dtype
from distill.run.teacher import connect_teacher, resolve_teacher
from distill.run.teachers_config import member_config, paired_teacher, several
from distill.sharding import unsharded
from distill.teacher.mixture import MixtureTeacher
from distill.teacher.source import SEVERAL, TeacherSource

log = logging.getLogger(__name__)


def resolve(cfg: DictConfig, dm, for_training: bool = True) -> TeacherSource:
    """The run's teacher(s). The first is resolved as the one teacher would be (loaded when it runs or
    the student is cut from it); the others are loaded only when they run (live). Their tokenizers are
    matched with the student's by the cross-tokenizer step (``distill.run.cross_teachers``)."""
    if not several(cfg):
        return resolve_teacher(cfg, dm, for_training)
    members = []
    for i in range(len(cfg.teachers)):
        member = resolve_teacher(member_config(cfg, i), dm, for_training=for_training and i == 0)
        if for_training and member.live:
            member.load_weights()
        members.append(member)
    first = members[0]
    return TeacherSource(
        kind=SEVERAL,
        path=first.path,
        model=first.model,
        history=first.history,
        members=members,
        weights=normalized([float(e.weight) for e in cfg.teachers]),
    )


def connect(cfg: DictConfig, dm, source: TeacherSource, objective=None) -> TeacherSource:
    """What the training module will query: one scorer per teacher, behind a ``MixtureTeacher``."""
    if source.kind != SEVERAL:
        return connect_teacher(cfg, dm, source, objective)
    for i, member in enumerate(source.members):
        try:
            connect_teacher(member_config(cfg, i), dm, member, objective)
        except DistillError as err:
            raise DistillError(f"teachers[{i}]: {err}") from None
    source.paired = paired_teacher(cfg, objective) if objective is not None else 0
    mix = cfg.get("teachers_mix", "mixture")
    source.scorer = MixtureTeacher([m.scorer for m in source.members], source.weights, mix, source.paired)
    shares = ", ".join(
        f"{m.kind} {m.path or m.cache_manifest and 'cache'} × {w:.3g}" for m, w in zip(source.members, source.weights)
    )
    log.info("teachers (%s): %s; representation terms pair with teachers[%d]", mix, shares, source.paired)
    return source


def unshard_teachers(source: TeacherSource) -> None:
    """Each teacher FSDP2 sharded in place (``trainer.strategy.shard_teacher=true``), as a plain model with
    its full weights again, to measure it (every rank takes part)."""
    for member in source.members:
        member.model = unsharded(member.model)
    source.model = source.members[0].model if source.members else unsharded(source.model)


def add_teachers(estimate: dict, cfg: DictConfig, source: TeacherSource, setup) -> dict:
    """The memory estimate (``distill.quant.memory.estimate_memory``, which counted the first teacher) with
    every other live teacher: its weights (at its ``load_in``), and per batch its logits and their float32
    log-probabilities while they are mixed."""
    if source.kind != SEVERAL:
        return estimate
    counted = source.live_model if setup.teacher_kind == "live" else None
    others = [
        (m.live_model, e.get("load_in")) for m, e in zip(source.members, cfg.teachers) if m.live_model is not None
    ]
    return with_more_teachers(estimate, [(model, load_in) for model, load_in in others if model is not counted], setup)


def with_more_teachers(estimate: dict, teachers: list[tuple], setup) -> dict:
    """``estimate`` plus live teachers given as (model, load_in) (weightless ones too: ``plan=true``)."""
    out = dict(estimate)
    logits = 8.0 * setup.batch_size * setup.seq_len * setup.vocab_size
    sharded = setup.strategy == "fsdp" and setup.shard_teacher and setup.world_size > 1
    for model, load_in in teachers:
        out["teacher weights"] += teacher_bytes(model, load_in) / (setup.world_size if sharded else 1)
        out["loss buffers"] += logits
        if sharded:  # its root and two blocks gathered: an upper bound (the teachers run one after another)
            out["fsdp gathered"] += fsdp_gathered_teacher(model, load_in)
    held = out["student weights"] + out["teacher weights"] + out["optimizer"] + out["fsdp gathered"]
    transient = max(out["activations"] + out["loss buffers"], out["optimizer step"])
    out["total"] = held + out["gradients"] + transient  # as estimate_memory sums its parts
    return out


def teachers_metrics(cfg: DictConfig, dm, vocab_size: int, source: TeacherSource, student, device) -> dict:
    """``teachers.<i>.*`` of each teacher: its weight, kind, parameters and validation perplexity (a cache: as
    its manifest recorded them), and the student's top-1 agreement and KL to it. The first teacher also keeps
    ``teacher.*`` (measured by the run as for one teacher)."""
    if source.kind != SEVERAL:
        return {}
    out = {"teachers.count": len(source.members), "teachers.mix": cfg.get("teachers_mix", "mixture")}
    for i, (member, entry) in enumerate(zip(source.members, cfg.teachers)):
        prefix = f"teachers.{i}."
        out |= {prefix + "weight": source.weights[i], prefix + "source": member.kind}
        out[prefix + "name"] = entry.get("name") or str(i)
        out[prefix + "path"] = member.path if member.live else entry.get("cache_dir")
        reads = getattr(source.scorer, "reads", None)
        if member.live_model is not None and reads is not None:  # teachers on rows of their own tokenizers
            found = member_metrics(dm, reads[i], member.live_model.to(device), student, device, amp(cfg))
            out |= {prefix + k: v for k, v in found.items()}
        elif member.live_model is not None:
            out |= {
                prefix + k: v
                for k, v in measure_member(cfg, dm, vocab_size, member.live_model, student, device).items()
            }
        elif member.cache is not None:
            extra = member.cache_manifest.get("extra", {})
            out |= {prefix + k.split(".", 1)[1]: v for k, v in extra.items() if k.startswith("teacher.")}
    return out | mixture_metrics(cfg, dm, vocab_size, source, student, device)


class MixtureModel(nn.Module):
    """The live teachers' mixture as one model for ``evaluate``: its "logits" are the mixture's
    log-probabilities (softmax leaves them as they are), so its perplexity is the ensemble's."""

    def __init__(self, models: list, weights: list[float], vocab_size: int):
        super().__init__()
        self.models, self.weights, self.vocab_size = nn.ModuleList(models), weights, vocab_size

    def forward(self, input_ids, use_cache=False):
        logits = [m(input_ids=input_ids, use_cache=False).logits[..., : self.vocab_size] for m in self.models]
        return SimpleNamespace(logits=mixture_logprobs(logits, self.weights))


def mixture_metrics(cfg: DictConfig, dm, vocab_size: int, source: TeacherSource, student, device) -> dict:
    """``teachers.mixture.*`` with live teachers only: the mixture's validation perplexity, and the student's
    top-1 agreement with it and KL(mixture ‖ student), the training target's own divergence."""
    if source.kind != SEVERAL or any(m.live_model is None for m in source.members):
        return {}
    if getattr(source.scorer, "reads", None) is not None:  # several vocabularies: no per-token mixture to score
        return {}
    mixture = MixtureModel([m.live_model for m in source.members], source.weights, vocab_size)
    found = measure_member(cfg, dm, vocab_size, mixture, student, device)
    return {f"teachers.mixture.{k}": v for k, v in found.items() if k != "params"}


def amp(cfg: DictConfig):
    return autocast_dtype(cfg.trainer.precision)


def measure_member(cfg: DictConfig, dm, vocab_size: int, model, student, device) -> dict:
    results = evaluate(
        {"teacher": model.to(device), "student": student.to(device)},
        dm.val_dataloader(),
        vocab_size,
        device=device,
        autocast_dtype=amp(cfg),
    )
    return {
        "params": num_params(model),
        "val_ppl": results["teacher"]["val_ppl"],
        "student_top1_agreement": results["student"]["top1_agreement"],
        "student_kl": results["student"]["kl_to_teacher"],
    }


def first_cached_metrics(source: TeacherSource) -> dict:
    """A cached first teacher's ``teacher.*`` from its manifest, as a run with that one cache reports them."""
    if source.kind != SEVERAL or source.members[0].cache is None:
        return {}
    extra = source.members[0].cache_manifest.get("extra", {})
    return {k: v for k, v in extra.items() if k.startswith("teacher.")}


def forward_cost(metrics: dict, source: TeacherSource, train_tokens: int, single) -> dict:
    """Several teachers: the tokens each ran a forward on (``single``: the one-teacher count,
    ``teacher_forward_tokens``), and ``teacher.forward_tokens`` / ``teacher.forward_flops`` summed over
    all of them (2 FLOPs per parameter per token, each teacher at its own size)."""
    if source.kind != SEVERAL:
        return {}
    out, flops = {}, 0
    for i, member in enumerate(source.members):
        tokens = single(member.kind, train_tokens, member.cache_manifest) or 0
        out[f"teachers.{i}.forward_tokens"] = tokens
        flops += 2 * (metrics.get(f"teachers.{i}.params") or 0) * tokens
    return out | {"teacher.forward_tokens": sum(out.values()), "teacher.forward_flops": flops}
