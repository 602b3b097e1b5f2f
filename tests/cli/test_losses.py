"""Every loss preset trains through the CLI, and each of its terms takes part in training."""

import json

import pytest

from tests.conftest import run_cli
from tests.run_outputs import assert_terms_active, read_metrics

pytestmark = pytest.mark.cli

# what each preset logs per step (train/<name>): its terms, and for GKD whether the batch was sampled on-policy
TERMS = {
    "reverse_kl": ("reverse_kl", "ce"),
    "jsd": ("jsd", "ce"),
    "tvd": ("tvd", "ce"),
    "gkd": ("jsd", "on_policy"),
    "hidden": ("forward_kl", "hidden"),
    "attention": ("forward_kl", "attention"),
}


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(TERMS))
def test_loss_preset_trains_with_each_of_its_terms(loss, cache_dir, tmp_path):
    proc = run_cli(
        [
            "experiment=smoke",
            f"loss={loss}",
            "control=false",
            "trainer.max_steps=6",
            "trainer.val_check_interval=6",
            "trainer.log_every_n_steps=1",
            f"hydra.run.dir={tmp_path}",
        ],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_terms_active(tmp_path, "loss", *TERMS[loss])  # on_policy: some of the 6 batches were sampled
    metrics = read_metrics(tmp_path)
    # training moved the student towards the teacher, whatever the objective measures it by
    assert metrics["student.kl_to_teacher"] < metrics["student.kl_to_teacher_start"], metrics


def test_scheduled_temperature_is_applied_and_logged(cache_dir, tmp_path):
    proc = run_cli(
        [
            "experiment=smoke",
            "control=false",
            "trainer.max_steps=6",
            "trainer.val_check_interval=6",
            "trainer.log_every_n_steps=1",
            "+callbacks.loss_schedules.schedules.temperature={kind: linear, start: 3.0, end: 1.0}",
            f"hydra.run.dir={tmp_path}",
        ],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    col = lines[0].split(",").index("schedule/temperature")
    values = [float(row.split(",")[col]) for row in lines[1:] if row.split(",")[col]]
    assert values[0] == 3.0 and values[-1] == 1.0 and values == sorted(values, reverse=True)


@pytest.mark.slow
def test_fused_linear_loss_trains_like_the_chunked_one(cache_dir, tmp_path):
    """Same objective, LM head fused into the loss: the same student within bf16 noise."""
    ppl = {}
    for fused in ("false", "true"):
        out = tmp_path / fused
        proc = run_cli(
            ["experiment=smoke", "control=false", f"loss.fused_linear={fused}", f"hydra.run.dir={out}"], cache_dir
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        ppl[fused] = json.loads((out / "metrics.json").read_text())["student.val_ppl"]
    assert ppl["true"] == pytest.approx(ppl["false"], rel=0.02)
