"""The chat datamodule's split: by prompt (or group), seeded; data.split_seed keeps the held-out
conversations fixed while the seed (the batch order) changes."""

from collections import Counter

from distill.data.chat.datamodule import ChatDataModule
from tests.data.chat.fixtures import conv


def split(seed: int, split_seed: int | None = None) -> set[str]:
    convs = [conv(("user", f"q{i}"), ("assistant", f"a{i}"), id=f"c{i}") for i in range(40)]
    dm = ChatDataModule(source=lambda: (convs, Counter()), chat_template="chatml", val_fraction=0.25, seed=seed,
                        split_seed=split_seed)  # fmt: skip
    dm.load_documents()
    assert not {c.prompt_key for c in dm.train_conversations} & {c.prompt_key for c in dm.val_conversations}
    return {c.id for c in dm.val_conversations}


def test_split_seed_fixes_the_validation_conversations():
    assert split(0) != split(1)  # by default the seed moves the split too
    assert split(1, split_seed=0) == split(0) == split(7, split_seed=0)
