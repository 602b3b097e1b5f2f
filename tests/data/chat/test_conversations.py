"""Reading conversation records: both record forms, and each kind of bad input."""

import json

import pytest

from distill.data.chat.conversations import conversation, read_conversations
from distill.data.records import read_records
from distill.errors import DistillError

USER, BOT = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}


def test_messages_form_keeps_roles_contents_and_tool_fields():
    call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
    c = conversation(
        "f:1", {"messages": [{"role": "system", "content": "s"}, USER, call, {"role": "tool", "content": "1"}, BOT]}
    )
    assert [m["role"] for m in c.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert c.messages[2] == {"role": "assistant", "content": "", "tool_calls": call["tool_calls"]}
    assert c.target_turns == [2, 4] and c.first_target == 0


def test_prompt_completion_form_targets_only_the_completion():
    c = conversation("f:1", {"prompt": [USER, BOT, USER], "completion": [BOT]})
    assert len(c.messages) == 4 and c.first_target == 3 and c.target_turns == [3]


def test_content_parts_are_joined_and_a_non_text_part_is_refused():
    parts = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    assert conversation("f:1", {"messages": [parts, BOT]}).messages[0]["content"] == "ab"
    image = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": "x"}]}
    with pytest.raises(DistillError, match=r"f:7: messages\[0\]: content part of type 'image_url' is not text"):
        conversation("f:7", {"messages": [image, BOT]})


@pytest.mark.parametrize(
    "record, message",
    [
        ({"text": "hi"}, r"f:3: a chat record needs 'messages'.*it has \['text'\]"),
        ({"messages": []}, r"f:3: 'messages' must be a non-empty list"),
        ({"messages": [{"content": "x"}, BOT]}, r"f:3: messages\[0\]: a message needs 'role' and 'content'"),
        ({"messages": [{"role": "user"}, BOT]}, r"f:3: messages\[0\]: a message needs 'role' and 'content'"),
        ({"messages": [{"role": "human", "content": "x"}, BOT]}, r"f:3: messages\[0\]: unknown role 'human'"),
        ({"messages": [USER, {"role": "assistant", "content": 3}]}, r"messages\[1\]: 'content' is int"),
    ],
)
def test_bad_records_are_one_line_naming_the_record(record, message):
    with pytest.raises(DistillError, match=message):
        conversation("f:3", record)


def test_no_assistant_turn_is_skipped_and_counted(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [USER, BOT]},
        {"messages": [USER]},
        {"prompt": [USER, BOT], "completion": [USER]},
        {"messages": [USER, BOT]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    convs, skipped = read_conversations(read_records([str(path)]))
    assert [c.id for c in convs] == [f"{path}:1", f"{path}:4"]
    assert skipped == {"no_assistant_turn": 2}


def test_parquet_and_saved_dataset_read_as_jsonl_does(tmp_path):
    import datasets

    rows = [{"messages": [USER, {"role": "assistant", "content": f"a{i}"}]} for i in range(3)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "c.parquet", tmp_path / "saved"):
        convs, _ = read_conversations(read_records([str(path)]))
        assert [c.messages[1]["content"] for c in convs] == ["a0", "a1", "a2"]
    with pytest.raises(DistillError, match="nothing matches"):
        list(read_records([str(tmp_path / "missing*.jsonl")]))
