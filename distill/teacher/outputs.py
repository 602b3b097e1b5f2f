"""What a teacher backend hands to the loss, per token.

A live teacher gives dense logits (a plain ``Tensor [..., vocab]``). The offline cache
gives only its top-k log-probabilities per token: ``SparseTeacher``. Loss code accepts
either; ``tail`` says what happens to the probability mass outside the top-k:

- ``"bucket"`` (default): the k kept tokens plus one "everything else" outcome; both
  distributions are compared on those k+1 outcomes. Exact for the mass it sees, and the
  student is still pushed to put the teacher's tail mass outside the top-k.
- ``"renormalize"``: the teacher's k probabilities are rescaled to sum to 1 (DistillKit's
  choice); the student is compared on the same k tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

TAIL_MODES = ("bucket", "renormalize")


@dataclass
class SparseTeacher:
    logprobs: (
        Tensor  # [..., k] log p_teacher of the k most likely tokens (full-vocabulary softmax at the cache temperature)
    )
    indices: Tensor  # [..., k] token ids (long)

    def flatten_tokens(self) -> SparseTeacher:
        k = self.logprobs.shape[-1]
        return SparseTeacher(self.logprobs.reshape(-1, k), self.indices.reshape(-1, k))

    def __getitem__(self, item) -> SparseTeacher:
        return SparseTeacher(self.logprobs[item], self.indices[item])

    @property
    def shape(self):
        return self.logprobs.shape
