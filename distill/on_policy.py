"""On-policy batches (GKD): the student writes the tokens it is then distilled on.

There is no ground truth for sampled tokens, so their CE targets are all ignored (as in GKD); the
returned mask marks the positions whose next token was sampled, the only ones the loss sees.
Two kinds of prompt:

- ``from_prefix``: packed text has no prompts, so the first ``seq_len - max_new_tokens`` tokens of
  each row are the prompt, and the student writes the rest of the row;
- ``from_prompts``: conversations have real prompts, the tokens before each row's last assistant
  turn (``prompt_len``), never a response token. The student answers each prompt (left-padded for
  generation, stopping at the template's end of turn), and the row is the prompt and its answer.
"""

from __future__ import annotations

import torch

from distill.sampling import eval_mode

IGNORE_INDEX = -100


def _sample(model, prompt, attention_mask, new: int, spec, pad_id: int, stop_ids, min_new: int = 0):
    # pure sampling at the temperature (no top-k/top-p truncation), or greedy at temperature 0
    sampling = dict(do_sample=True, temperature=spec.temperature, top_k=0, top_p=1.0)
    if spec.temperature <= 0:
        sampling = dict(do_sample=False)
    with eval_mode(model):
        return model.generate(
            input_ids=prompt,
            attention_mask=attention_mask,
            max_new_tokens=new,
            min_new_tokens=min_new,
            pad_token_id=pad_id,
            eos_token_id=list(stop_ids) or None,
            use_cache=True,
            **sampling,
        )


@torch.no_grad()
def from_prefix(model, inputs: torch.Tensor, spec):
    """Keep the first ``seq_len + 1 - new`` tokens as the prompt and let the student finish the row."""
    seq_len = inputs.shape[1]
    new = min(spec.max_new_tokens, seq_len - 1)
    prompt = inputs[:, : seq_len + 1 - new]
    # a fixed length (min = max new tokens, no EOS stop): every row is full, as packed rows are
    sampled = _sample(model, prompt, torch.ones_like(prompt), new, spec, pad_id=0, stop_ids=(), min_new=new)
    seq = sampled[:, : seq_len + 1]
    mask = torch.zeros(seq.shape[0], seq_len, dtype=torch.bool, device=seq.device)
    mask[:, prompt.shape[1] - 1 :] = True  # positions whose next token was sampled
    return seq[:, :-1], torch.full_like(seq[:, 1:], IGNORE_INDEX), mask


@torch.no_grad()
def from_prompts(model, inputs: torch.Tensor, prompt_lens: torch.Tensor, spec, pad_id: int, stop_ids):
    """Answer each row's real prompt (its first ``prompt_lens[b]`` tokens): rows of ``prompt +
    answer`` right-padded to the input width, the answer up to and including its end of turn."""
    rows, mask = answer_rows(model, inputs, prompt_lens, spec, pad_id, stop_ids)
    return rows[:, :-1], torch.full_like(rows[:, 1:], IGNORE_INDEX), mask


@torch.no_grad()
def answer_rows(model, inputs: torch.Tensor, prompt_lens: torch.Tensor, spec, pad_id: int, stop_ids):
    """``model``'s answers to each row's prompt: rows ``[B, L + 1]`` and the mask ``[B, L]`` of the
    positions whose next token it wrote (on-policy here, sequence-level KD in data/chat/seqkd.py)."""
    batch, seq_len = inputs.shape
    lens = prompt_lens.clamp(1, seq_len).tolist()
    width = max(lens)
    prompt = torch.full((batch, width), pad_id, dtype=inputs.dtype, device=inputs.device)
    attention = torch.zeros_like(prompt)
    for b, n in enumerate(lens):  # left-padded: generation continues every prompt at the same column
        prompt[b, width - n :], attention[b, width - n :] = inputs[b, :n], 1
    new = max(1, min(spec.max_new_tokens, seq_len + 1 - min(lens)))
    answers = _sample(model, prompt, attention, new, spec, pad_id, stop_ids)[:, width:]
    rows = torch.full((batch, seq_len + 1), pad_id, dtype=inputs.dtype, device=inputs.device)
    mask = torch.zeros(batch, seq_len, dtype=torch.bool, device=inputs.device)
    stops = torch.tensor(sorted(stop_ids), dtype=answers.dtype, device=inputs.device)
    for b, n in enumerate(lens):
        answer = answers[b]
        ended = torch.isin(answer, stops).nonzero()
        if len(ended):  # keep the end-of-turn token (the student learns to stop), drop what follows
            answer = answer[: int(ended[0]) + 1]
        end = min(seq_len + 1, n + len(answer))
        rows[b, :n], rows[b, n:end] = inputs[b, :n], answer[: end - n]
        mask[b, n - 1 : end - 1] = True  # positions whose next token the model wrote
    return rows, mask


def realign(aligner, rows: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, object]:
    """A student with its own tokenizer (``distill.data.cross``): its sampled rows as text in the
    teacher's tokens, right-padded with the teacher's EOS, and the ``AlignedBatch`` of both (the
    student's tokens kept as it wrote them; only spans predicted from ``mask``'s positions count)."""
    from distill.align.batch import collate  # the alignment only where a student has its own tokenizer

    pairs = [aligner.align_student_ids(row) for row in rows.tolist()]
    width = max(1, *(len(t.ids) for t, _, _ in pairs))
    teacher = torch.full((len(pairs), width), aligner.teacher.eos_token_id, dtype=torch.long)
    for b, (t, _, _) in enumerate(pairs):
        teacher[b, : len(t.ids)] = torch.from_numpy(t.ids)
    aligned = collate([a for _, _, a in pairs], width, rows.shape[1], student_mask=mask.cpu())
    return teacher.to(rows.device), aligned.to(rows.device)
