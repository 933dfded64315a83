"""The Hugging Face backend on tiny Llamas with a character-level tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cycleqd.errors import ConfigError
from cycleqd.evaluation.backends.hf import HFBackend
from cycleqd.weights import fingerprint_tensors, open_model
from cycleqd.weights.synthetic import synthetic_expert

PROMPTS = ["hello", "a much longer prompt than the others", "x", "def f(x):", "SELECT 1;", "zz top", "12+34="]


@pytest.fixture(scope="module")
def backend(tiny_model: Path) -> HFBackend:
    b = HFBackend(tiny_model, batch_size=3, dtype="float32")
    source = open_model(tiny_model)
    b.load(source, fingerprint=fingerprint_tensors(source))
    return b


def reference_generate(b: HFBackend, prompt: str, n: int) -> str:
    """One prompt at a time through transformers' own ``generate`` (greedy)."""
    enc = b.tokenizer(prompt, return_tensors="pt")
    out = b.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=b.pad_id)
    return b.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_batched_equals_one_at_a_time_equals_transformers(backend: HFBackend) -> None:
    batched = backend.generate(PROMPTS, max_new_tokens=12)
    single = [backend.generate([p], max_new_tokens=12)[0] for p in PROMPTS]
    assert batched == single
    assert batched == [reference_generate(backend, p, 12) for p in PROMPTS]
    assert len(set(batched)) > 1  # the prompts lead somewhere different: the comparison means something


def test_max_new_tokens_and_stop_strings(backend: HFBackend) -> None:
    full = backend.generate(PROMPTS, max_new_tokens=10)
    assert all(len(t) <= 10 for t in full)  # one character per token
    for text in full:
        if len(text) >= 4:
            stop = text[2:4]
            cut = backend.generate([PROMPTS[full.index(text)]], max_new_tokens=10, stop=[stop])[0]
            assert cut == text[: text.index(stop)]
            break
    else:
        pytest.fail("no output long enough to test stop strings")


def test_plain_prompts_and_messages_without_a_chat_template(backend: HFBackend) -> None:
    assert not backend.use_chat_template
    assert backend.prompt_text("as is") == "as is"
    assert backend.prompt_text([{"role": "user", "content": "as is"}]) == "as is"
    convo = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert backend.prompt_text(convo) == "System: S\n\nUser: U\n\nAssistant:"


def test_chat_template_is_applied(tiny_chat_model: Path) -> None:
    b = HFBackend(tiny_chat_model, batch_size=2)
    assert b.use_chat_template
    assert b.prompt_text("hi") == "<|user|>hi\n<|assistant|>"
    source = open_model(tiny_chat_model)
    b.load(source, fingerprint="chat")
    convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    out = b.generate([convo, "hi"], max_new_tokens=6)
    assert out == [b.generate([convo], max_new_tokens=6)[0], b.generate(["hi"], max_new_tokens=6)[0]]
    plain = HFBackend(tiny_chat_model, chat_template="off")
    assert plain.prompt_text("hi") == "hi"
    assert plain.signature != b.signature


def test_chat_template_on_requires_one(tiny_model: Path) -> None:
    with pytest.raises(ConfigError, match="has no chat template"):
        HFBackend(tiny_model, chat_template="on")


def test_load_copies_weights_in_place(backend: HFBackend, tiny_model: Path, tmp_path: Path) -> None:
    params = {n: p.data_ptr() for n, p in backend.model.named_parameters()}
    before = backend.generate(PROMPTS, max_new_tokens=8)
    child_dir = synthetic_expert(tiny_model, tmp_path / "child", seed=3, scale=2.0, noise=0.5)
    child = open_model(child_dir)
    backend.load(child, fingerprint="child")
    assert {n: p.data_ptr() for n, p in backend.model.named_parameters()} == params
    for name, p in backend.model.named_parameters():
        assert torch.equal(p.detach(), child[name])
    after = backend.generate(PROMPTS, max_new_tokens=8)
    assert after != before
    base = open_model(tiny_model)
    backend.load(base, fingerprint=fingerprint_tensors(base))
    assert backend.generate(PROMPTS, max_new_tokens=8) == before


def test_load_refuses_mismatched_weights(backend: HFBackend, tiny_model: Path) -> None:
    good = dict(open_model(tiny_model))
    fp = backend.fingerprint
    try:
        with pytest.raises(ValueError, match=r"weights lack 9 tensor\(s\) of the model: model.layers.1"):
            backend.load({k: v for k, v in good.items() if "layers.1." not in k}, fingerprint="partial")
        with pytest.raises(ValueError, match=r"tensor.*the model lacks: extra\.weight"):
            backend.load({**good, "extra.weight": torch.zeros(1)}, fingerprint="extra")
        with pytest.raises(ValueError, match=r"model.norm.weight has shape \[3\], the model expects \[48\]"):
            backend.load({**good, "model.norm.weight": torch.zeros(3)}, fingerprint="shape")
        assert backend.fingerprint is None  # no valid model after a failed load
        with pytest.raises(RuntimeError, match="no model loaded"):
            backend.generate(["x"], max_new_tokens=2)
    finally:
        backend.load(good, fingerprint=fp)


def test_tied_embeddings_may_be_given_once(tmp_path: Path) -> None:
    from cycleqd.evaluation.chartokenizer import tiny_char_llama

    folder = tiny_char_llama(
        tmp_path / "tied", hidden_size=32, intermediate_size=64, tie_word_embeddings=True
    )
    b = HFBackend(folder)
    weights = {k: v for k, v in open_model(folder).items() if k != "lm_head.weight"}
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] * 2
    b.load(weights, fingerprint="tied")
    assert torch.equal(b.model.lm_head.weight, weights["model.embed_tokens.weight"])


def test_loglikelihood_matches_a_full_forward_pass(backend: HFBackend) -> None:
    pairs = [("The sky is", " blue"), ("The sky is", " green and long"), ("x", "y"), ("", "abc")]
    got = backend.loglikelihood(pairs)
    for (ctx, cont), ll in zip(pairs, got, strict=True):
        ctx_ids = backend.tokenizer(ctx)["input_ids"]
        cont_ids = backend.tokenizer(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx_ids + cont_ids])
        with torch.no_grad():
            logp = torch.log_softmax(backend.model(ids).logits.float(), dim=-1)[0]
        expected = sum(float(logp[len(ctx_ids) - 1 + i, t]) for i, t in enumerate(cont_ids))
        assert ll == pytest.approx(expected, abs=1e-4)
    assert backend.loglikelihood([("abc", "")]) == [0.0]


def test_long_prompts_keep_their_end(backend: HFBackend) -> None:
    backend_max = backend.max_length
    backend.max_length = 40
    try:
        backend._warned_truncation = False
        with pytest.warns(UserWarning, match="lose their beginning"):
            long = backend.generate(["y" * 200 + "end"], max_new_tokens=5)
        short = backend.generate(["y" * 34 + "end"], max_new_tokens=5)
    finally:
        backend.max_length = backend_max
    assert long == short


def test_close_frees_the_model_and_the_evaluator_closes_its_cache(tiny_model: Path, tmp_path: Path) -> None:
    import sqlite3

    from cycleqd.evaluation import Evaluator, ResultCache

    b = HFBackend(tiny_model, dtype="float32")
    source = open_model(tiny_model)
    b.load(source, fingerprint="base")
    cache = ResultCache(tmp_path / "cache.sqlite")
    evaluator = Evaluator([], b, cache=cache)
    evaluator.close()
    assert b.model is None
    assert b.fingerprint is None
    with pytest.raises(RuntimeError, match="no model loaded"):
        b.generate(["hello"], max_new_tokens=2)
    with pytest.raises(RuntimeError, match="this backend was closed; build a new one"):
        b.load(source, fingerprint="base")
    with pytest.raises(sqlite3.ProgrammingError):
        len(cache)
    b.close()  # closing twice does nothing
