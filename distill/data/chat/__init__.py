"""Conversations (``data=chat``): records of messages, rendered with a chat template, trained on
the assistant's tokens only."""
