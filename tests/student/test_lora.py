import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from distill.errors import DistillError
from distill.student.lora import (
    AdaLoraAllocator,
    apply_lora,
    backbone,
    is_adalora,
    merge_lora,
    orthogonal_regularization,
    rank_budget,
)
from distill.student.scratch import build_llama
from tests.student.tiny_models import VOCAB, tiny_model
from tests.trainers import quiet_trainer


def llama():
    torch.manual_seed(0)
    return build_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def gpt2():
    return tiny_model("gpt2", n_embd=32, n_layer=2, n_head=2)


MODELS = {"llama": llama, "gpt2": gpt2}


def batch(seed=0, n=2, t=8):
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def expected_lora_params(model, r):
    """r * (in + out) for every linear layer inside the decoder blocks."""
    total = 0
    for name, m in model.named_modules():
        if ".layers." in name or ".h." in name:
            if isinstance(m, nn.Linear):
                total += r * (m.in_features + m.out_features)
            elif isinstance(m, Conv1D):  # weight is (in, out)
                total += r * sum(m.weight.shape)
    return total


def train_steps(model, steps=3, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for i in range(steps):
        x = batch(i)
        logits = model(input_ids=x, use_cache=False).logits
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.parametrize("arch", MODELS)
def test_only_adapters_in_decoder_blocks_are_trainable(arch):
    model = MODELS[arch]()
    expected = expected_lora_params(model, r=4)
    peft = apply_lora(model, r=4)
    trainable = {n: p for n, p in peft.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == expected
    assert not any(k in n for n in trainable for k in ("embed", "wte", "wpe", "lm_head"))


@pytest.mark.parametrize("arch", MODELS)
def test_training_changes_only_the_adapters(arch):
    peft = apply_lora(MODELS[arch](), r=4)
    before = {n: p.detach().clone() for n, p in peft.named_parameters()}
    train_steps(peft)
    after = dict(peft.named_parameters())
    for n, p in before.items():
        if "lora_" in n:
            continue
        assert torch.equal(after[n], p), n  # bit-identical base weights
    assert all(not torch.equal(after[n], p) for n, p in before.items() if "lora_B" in n)


@pytest.mark.parametrize("arch", MODELS)
def test_merged_model_matches_and_saves_without_peft_keys(arch, tmp_path):
    peft = train_steps(apply_lora(MODELS[arch](), r=4, dropout=0.1))
    x = batch(9)
    with torch.no_grad():
        want = peft(input_ids=x, use_cache=False).logits
    merged = merge_lora(peft)
    assert type(merged).__name__ in ("LlamaForCausalLM", "GPT2LMHeadModel")
    assert not any("lora" in n or "base_layer" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x, use_cache=False).logits, want, atol=1e-5, rtol=0)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not any("lora" in k or "base_model.model" in k for k in reloaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x, use_cache=False).logits, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", MODELS)
def test_wrapped_model_serves_the_lightning_module_calls(arch):
    peft = train_steps(apply_lora(MODELS[arch](), r=4))
    x = batch(3)
    with torch.no_grad():
        logits = peft(input_ids=x, use_cache=False).logits
        # The fused path: HF backbone (adapters inside) + the LM head.
        hidden = backbone(peft)(input_ids=x, use_cache=False).last_hidden_state
        head = peft.get_output_embeddings()
        fused = nn.functional.linear(hidden, head.weight, head.bias)
    torch.testing.assert_close(fused, logits, atol=1e-5, rtol=0)
    assert peft.config.vocab_size == VOCAB
    out = peft.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=3,
        min_new_tokens=3,
        do_sample=False,
        pad_token_id=0,
    )
    assert out.shape == (2, 11)


def test_explicit_target_modules_and_merge_of_a_plain_model():
    model = llama()
    assert merge_lora(model) is model and not is_adalora(model)
    peft = apply_lora(model, r=2, target_modules="q_proj, v_proj")
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in peft.named_parameters() if p.requires_grad}
    assert names == {"q_proj", "v_proj"} and not is_adalora(peft)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(type="qlora"), "type must be"),
        (dict(r=0), "r must be"),
        (dict(dropout=1.0), "dropout"),
        (dict(target_modules=["q_proj", "nope"]), "nope"),
        (dict(target_modules=["embed_tokens"]), "match no linear"),
        (dict(init_r=4), "AdaLoRA setting"),
        (dict(not_a_setting=1), "bad setting"),
        (dict(type="adalora"), "total optimizer steps"),
        (dict(type="adalora", total_steps=10, tinit=5, tfinal=5), "no rank-reduction"),
        (dict(type="adalora", total_steps=10, init_r=2, target_r=4), "init_r"),
    ],
)
def test_bad_settings_are_one_line_errors(settings, match):
    with pytest.raises(DistillError, match=match) as e:
        apply_lora(llama(), **settings)
    assert "\n" not in str(e.value)


def test_already_wrapped_student_is_refused():
    with pytest.raises(DistillError, match="already"):
        apply_lora(apply_lora(llama(), r=2), r=2)


class Tiny(L.LightningModule):
    """The shape of DistillationModule that the callback relies on: the model at ``.student``."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def training_step(self, batch, batch_idx):
        x = batch[0]
        logits = self.student(input_ids=x, use_cache=False).logits
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)


def fit(student, steps, accumulate=1):
    data = DataLoader(TensorDataset(batch(0, n=4 * steps * accumulate)), batch_size=4)
    allocator = AdaLoraAllocator()
    trainer = quiet_trainer(max_steps=steps, accumulate_grad_batches=accumulate, callbacks=[allocator])
    trainer.fit(Tiny(student), data)
    return allocator


def test_adalora_allocator_shrinks_the_rank_budget_and_merges():
    steps, init_r, target_r = 8, 6, 2
    peft = apply_lora(llama(), type="adalora", init_r=init_r, target_r=target_r, total_steps=steps, tinit=1, tfinal=2)
    assert is_adalora(peft)
    n_modules = sum(1 for n, _ in peft.named_parameters() if "lora_E" in n)
    allocator = fit(peft, steps, accumulate=2)
    budgets = allocator.budgets
    assert len(budgets) == steps  # once per optimizer step, not per accumulated batch
    assert budgets[0] == init_r * n_modules  # warmup (tinit): every rank in use
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))
    assert budgets[-1] <= target_r * n_modules < budgets[0]
    peft.eval()
    x = batch(5)
    with torch.no_grad():
        want = peft(input_ids=x, use_cache=False).logits
        merged = merge_lora(peft)
        torch.testing.assert_close(merged(input_ids=x, use_cache=False).logits, want, atol=1e-5, rtol=0)
    assert not any("lora" in n for n in merged.state_dict())


def test_allocator_is_a_no_op_for_plain_lora():
    peft = apply_lora(llama(), r=2)
    allocator = fit(peft, steps=2)
    assert allocator.budgets == []


def test_orthogonal_regularization_matches_peft():
    """PEFT adds the penalty only when the model computes the loss (labels); ours is the same term."""
    peft = apply_lora(llama(), type="adalora", init_r=3, target_r=2, total_steps=10)
    x = batch(1)
    weight = peft.peft_config["default"].orth_reg_weight
    out = peft(input_ids=x, labels=x, use_cache=False)
    ce = nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
    named = [(n, p) for n, p in peft.named_parameters() if "lora_A" in n or "lora_B" in n]
    torch.testing.assert_close(out.loss, ce + weight * orthogonal_regularization(named))
    assert rank_budget(peft) == 0  # lora_E starts at zero; ranks come alive with training


def test_allocator_adds_the_orthogonal_penalty_to_the_gradients():
    """Same gradients as PEFT's own loss (CE + penalty, with labels) from a CE computed outside the model."""
    from types import SimpleNamespace

    x = batch(2)
    grads = []
    for inside in (True, False):
        peft = apply_lora(llama(), type="adalora", init_r=3, target_r=2, total_steps=10)
        with torch.no_grad():  # lora_E starts at zero, which would hide the A/B penalty's effect on the loss
            for n, p in peft.named_parameters():
                if "lora_E" in n:
                    p.fill_(0.5)
        if inside:
            peft(input_ids=x, labels=x, use_cache=False).loss.backward()
        else:
            logits = peft(input_ids=x, use_cache=False).logits
            nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
            trainer = SimpleNamespace(accumulate_grad_batches=1, precision_plugin=SimpleNamespace())
            AdaLoraAllocator().on_after_backward(trainer, SimpleNamespace(student=peft))
        grads.append({n: p.grad.clone() for n, p in peft.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5)


def test_adalora_resumes_from_a_checkpoint_after_the_final_allocation(tmp_path):
    """The rank pattern lives in the allocator's checkpointed state: a run resumed after
    ``total_step - tfinal`` keeps masking the pruned ranks (PEFT alone would have none)."""

    def student():
        return apply_lora(llama(), type="adalora", init_r=4, target_r=2, total_steps=8, tinit=1, tfinal=2)

    def trainer(steps, allocator):
        return quiet_trainer(max_steps=steps, callbacks=[allocator])

    data = DataLoader(TensorDataset(batch(0, n=32)), batch_size=4)
    first = AdaLoraAllocator()
    run = trainer(7, first)
    run.fit(Tiny(student()), data)  # finalised at step 6
    run.save_checkpoint(tmp_path / "step7.ckpt")
    second = AdaLoraAllocator()
    resumed = student()
    trainer(8, second).fit(Tiny(resumed), data, ckpt_path=tmp_path / "step7.ckpt")
    assert second.budgets[:-1] == first.budgets and len(second.budgets) == 8
    assert second.budgets[-1] == first.budgets[-1] <= 2 * sum(1 for n, _ in resumed.named_parameters() if "lora_E" in n)
