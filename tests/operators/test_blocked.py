from __future__ import annotations

import pytest
import torch

from cycleqd.operators import blocked
from cycleqd.operators.blocked import weighted_sum


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocked, "_BLOCK", 64)  # many blocks, partial last block


def test_weighted_sum_equals_the_hand_sum_over_many_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(37, 11, generator=g) for _ in range(3)]
    out = weighted_sum(xs, [0.5, -1.25, 2.0])
    assert out.dtype == torch.float32
    assert torch.allclose(out, 0.5 * xs[0] - 1.25 * xs[1] + 2.0 * xs[2], atol=1e-6)


def test_bf16_inputs_are_upcast_and_output_cast_once() -> None:
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(300, generator=g).to(torch.bfloat16) for _ in range(2)]
    out = weighted_sum(xs, [0.3, 0.7], out_dtype=torch.bfloat16)
    expected = (0.3 * xs[0].float() + 0.7 * xs[1].float()).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


def test_low_rank_term_is_added_without_forming_it() -> None:
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(23, 9, generator=g) for _ in range(2)]
    a, b = torch.randn(23, 3, generator=g), torch.randn(3, 9, generator=g)
    out = weighted_sum(xs, [0.4, 0.6], low_rank=(a, b))
    assert torch.allclose(out, 0.4 * xs[0] + 0.6 * xs[1] + a @ b, atol=1e-5)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="tensors of one shape"):
        weighted_sum([torch.zeros(2), torch.zeros(3)], [1.0, 1.0])
    with pytest.raises(ValueError, match="do not make a tensor of shape"):
        weighted_sum([torch.zeros(4, 5)], [1.0], low_rank=(torch.zeros(4, 2), torch.zeros(3, 5)))


def test_result_is_written_into_a_given_tensor() -> None:
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(23, 9, generator=g).to(torch.bfloat16) for _ in range(2)]
    a, b = torch.randn(23, 2, generator=g), torch.randn(2, 9, generator=g)
    target = torch.full((23, 9), 7.0, dtype=torch.bfloat16)
    out = weighted_sum(xs, [0.4, 0.6], low_rank=(a, b), out_dtype=torch.bfloat16, out=target)
    assert out is target
    assert torch.equal(out, weighted_sum(xs, [0.4, 0.6], low_rank=(a, b), out_dtype=torch.bfloat16))


def test_a_given_tensor_that_does_not_fit_is_refused() -> None:
    xs = [torch.zeros(4, 5)]
    with pytest.raises(ValueError, match=r"it needs a contiguous torch.float32 tensor of shape \(4, 5\)"):
        weighted_sum(xs, [1.0], out=torch.zeros(5, 4))
    with pytest.raises(ValueError, match="non-contiguous"):
        weighted_sum(xs, [1.0], out=torch.zeros(5, 4).t())


@pytest.fixture(params=[True, False], ids=["native-bf16", "float32-fallback"])
def bf16_units(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways of taking a bf16 product: bf16 matrix units, or float32 and one rounding."""
    if request.param and not blocked.native_bf16_matmul(torch.device("cpu")):
        pytest.skip("this CPU has no bfloat16 matrix instructions (AVX512-BF16 or AMX)")
    monkeypatch.setattr(blocked, "native_bf16_matmul", lambda device: request.param)
    return request.param


def test_a_bf16_low_rank_term_is_multiplied_from_rounded_factors_and_rounded_once(bf16_units) -> None:
    # 1 + 2**-10 is not a bfloat16: the bf16 product sees 1.0; the float32 product keeps it.
    a, b = torch.ones(3, 1), torch.full((1, 2), 1.0 + 2**-10)
    x = [torch.zeros(3, 2)]
    exact = weighted_sum(x, [1.0], low_rank=(a, b))
    fast = weighted_sum(x, [1.0], low_rank=(a, b), low_rank_dtype=torch.bfloat16)
    assert torch.equal(exact, torch.full((3, 2), 1.0 + 2**-10))
    assert torch.equal(fast, torch.ones(3, 2))
    # 257 = 2**8 + 1 needs 9 significant bits: a product of bf16-exact factors rounded once to bf16.
    a, b = torch.tensor([[16.0, 1.0]]), torch.tensor([[16.0], [1.0]])
    assert (
        weighted_sum([torch.zeros(1, 1)], [1.0], low_rank=(a, b), low_rank_dtype=torch.bfloat16).item()
        == 256.0
    )


def test_a_bf16_low_rank_term_stays_within_a_storage_rounding_step_of_the_exact_sum(bf16_units) -> None:
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(40, 33, generator=g).to(torch.bfloat16) for _ in range(2)]
    a, b = 0.01 * torch.randn(40, 4, generator=g), torch.randn(4, 33, generator=g)
    fast = weighted_sum(
        xs, [0.4, 0.6], low_rank=(a, b), out_dtype=torch.bfloat16, low_rank_dtype=torch.bfloat16
    )
    exact = 0.4 * xs[0].float() + 0.6 * xs[1].float() + a @ b
    assert fast.dtype == torch.bfloat16
    # storage rounding of the result, plus a few 2**-9 of |A| |B| from the rounded factors and product
    bound = 2**-8 * exact.abs() + 2**-7 * (a.abs() @ b.abs())
    assert ((fast.float() - exact).abs() <= bound).all()
    with pytest.raises(ValueError, match=r"low_rank_dtype must be torch\.float32 or torch\.bfloat16"):
        weighted_sum(xs, [0.4, 0.6], low_rank=(a, b), low_rank_dtype=torch.float16)


def test_scratch_buffers_are_reused_between_calls() -> None:
    xs = [torch.ones(10, 20, dtype=torch.bfloat16)] * 2
    weighted_sum(xs, [0.5, 0.5], out_dtype=torch.bfloat16)
    held = {k: v.data_ptr() for k, v in blocked._workspace.buffers.items()}
    out = weighted_sum([2 * x for x in xs], [0.5, 0.5], out_dtype=torch.bfloat16)
    assert {k: v.data_ptr() for k, v in blocked._workspace.buffers.items()} == held
    assert torch.equal(out, torch.full((10, 20), 2.0, dtype=torch.bfloat16))
