"""validate(): every shipped config is clean; a wrong type, an out-of-range value or a misspelt key in any
group is named in one line (key, value, what is expected, the nearest valid name)."""

from __future__ import annotations

import pytest

from distill.config import validate
from distill.errors import DistillError
from tests.config.conftest import CONFIG_DIR

# What a group option needs beside it to form a run: the values it leaves at ??? (a path only the user
# knows), or the task it belongs to.
CONTEXT = {
    "loss=embedding": ["experiment=minilm_embed"],
    "data=files": ["data.paths=[/data/a.jsonl]"],
    "data=prompt_response": ["data.paths=[/data/a.jsonl]"],
    "data=chat": ["data.paths=[/data/a.jsonl]"],
    "data/filters=classifier": ["data.filters.classifier.labels=/data/labels.jsonl"],
    "data/filters=reference_ratio": ["data.filters.reference_ratio.reference_path=/models/ref"],
    "student=pretrained": ["student.path=/models/student"],
    # the recipes for GPU nodes require their model dirs (${required:...}; tests/run/test_plan.py plans them)
    "experiment=minitron_8b_to_4b": ["teacher.path=/models/teacher"],
    "experiment=cached_8b_to_1b": ["teacher.path=/models/teacher", "student.path=/models/student"],
    "experiment=qlora_8b_to_4b": ["teacher.path=/models/teacher", "student.path=/models/student"],
}
GROUPS = [
    "data",
    "data/filters",
    "teacher",
    "student",
    "loss",
    "quant",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "experiment",
    "hparams_search",
    "debug",
    "hydra/launcher",
]
OPTIONS = [f"{group}={path.stem}" for group in GROUPS for path in sorted((CONFIG_DIR / group).glob("*.yaml"))]


def problem(compose_app, *overrides: str, app: str = "train") -> str:
    with pytest.raises(DistillError) as err:
        validate(compose_app(app, *overrides), app)
    return str(err.value)


def test_every_group_has_options():
    assert {"experiment=smoke", "student=depth", "loss=gkd", "data/filters=web", "hydra/launcher=slurm"} <= set(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
def test_every_group_option_validates(option, compose_app):
    validate(compose_app("train", *CONTEXT.get(option, []), option), "train")


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
@pytest.mark.parametrize("app", ["train", "prune", "cache", "filter"])
def test_every_experiment_validates_in_every_app(experiment, app, compose_app):
    validate(compose_app(app, f"experiment={experiment}", *CONTEXT.get(f"experiment={experiment}", [])), app)


def test_eval_validates(compose_app):
    validate(compose_app("eval", "experiment=smoke", "models=[/runs/a/student,/teachers/t]"), "eval")
    validate(compose_app("eval", "models={teacher: /teachers/t, kd: /runs/a/student}"), "eval")


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.temperature=2"],  # an int where a float is expected
        ["data.max_docs=null", "student=depth", "student.num_layers=null"],  # None where the hint is Optional
        ["loss.weights.ce=null"],  # a null weight leaves its term out
        ["student=wanda", "student.sparsity=2:4"],  # N:M sparsity as a string
        ["+callbacks.loss_schedules.schedules.temperature={kind: linear, start: 4.0, end: 1.0}"],
        ["trainer.devices=-1", "data.filter_workers=-1"],  # the special values beside the ranges
        ["teacher=cache", "teacher.read_top_k=16", "+trainer.strategy=ddp"],
    ],
)
def test_valid_values_pass(overrides, compose_app):
    validate(compose_app("train", "experiment=smoke", *overrides), "train")


WRONG_TYPES = [  # one or more per group: (overrides, the whole message)
    (["data.batch_size=abc"], "data.batch_size='abc': expected an integer (int)"),
    (
        ["data/filters=code", "data.filters.code.max_line_length=long"],
        "data.filters.code.max_line_length='long': expected an integer or null (int | None)",
    ),
    (
        ["data/filters=web", "data.filters.web.steps=3"],
        "data.filters.web.steps=3: expected a list (list[PipelineStep])",
    ),
    (["teacher.scratch.lr=fast"], "teacher.scratch.lr='fast': expected a number (float)"),
    (["teacher=cache", "teacher.top_k=[64]"], "teacher.top_k=[64]: expected an integer (int)"),
    (["student=depth", "student.num_layers=2.5"], "student.num_layers=2.5: expected an integer or null (int | None)"),
    (["student.lora.r=big"], "student.lora.r='big': expected an integer (int)"),
    (["loss.temperature=abc"], "loss.temperature='abc': expected a number (float)"),
    (["loss.on_policy.max_new_tokens=many"], "loss.on_policy.max_new_tokens='many': expected an integer (int)"),
    (
        ["quant=qat_int8_int4", "quant.skip_indivisible=maybe"],
        "quant.skip_indivisible='maybe': expected true or false (bool)",
    ),
    (["trainer.max_steps=ten"], "trainer.max_steps='ten': expected an integer (int)"),
    (
        ["trainer.precision=fp16"],
        (
            "trainer.precision='fp16': expected one of 64, 32, 16, 'transformer-engine', "
            "'transformer-engine-float16', '16-true', '16-mixed', 'bf16-true', 'bf16-mixed', '32-true', '64-true', "
            "'64', '32', '16', 'bf16' or null"
        ),
    ),
    (["logger=wandb", "logger.wandb.offline=maybe"], "logger.wandb.offline='maybe': expected true or false (bool)"),
    (
        ["callbacks.model_checkpoint.save_top_k=x"],
        "callbacks.model_checkpoint.save_top_k='x': expected an integer (int)",
    ),
    (["paths.cache_dir=[1]"], "paths.cache_dir=[1]: expected a string (str)"),
    (
        ["hparams_search=kd_optuna", "callbacks.optuna_pruning.monitor=3"],
        "callbacks.optuna_pruning.monitor=3: expected a string (str)",
    ),
    (
        ["debug=default", "trainer.limit_val_batches=all"],
        "trainer.limit_val_batches='all': expected a number or null (int | float | None)",
    ),
    (["experiment=minilm_embed", "embedding.queries=many"], "embedding.queries='many': expected an integer (int)"),
    (["seed=abc"], "seed='abc': expected an integer (int)"),
    (["control=yes"], "control='yes': expected true or false (bool)"),
    (["optim.lr=fast"], "optim.lr='fast': expected a number (float)"),
    (["memory.force=2"], "memory.force=2: expected true or false (bool)"),
    (["seq_kd.enabled=sometimes"], "seq_kd.enabled='sometimes': expected true or false (bool)"),
    (["student=layers", "student.layers=[0,x]"], "student.layers[1]='x': expected an integer (int)"),
    (
        ["+callbacks.loss_schedules.schedules.ce={start: high}"],
        "callbacks.loss_schedules.schedules.ce.start='high': expected a number (float)",
    ),
]


@pytest.mark.parametrize("overrides, message", WRONG_TYPES)
def test_a_wrong_type_names_key_value_and_type(overrides, message, compose_app):
    assert problem(compose_app, "experiment=smoke", *overrides) == message


OUT_OF_RANGE = [
    (["data.val_fraction=1.5"], "data.val_fraction=1.5: expected a value in (0, 1)"),
    (["data.seq_len=1"], "data.seq_len=1: expected >= 2"),
    (["data.executor=cluster"], "data.executor='cluster': expected one of 'local', 'slurm'"),
    (["data/filters=dedup", "data.filters.minhash.n_grams=0"], "data.filters.minhash.n_grams=0: expected >= 1"),
    (
        ["data/filters=teacher_ppl", "data.filters.teacher_ppl.high_percentile=120"],
        "data.filters.teacher_ppl.high_percentile=120: expected a value in [0, 100]",
    ),
    (["teacher=cache", "teacher.top_k=0"], "teacher.top_k=0: expected >= 1"),
    (
        ["teacher=cache", "teacher.cache_format=compakt"],
        "teacher.cache_format='compakt': expected one of 'fp16', 'compact'; did you mean compact?",
    ),
    (
        ["teacher.load_in=16bit"],
        ("teacher.load_in='16bit': expected one of 'fp32', 'bf16', '8bit', '4bit'; did you mean 8bit?"),
    ),
    (["teacher=cache", "teacher.cache_mode=samples"], "teacher.cache_mode='samples': expected one of 'topk', 'sample'"),
    (["teacher=cache", "teacher.samples=0"], "teacher.samples=0: expected >= 1"),
    (["teacher.scratch.num_layers=0"], "teacher.scratch.num_layers=0: expected >= 1"),
    (["student=width", "student.target_params=-0.5"], "student.target_params=-0.5: expected > 0"),
    (["student=wanda", "student.sparsity=1.0"], "student.sparsity=1.0: expected a value in [0, 1)"),
    (["student.lora.dropout=1"], "student.lora.dropout=1: expected a value in [0, 1)"),
    (["loss.temperature=0"], "loss.temperature=0: expected > 0"),
    (["loss.temperature=nan"], "loss.temperature=nan: expected a finite number > 0"),
    (["loss.weights.ce=-1"], "loss.weights.ce=-1: expected >= 0"),
    (["loss.beta=1.5"], "loss.beta=1.5: expected a value in [0, 1]"),
    (["loss.tail=buckt"], "loss.tail='buckt': expected one of 'bucket', 'renormalize'; did you mean bucket?"),
    (["loss.on_policy.lmbda=2"], "loss.on_policy.lmbda=2: expected a value in [0, 1]"),
    (
        ["loss=hidden", "loss.hidden.metric=cos"],
        ("loss.hidden.metric='cos': expected one of 'mse', 'cosine'; did you mean cosine?"),
    ),
    (["quant=qat_int8_int4", "quant.weight_bits=5"], "quant.weight_bits=5: expected one of 2, 3, 4, 8"),
    (
        ["quant=qlora", "quant.quant_type=nf5"],
        "quant.quant_type='nf5': expected one of 'nf4', 'fp4'; did you mean nf4?",
    ),
    (["trainer.max_steps=0"], "trainer.max_steps=0: expected >= 1"),
    (["trainer.devices=0"], "trainer.devices=0: expected >= 1 or -1"),
    (
        ["callbacks.model_checkpoint.every_n_train_steps=-5"],
        "callbacks.model_checkpoint.every_n_train_steps=-5: expected >= 0",
    ),
    (["debug=default", "trainer.limit_val_batches=-1"], "trainer.limit_val_batches=-1: expected >= 0"),
    (
        ["experiment=minilm_embed", "embedding.student_dropout=1.5"],
        "embedding.student_dropout=1.5: expected a value in [0, 1)",
    ),
    (["optim.lr=-1.0"], "optim.lr=-1.0: expected > 0"),
    (["optim.min_lr_ratio=2"], "optim.min_lr_ratio=2: expected a value in [0, 1]"),
    (["seed=-1"], "seed=-1: expected a value in [0, 4294967295]"),
    (["seq_kd.temperature=-1"], "seq_kd.temperature=-1: expected >= 0"),
    (["memory.available_bytes=-1"], "memory.available_bytes=-1: expected >= 0"),
    (["task=embed"], "task='embed': expected one of 'causal_lm', 'embedding'"),
]


@pytest.mark.parametrize("overrides, message", OUT_OF_RANGE)
def test_an_out_of_range_value_names_key_value_and_range(overrides, message, compose_app):
    assert problem(compose_app, "experiment=smoke", *overrides) == message


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["speed.rounds=x"], "speed.rounds='x': expected an integer (int)"),
        (["speed.rounds=0"], "speed.rounds=0: expected >= 1"),
        (["generation.prompts=hello"], "generation.prompts='hello': expected a list (list[str])"),
        (["lm_eval.run=perhaps"], "lm_eval.run='perhaps': expected true or false (bool)"),
        (["models=3"], "models=3: expected a list or a mapping or a string (list[str] | dict[str, str] | str)"),
    ],
)
def test_eval_settings(overrides, message, compose_app):
    assert problem(compose_app, "models=[/runs/a/student]", *overrides, app="eval") == message


MISSPELT = [
    (
        ["+loss.temprature=1"],
        (
            "loss.temprature: unknown key, not an argument of distill.losses.objective.Objective; "
            "did you mean loss.temperature?"
        ),
    ),
    (
        ["+data.batchsize=4"],
        (
            "data.batchsize: unknown key, not an argument of distill.data.datamodule.from_stdlib; "
            "did you mean data.batch_size?"
        ),
    ),
    (
        ["data/filters=code", "+data.filters.code.max_line_lenght=3"],
        (
            "data.filters.code.max_line_lenght: unknown key, not an argument of distill.data.filters.code.code_stage; "
            "did you mean data.filters.code.max_line_length?"
        ),
    ),
    (
        ["+student.lora.alpah=3"],
        (
            "student.lora.alpah: unknown key, not an argument of distill.student.lora.apply_lora; "
            "did you mean student.lora.alpha?"
        ),
    ),
    (
        ["+trainer.max_step=3"],
        (
            "trainer.max_step: unknown key, not an argument of "
            "lightning.pytorch.trainer.trainer.Trainer; did you mean trainer.max_steps?"
        ),
    ),
    (
        ["+loss.weights.forwrd_kl=1"],
        (
            "loss.weights.forwrd_kl: unknown key, not one of forward_kl, reverse_kl, "
            "jsd, tvd, ce, uld, gold, projected_kl, prefix_kl, alm, dual_space, hidden, attention; did you mean loss.weights.forward_kl?"
        ),
    ),
    (
        ["+loss.on_policy.lambda=0.5"],
        ("loss.on_policy.lambda: unknown key, not a setting of loss.on_policy; did you mean loss.on_policy.lmbda?"),
    ),
    (["+optim.lrr=3"], "optim.lrr: unknown key, not a setting of optim; did you mean optim.lr?"),
    (
        ["+teacher.scratch.hiden_size=3"],
        (
            "teacher.scratch.hiden_size: unknown key, not a setting of teacher.scratch; "
            "did you mean teacher.scratch.hidden_size?"
        ),
    ),
    (["+seeed=1"], "seeed: unknown key, not a setting of the top level; did you mean seed?"),
    (
        ["student._target_=distill.student.depth.deph_pruned"],
        (
            "student._target_='distill.student.depth.deph_pruned': distill.student.depth has no 'deph_pruned'; "
            "did you mean distill.student.depth.depth_pruned?"
        ),
    ),
]


@pytest.mark.parametrize("overrides, message", MISSPELT)
def test_a_misspelt_key_suggests_the_nearest(overrides, message, compose_app):
    assert problem(compose_app, "experiment=smoke", *overrides) == message


def test_keys_of_the_users_own_at_the_top_level(compose_app):
    """+note=... is metadata the user attaches to the run; near a setting, or a setting one level down, it is
    a mistake."""
    validate(compose_app("train", "+note=baseline run", "+hub.token=abc"), "train")
    assert problem(compose_app, "+lr=0.1") == "lr: unknown key, not a setting of the top level; did you mean optim.lr?"
    assert (
        problem(compose_app, "+task_nam=x")
        == "task_nam: unknown key, not a setting of the top level; did you mean task_name?"
    )


def test_an_unknown_key_with_nothing_close_lists_the_valid_ones(compose_app):
    message = problem(compose_app, "+memory.zzz=1")
    assert message == "memory.zzz: unknown key, not a setting of memory (valid: available_bytes, force)"


def test_the_objective_must_fit_the_task(compose_app):
    assert (
        problem(compose_app, "experiment=minilm_embed", "loss=forward_kl")
        == "task=embedding trains with the embedding objective: use loss=embedding"
    )
    assert problem(compose_app, "loss=embedding").startswith("loss=embedding is the sentence-encoder objective")


def test_a_key_outside_a_known_list_of_names(compose_app):
    assert (
        problem(compose_app, "+loss.weights.kd=1")
        == "loss.weights.kd: unknown key, not one of forward_kl, reverse_kl, jsd, tvd, ce, uld, gold, projected_kl, prefix_kl, "
        "alm, dual_space, hidden, attention"
    )


def test_a_missing_mandatory_value_is_named(compose_app):
    assert (
        problem(compose_app, "data=files")
        == "data.paths is missing (???): give it a value, e.g. on the command line data.paths=..."
    )
    assert (
        problem(compose_app, "student=pretrained")
        == "student.path is missing (???): give it a value, e.g. on the command line student.path=..."
    )


def test_an_interpolation_that_cannot_resolve_is_named(compose_app):
    assert (
        problem(compose_app, "loss.temperature=${nowhere}")
        == "loss.temperature='${nowhere}': cannot resolve (Interpolation key 'nowhere' not found)"
    )


def test_an_interpolation_is_checked_as_its_value(compose_app):
    """``seed: ${seed}`` in every data config: a bad seed is named where it is set, not where it is used."""
    assert problem(compose_app, "seed=abc") == "seed='abc': expected an integer (int)"
    assert problem(compose_app, "+tag=x", "data.batch_size=${tag}") == "data.batch_size='x': expected an integer (int)"


def test_a_target_that_does_not_import_is_named(compose_app):
    assert (
        problem(compose_app, "loss._target_=nowhere.Objective")
        == "loss._target_='nowhere.Objective': cannot import nowhere (No module named 'nowhere')"
    )


def test_a_group_without_target_is_named(compose_app):
    assert (
        problem(compose_app, "~loss._target_")
        == "loss has no _target_: choose one of its presets (loss=<name>, configs/loss/)"
    )


def test_an_unknown_app_is_a_programming_error(compose_app):
    with pytest.raises(ValueError, match="unknown app 'distill'"):
        validate(compose_app("train"), "distill")
