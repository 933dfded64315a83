"""A character-level tokenizer built locally (no download), for tiny test and demo models.

One token per character of a fixed alphabet (printable ASCII, tab and newline by default) plus
``<pad>``, ``<s>`` (added before every text), ``</s>`` and ``<unk>``. Saved with ``save_pretrained``,
it loads back with ``AutoTokenizer.from_pretrained`` like any Hugging Face tokenizer.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

#: Printable ASCII plus tab and newline.
DEFAULT_ALPHABET = "".join(c for c in string.printable if c not in "\r\x0b\x0c")
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")

#: A minimal chat template: ``<|role|>content`` lines, then ``<|assistant|>`` for the answer.
SIMPLE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_char_tokenizer(
    out_dir: str | Path | None = None,
    *,
    alphabet: str = DEFAULT_ALPHABET,
    chat_template: str | None = None,
    model_max_length: int = 2048,
) -> Any:
    """Build (and optionally save) a character-level ``PreTrainedTokenizerFast``.

    Token ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, then the alphabet in order.

    Args:
        out_dir: Folder to save the tokenizer files in (``tokenizer.json`` and its config).
        alphabet: The characters that get tokens (others map to ``<unk>``).
        chat_template: A Jinja chat template (:data:`SIMPLE_CHAT_TEMPLATE` for instance), or none.
        model_max_length: Longest input the tokenizer reports.

    Returns:
        The tokenizer; ``len(tokenizer)`` is the vocabulary size a model needs.

    Raises:
        ValueError: When the alphabet repeats a character.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if len(set(alphabet)) != len(alphabet):
        raise ValueError("the alphabet repeats characters")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def tiny_model_config(tokenizer: Any, **overrides: Any) -> dict[str, Any]:
    """``LlamaConfig`` fields that fit a tokenizer (vocabulary size and special token ids).

    Args:
        tokenizer: The tokenizer (from :func:`build_char_tokenizer`).
        **overrides: Other ``LlamaConfig`` fields.

    Returns:
        Fields for :func:`cycleqd.weights.synthetic.synthetic_llama`.
    """
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    }


def tiny_char_llama(
    out_dir: str | Path,
    *,
    seed: int = 0,
    alphabet: str = DEFAULT_ALPHABET,
    chat_template: str | None = None,
    **config: Any,
) -> Path:
    """A tiny random ``LlamaForCausalLM`` with a character-level tokenizer, as a Hugging Face folder.

    Args:
        out_dir: Destination folder (replaced if it exists).
        seed: Seed of the random weights.
        alphabet: Characters of the tokenizer.
        chat_template: Chat template of the tokenizer, or none.
        **config: ``LlamaConfig`` fields (defaults: :data:`cycleqd.weights.synthetic.TINY_LLAMA`).

    Returns:
        The folder (weights, ``config.json``, tokenizer files).
    """
    from cycleqd.weights.synthetic import synthetic_llama

    tokenizer = build_char_tokenizer(None, alphabet=alphabet, chat_template=chat_template)
    # The model is written first: saving it replaces the whole folder.
    synthetic_llama(out_dir, seed=seed, **tiny_model_config(tokenizer, **config))
    tokenizer.save_pretrained(str(out_dir))
    return Path(out_dir)
