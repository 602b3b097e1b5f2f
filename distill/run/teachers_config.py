"""``teachers=[...]``: several teachers, checked and resolved into full teacher configs at setup.

Each entry takes the keys ``teacher.*`` takes plus ``weight`` (default 1) and ``name``; what it leaves
unset comes from the run's ``teacher`` (e.g. the experiment's ``teacher.scratch``), except ``backend``
(default live), ``path`` and ``cache_dir``, which each entry gives for itself. ``place_teachers`` (called
by every command's setup) writes the resolved entries back into ``teachers`` and the first one into
``teacher``: every step that reads ``teacher`` (the tokenizer, the student pruned from it, the memory
model, distill-prune / -cache / -filter) sees the first teacher listed; ``distill.run.teachers`` runs
them all. Bad entries are refused here, in one line naming the entry and the fix.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf, open_dict

from distill.errors import DistillError
from distill.safety import weight_kwargs
from distill.teacher.load import check_context, check_model_dir, check_tokenizer_dir

OWN_KEYS = ("backend", "path", "cache_dir")  # never inherited from `teacher`: each entry names its own teacher
ENTRY_KEYS = ("weight", "name")  # an entry's keys that are not teacher.* keys


def several(cfg: DictConfig) -> bool:
    return bool(cfg.get("teachers"))


def place_teachers(cfg: DictConfig, check_dirs: bool = True) -> None:
    """Resolve ``teachers`` (if given) into full entries and put the first in ``teacher``, checked
    (``check_dirs=False``: ``plan=true``, where a model dir may hold only its config.json)."""
    if not several(cfg):
        return
    entries = resolved_entries(cfg)
    check_entries(entries)
    if check_dirs:
        check_entry_dirs(entries, cfg.data.get("seq_len"), cfg.get("teachers_mix", "mixture"))
    with open_dict(cfg):
        cfg.teachers = entries
        cfg.teacher = teacher_config(entries[0])


def resolved_entries(cfg: DictConfig) -> list[dict]:
    raw = OmegaConf.to_container(cfg.teachers, resolve=True)
    if not isinstance(raw, list) or len(raw) < 2:
        raise DistillError(
            "teachers must list two or more teachers, e.g. teachers='[{path: A, weight: 0.6}, {path: B, weight: 0.4}]' "
            "(one teacher: use teacher.*)"
        )
    if cfg.teacher.get("path") and not any(isinstance(e, dict) and "path" in e for e in raw):
        raise DistillError("teachers replaces teacher: give each teacher's path in its entry, not teacher.path")
    base = OmegaConf.to_container(cfg.teacher, resolve=True)
    base = {k: v for k, v in base.items() if k not in OWN_KEYS}
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise DistillError(
                f"teachers[{i}]={entry!r}: each teacher is a mapping of teacher.* keys, e.g. {{path: A}}"
            )
        merged = OmegaConf.to_container(OmegaConf.merge(base, {"backend": "live", "weight": 1.0, "name": None}, entry))
        out.append(merged)
    return out


def teacher_config(entry: dict) -> dict:
    """An entry as the ``teacher`` section (its own keys only)."""
    return {k: v for k, v in entry.items() if k not in ENTRY_KEYS}


def check_entries(entries: list[dict]) -> None:
    weights = []
    for i, e in enumerate(entries):
        w = e["weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise DistillError(
                f"teachers[{i}].weight={w!r}: a teacher's weight must be a number >= 0 (0 leaves it out of the "
                f"target); give teachers[{i}].weight=1 or another positive share"
            )
        weights.append(w)
        if e["backend"] not in ("live", "cache"):
            raise DistillError(
                f"teachers[{i}].backend={e['backend']!r}: each teacher is live or cache (teacher=none has no "
                "outputs to mix); drop the entry"
            )
        if e["backend"] == "cache" and not e.get("cache_dir"):
            raise DistillError(f"teachers[{i}] has backend: cache but no cache_dir: give teachers[{i}].cache_dir=<dir>")
    if not any(weights):
        raise DistillError(
            f"teachers: every weight is 0 ({', '.join(f'teachers[{i}].weight=0' for i in range(len(entries)))}): "
            "give at least one teacher a weight > 0"
        )
    names = [e["name"] for e in entries if e["name"] is not None]
    if len(set(names)) < len(names):
        raise DistillError(f"teachers: two entries share a name ({names}): give each a name of its own")


def check_entry_dirs(entries: list[dict], seq_len: int | None, mix: str = "mixture") -> None:
    """Each live teacher's directory (as ``teacher.path`` is checked); under ``teachers_mix=mixture`` one
    tokenizer for all of them (a mixture of distributions needs one vocabulary; under ``sum`` each teacher
    is aligned with the student on its own: ``distill.run.cross_teachers``)."""
    first = None
    for i, e in enumerate(entries):
        if e["backend"] != "live" or not e.get("path"):
            continue
        what = f"teachers[{i}].path"
        weight_kwargs(check_model_dir(e["path"], what), what)
        check_tokenizer_dir(e["path"], what)
        check_context(e["path"], seq_len, what)
        vocab = tokenizer_vocab(e["path"])
        if first is None:
            first = (i, vocab)
        elif vocab != first[1] and mix == "mixture":
            differ = len(set(vocab.items()) ^ set(first[1].items()))
            raise DistillError(
                f"teachers[{i}].path has a different tokenizer from teachers[{first[0]}]'s ({len(vocab)} vs "
                f"{len(first[1])} tokens, {differ} entries differ): teachers_mix=mixture mixes distributions over one "
                "vocabulary; use teachers_mix=sum with a cross-tokenizer term (loss.weights.gold=1), which aligns each "
                "teacher with the student on its own"
            )


def tokenizer_vocab(path: str) -> dict:
    from distill.data.tokenizer import load_tokenizer

    return load_tokenizer(path).get_vocab()


def member_config(cfg: DictConfig, i: int) -> DictConfig:
    """The run's config as if teacher ``i`` were its one teacher (``teacher`` = that entry)."""
    member = cfg.copy()
    with open_dict(member):
        member.teacher = teacher_config(OmegaConf.to_container(cfg.teachers[i], resolve=True))
        member.teachers = None
    return member


def paired_teacher(cfg: DictConfig, loss) -> int:
    """The teacher that hidden-state and attention terms pair with (``loss.hidden.teacher``,
    ``loss.attention.teacher``: a name or an index; default the first)."""
    names = [e.get("name") for e in cfg.teachers]
    chosen = set()
    for block, spec in (("hidden", loss.hidden_spec), ("attention", loss.attention_spec)):
        if not loss.wired(block) or spec.get("teacher") is None:
            continue
        ref = spec["teacher"]
        if isinstance(ref, int) and ref < len(names):
            chosen.add(ref)
        elif ref in names:
            chosen.add(names.index(ref))
        else:
            given = [n for n in names if n] or ["(no entry has a name)"]
            raise DistillError(
                f"loss.{block}.teacher={ref!r} is not one of the teachers: give an index below {len(names)} "
                f"or a name ({', '.join(given)})"
            )
    if len(chosen) > 1:
        raise DistillError(
            "loss.hidden.teacher and loss.attention.teacher name different teachers: representation terms pair "
            "with one teacher; name the same one"
        )
    return chosen.pop() if chosen else 0


def check_teachers(cfg: DictConfig, loss) -> None:
    """Combinations several teachers cannot serve, each refused in one line before any data work."""
    entries = cfg.teachers
    cached = [i for i, e in enumerate(entries) if e.get("backend") == "cache"]
    if cfg.seq_kd.get("enabled"):
        raise DistillError("seq_kd.enabled=true generates with one teacher: use teacher.* instead of teachers=[...]")
    if cfg.get("teachers_mix", "mixture") == "mixture" and loss.fused_linear and len(cached) < len(entries):
        raise DistillError(
            "teachers_mix=mixture mixes the live teachers' logits, which loss.fused_linear=true never builds: "
            "set loss.fused_linear=false, or teachers_mix=sum (each teacher's loss fused on its own)"
        )
    if cached and loss.on_policy.lmbda > 0:
        raise DistillError(
            f"on-policy sampling (loss.on_policy.lmbda > 0) needs every teacher live, but teachers[{cached[0]}] is a "
            "cache (it knows only the rows it was written for)"
        )
    if loss.wired("dual_space"):  # its projections and heads are sized to one teacher (distill/losses/dual_space.py)
        raise DistillError(
            "loss.weights.dual_space reads one teacher's final hidden state and LM head: use teacher.* instead of "
            "teachers=[...], or another cross-tokenizer term (loss=prefix_kl, loss=gold)"
        )
    if loss.uses("prefix_kl") and loss.prefix_spec["uncovered_ce"] > 0:  # rows left by one teacher's alignment
        raise DistillError(
            "loss.prefix_kl.uncovered_ce weights the student's rows one teacher's spans leave out: use teacher.* "
            "instead of teachers=[...], or set loss.prefix_kl.uncovered_ce=0"
        )
    paired = paired_teacher(cfg, loss)
    if paired in cached and (loss.needs_hidden_states or loss.needs_attentions):
        raise DistillError(
            f"hidden-state / attention terms pair with teachers[{paired}], a cache (top-k log-probabilities only): "
            "name a live teacher with loss.hidden.teacher=<name or index>"
        )
