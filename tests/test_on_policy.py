"""On-policy batches from real prompts: the student answers each conversation's prompt (never a
response token), the answer stops at the end of turn, and only sampled tokens are distilled."""

from types import SimpleNamespace

import numpy as np
import torch

from distill.data.chat.render import encode
from distill.data.chat.rows import single_rows
from distill.data.chat.templates import CHATML
from distill.on_policy import IGNORE_INDEX, from_prefix, from_prompts
from tests.data.chat.fixtures import CONVERSATIONS
from tests.data.chat.test_rows import tiny_llama


def chat_batch(tok):
    rows, targets, prompt_lens, _ = single_rows([encode(tok, c, CHATML) for c in CONVERSATIONS], 200, pad_id=0)
    return torch.from_numpy(rows[:, :-1]), targets, prompt_lens


def test_answers_continue_the_real_prompt(chat_tokenizer):
    inputs, _, prompt_lens = chat_batch(chat_tokenizer)
    end_of_turn = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    spec = SimpleNamespace(max_new_tokens=6, temperature=0.0)
    seq, labels, mask = from_prompts(
        tiny_llama(0, len(chat_tokenizer)), inputs, torch.from_numpy(prompt_lens), spec, 0, [end_of_turn]
    )
    assert (labels == IGNORE_INDEX).all()  # no ground truth for sampled tokens
    for b, n in enumerate(prompt_lens):
        assert seq[b, :n].tolist() == inputs[b, :n].tolist()  # the prompt, unchanged
        sampled = np.flatnonzero(mask[b].numpy())
        assert sampled[0] == n - 1 and len(sampled) == 6  # predicted from the prompt's last token on
        assert (seq[b, sampled[-1] + 2 :] == 0).all()  # padding after the answer, never distilled


def test_answers_stop_at_the_end_of_turn_and_keep_it(chat_tokenizer):
    inputs, _, prompt_lens = chat_batch(chat_tokenizer)
    model, spec = tiny_llama(0, len(chat_tokenizer)), SimpleNamespace(max_new_tokens=6, temperature=0.0)
    lens = torch.from_numpy(prompt_lens)
    seq, _, _ = from_prompts(model, inputs, lens, spec, 0, [])
    firsts = {int(seq[b, n]) for b, n in enumerate(prompt_lens)}  # each row's first greedy token
    seq, _, mask = from_prompts(model, inputs, lens, spec, 0, sorted(firsts))  # ... now an end of turn
    for b, n in enumerate(prompt_lens):
        assert np.flatnonzero(mask[b].numpy()).tolist() == [n - 1]  # one sampled token: the stop, kept
        assert int(seq[b, n]) in firsts and (seq[b, n + 1 :] == 0).all()


def test_prompts_are_never_response_tokens(chat_tokenizer):
    """Unlike a fixed-length prefix, which runs into the response on short prompts."""
    inputs, targets, prompt_lens = chat_batch(chat_tokenizer)
    for b, n in enumerate(prompt_lens):
        # the prompt ends where the last assistant turn starts: with the generation prompt, before its first token
        assert chat_tokenizer.decode(inputs[b, :n]).endswith("<|im_start|>assistant\n")
        assert targets[b, n - 1] != IGNORE_INDEX
    spec = SimpleNamespace(max_new_tokens=190, temperature=1.0)
    _, _, mask = from_prefix(tiny_llama(0, len(chat_tokenizer)), inputs, spec)
    assert (mask.float().argmax(1) < torch.from_numpy(prompt_lens) - 1).any()  # the prefix form would cut prompts


def test_a_student_with_its_own_tokenizer_has_its_samples_read_by_the_teacher_in_its_tokens(tmp_path):
    from distill.align.encode import TextAligner
    from distill.data.sources import stdlib_documents
    from distill.data.tokenizer import load_tokenizer, train_bpe
    from distill.on_policy import realign

    texts = [d.text for d in stdlib_documents(8)]
    for name, size in (("teacher", 400), ("student", 700)):
        train_bpe(texts, size, tmp_path / name)
    teacher, student = load_tokenizer(tmp_path / "teacher"), load_tokenizer(tmp_path / "student")
    model, spec = tiny_llama(0, len(student)), SimpleNamespace(max_new_tokens=8, temperature=1.0)
    inputs = torch.tensor([student(t[:400], add_special_tokens=False)["input_ids"][:40] for t in texts[:3]])
    torch.manual_seed(0)
    seq, _, mask = from_prefix(model, inputs, spec)
    teacher_inputs, aligned = realign(TextAligner(teacher, student), seq, mask)
    for b in range(len(seq)):  # the teacher's row is the sampled row's text (pads: the teacher's EOS)
        ids = [i for i in teacher_inputs[b].tolist() if i != teacher.eos_token_id]
        assert teacher.decode(ids) == student.decode(seq[b], skip_special_tokens=True)
    rows = aligned.student.rows
    assert len(rows) > 0 and torch.equal(aligned.weight.bool(), mask.reshape(-1)[rows])  # sampled spans only
    assert aligned.weight.sum() > 0 and aligned.teacher.rows.max() < teacher_inputs.numel()
