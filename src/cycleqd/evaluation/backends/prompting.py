"""Turning prompts (plain strings or chat messages) into text for models without a chat template."""

from __future__ import annotations

from collections.abc import Sequence

from cycleqd.evaluation.base import Message, Prompt


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt as chat messages (a plain string becomes one user message)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def render_plain(messages: Sequence[Message]) -> str:
    """Chat messages as plain text, for tokenizers without a chat template.

    A lone user message is its content, unchanged (the task's own prompt format). Otherwise each
    message becomes ``Role: content``, separated by blank lines, ending with ``Assistant:`` for the
    model to continue.

    Args:
        messages: The conversation.

    Returns:
        The prompt text.
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*parts, "Assistant:"])


def last_user_text(prompt: Prompt) -> str:
    """The text of a plain prompt, or the content of the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    for m in reversed(prompt):
        if m["role"] == "user":
            return m["content"]
    return ""


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut = i
    return text[:cut]
