"""The demo's model: a tiny ``LlamaForCausalLM`` built from a config, with a character-level tokenizer.

Every model of the demo (base, experts, merges, children) is an ordinary Hugging Face folder: weights in
safetensors, ``config.json`` and the tokenizer files, loadable with ``AutoModelForCausalLM`` and
``AutoTokenizer``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cycleqd.demo.skills import ALPHABET
from cycleqd.evaluation.backends.loading import quiet_progress


@dataclass(frozen=True)
class ModelShape:
    """Size of the demo's Llama.

    Attributes:
        hidden_size: Width of the residual stream.
        layers: Decoder layers.
        heads: Attention heads (as many key-value heads).
        intermediate_size: Width of the MLPs.
        max_positions: Longest sequence in tokens (one token per character).
    """

    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 128

    def describe(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def build_tokenizer(out_dir: str | Path | None = None) -> Any:
    """The demo's character-level ``PreTrainedTokenizerFast`` (saved to ``out_dir`` when given).

    Args:
        out_dir: Folder to save it in.

    Returns:
        The tokenizer.
    """
    from cycleqd.evaluation.chartokenizer import build_char_tokenizer

    return build_char_tokenizer(out_dir, alphabet=ALPHABET, model_max_length=ModelShape().max_positions)


def new_model(shape: ModelShape, tokenizer: Any, *, seed: int) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` (fp32, untied embeddings).

    Args:
        shape: Its size.
        tokenizer: The tokenizer (for the vocabulary and special ids).
        seed: Seed of the initialisation.

    Returns:
        The model, in training mode.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from cycleqd.evaluation.chartokenizer import tiny_model_config

    config = LlamaConfig(
        **tiny_model_config(
            tokenizer,
            hidden_size=shape.hidden_size,
            intermediate_size=shape.intermediate_size,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.heads,
            max_position_embeddings=shape.max_positions,
            tie_word_embeddings=False,
        )
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().train()


def load_model(folder: str | Path) -> Any:
    """Load a demo model folder for more training (fp32, training mode)."""
    from transformers import AutoModelForCausalLM

    with quiet_progress():
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).train()


def save_hf_model(model: Any, tokenizer: Any, folder: str | Path) -> Path:
    """Save a model and its tokenizer as a Hugging Face folder (safetensors).

    Args:
        model: The model.
        tokenizer: Its tokenizer.
        folder: Destination (created).

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
    return folder
