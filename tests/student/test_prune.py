import pytest
import torch

from distill.errors import DistillError
from distill.student.prune import every_other_layer, keep_layers
from distill.student.scratch import build_llama


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_llama(vocab_size=128, hidden_size=64, num_layers=6, num_heads=2).eval()


def test_every_other_layer_copies_kept_layers_and_shared_weights(teacher):
    student = every_other_layer(teacher)
    assert student.config.num_hidden_layers == 3
    for new, old in enumerate([0, 2, 4]):
        s, t = student.model.layers[new].state_dict(), teacher.model.layers[old].state_dict()
        assert all(torch.equal(s[k], t[k]) for k in t)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)
    # The copy is independent: training the student must not touch the teacher.
    student.model.layers[0].mlp.up_proj.weight.data.add_(1.0)
    assert not torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[0].mlp.up_proj.weight)


def test_pruned_student_equals_teacher_run_on_the_kept_layers(teacher):
    """Same function as running the teacher with the dropped layers skipped."""
    student = every_other_layer(teacher, offset=1).eval()
    ids = torch.randint(0, 128, (2, 16))
    layers = teacher.model.layers
    teacher.model.layers = torch.nn.ModuleList([layers[i] for i in (1, 3, 5)])
    teacher.config.num_hidden_layers = 3
    try:
        expected = teacher(input_ids=ids, use_cache=False).logits
    finally:
        teacher.model.layers, teacher.config.num_hidden_layers = layers, 6
    torch.testing.assert_close(student(input_ids=ids, use_cache=False).logits, expected)


def test_params_at_most_60_percent_for_quickstart_shape():
    teacher = build_llama(vocab_size=4096, hidden_size=256, num_layers=8, num_heads=4)
    student = every_other_layer(teacher)
    ratio = sum(p.numel() for p in student.parameters()) / sum(p.numel() for p in teacher.parameters())
    assert ratio <= 0.6


@pytest.mark.parametrize("keep", [[], [0, 0], [6], [-1]])
def test_keep_layers_rejects_bad_indices(teacher, keep):
    with pytest.raises(DistillError):
        keep_layers(teacher, keep)


def test_one_layer_teacher_cannot_be_halved():
    with pytest.raises(DistillError, match="at least 2"):
        every_other_layer(build_llama(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2))
