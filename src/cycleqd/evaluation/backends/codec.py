"""From prompts to token ids and from generated ids to answers, shared by the generation backends.

Both the Hugging Face and the vLLM backend encode prompts and decode answers through a
:class:`PromptCodec`, so that the same model gives the same answers whichever backend serves it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cycleqd.errors import ConfigError, ModelLoadError
from cycleqd.evaluation.backends.prompting import as_messages, cut_at_stop, render_plain
from cycleqd.evaluation.base import Prompt


class PromptCodec:
    """A model folder's tokenizer with the prompt and stop rules of cycleqd's backends.

    Args:
        model_dir: Folder with the tokenizer files and ``config.json``.
        chat_template: ``auto`` applies the tokenizer's chat template when it has one; ``on`` requires
            one; ``off`` always uses plain text.
        max_length: Longest prompt plus answer in tokens (default: the model's context size).
        tokenizer: An already loaded tokenizer (else loaded from ``model_dir``).

    Raises:
        ModelLoadError: When the tokenizer cannot be loaded.
        ConfigError: When ``chat_template`` is ``on`` and the tokenizer has none.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        chat_template: str = "auto",
        max_length: int | None = None,
        tokenizer: Any = None,
    ) -> None:
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            except Exception as exc:
                raise ModelLoadError(
                    f"cannot load the tokenizer of {self.model_dir}: {exc}; the model folder needs its "
                    "tokenizer files (tokenizer.json or tokenizer.model, tokenizer_config.json)"
                ) from exc
        self.tokenizer = tokenizer
        tokenizer.padding_side = "left"
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template == "on" and not has_template:
            raise ConfigError(
                f"evaluation.chat_template is on but the tokenizer of {self.model_dir} has no chat template; "
                "use auto or off, or add a chat template to tokenizer_config.json"
            )
        self.use_chat_template = has_template and chat_template != "off"
        config = self._json("config.json")
        self.eos_ids = self._eos_ids(config, self._json("generation_config.json"))
        self.max_length = max_length or config.get("max_position_embeddings") or 4096

    def _json(self, name: str) -> dict[str, Any]:
        path = self.model_dir / name
        return json.loads(path.read_text()) if path.is_file() else {}

    def _eos_ids(self, config: dict[str, Any], generation: dict[str, Any]) -> set[int]:
        ids: set[int] = set()
        for source in (
            generation.get("eos_token_id"),
            config.get("eos_token_id"),
            self.tokenizer.eos_token_id,
        ):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(x) for x in source)
        return ids

    def signature_parts(self) -> tuple[Any, ...]:
        """What changes the answers besides the weights (for result-cache keys)."""
        template = getattr(self.tokenizer, "chat_template", None) if self.use_chat_template else None
        return (template, self.max_length, len(self.tokenizer), sorted(self.eos_ids))

    def prompt_text(self, prompt: Prompt) -> str:
        """The text fed to the model for a prompt (chat template applied when in use)."""
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(
                as_messages(prompt), tokenize=False, add_generation_prompt=True
            )
        return prompt if isinstance(prompt, str) else render_plain(prompt)

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (special tokens as the template or the tokenizer adds them)."""
        text = self.prompt_text(prompt)
        return list(self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"])

    def continuation_ids(self, text: str) -> list[int]:
        """Token ids of a continuation, tokenised on its own."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def fit(self, ids: list[int], room: int) -> list[int]:
        """Keep the end of a prompt so that ``room`` more tokens fit in :attr:`max_length`."""
        keep = max(1, self.max_length - room)
        return ids[-keep:] if len(ids) > keep else ids

    def decode(self, ids: Sequence[int], stop: Sequence[str]) -> str:
        """Generated ids as text (special tokens dropped), cut before the first stop string."""
        return cut_at_stop(self.tokenizer.decode(list(ids), skip_special_tokens=True), stop)
