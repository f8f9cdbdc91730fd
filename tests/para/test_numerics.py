"""Numerics of PARA: bf16 keeps small deltas, bounded rational activation, scaled attention-pooling scores."""

import peft
import pytest
import torch

from paratune import ParaConfig
from paratune.para.generator import pool_prompt
from paratune.para.rational import GELU_DENOMINATOR, GELU_NUMERATOR, RATIONAL_RANGE, rational
from paratune.para.scaling import apply_delta
from tests.tiny_models import VOCAB, tiny_model


def constant_delta(peft_model, delta: float) -> None:
    """Make every generator emit the same delta for every feature: z = R(1) everywhere, up maps it to delta."""
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if name.endswith("generators.default"):
                module.down.weight.zero_()
                module.down.bias.fill_(1.0)
                module.up.weight.zero_()
                module.up.weight[:, 0] = delta / module.activation(torch.ones(1, dtype=module.up.weight.dtype))


def up_proj_effect(dtype: torch.dtype, delta: float) -> float:
    """sum((o_para - o_base) o_base) / sum(o_base^2) at layer 0's up_proj output: the relative change PARA makes
    there (layer 0's input is the embedding, the same with and without the adapter)."""
    model = tiny_model("llama").to(dtype)
    peft_model = peft.get_peft_model(model, ParaConfig(targets=["up"])).to(dtype)
    constant_delta(peft_model, delta)
    outputs = []
    up = peft_model.get_submodule("base_model.model.model.layers.0.mlp.up_proj")
    handle = up.register_forward_hook(lambda m, a, out: outputs.append(out.float()))  # runs after PARA's hook
    ids = torch.randint(3, VOCAB, (8, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        peft_model(ids)
        with peft_model.disable_adapter():
            peft_model(ids)
    handle.remove()
    para, base = outputs
    return float(((para - base) * base).sum() / base.pow(2).sum())


@pytest.mark.parametrize("delta", [0.02, -0.03, 0.05])
def test_bf16_output_is_scaled_by_delta_not_by_a_rounded_scale(delta):
    # Before, the scale 1 + delta was rounded to bf16 first (spacing 2^-7 near 1): every element then carried
    # the scale's rounding error, 1 + 0.02 -> 1.0234 (17% too strong). Applied as out + out * delta and rounded
    # once, each element is the correctly rounded exact product, and the mean effect over 8 x 64 x 64 outputs
    # is within 3% of delta. (Relative changes below half a bf16 step, |delta| < 2^-9, cannot change a bf16
    # activation under any scheme: the README says so.)
    old_scale_error = abs(float(torch.tensor(1 + delta).bfloat16()) - 1 - delta) / abs(delta)
    assert old_scale_error > 0.03  # so this test fails with the old formula
    fp32, bf16 = up_proj_effect(torch.float32, delta), up_proj_effect(torch.bfloat16, delta)
    assert fp32 == pytest.approx(delta, rel=1e-4)
    assert bf16 == pytest.approx(delta, rel=0.03)


def test_apply_delta_rounds_once_in_bf16():
    x = torch.randn(4, 7, 96, generator=torch.Generator().manual_seed(0)).bfloat16()
    delta = (torch.rand(4, 1, 96, generator=torch.Generator().manual_seed(1)) * 0.01 - 0.005).bfloat16()
    expected = (x.float() * (1 + delta.float())).bfloat16()
    assert torch.equal(apply_delta(x, delta), expected)
    assert not torch.equal(x * (1 + delta), expected)  # what rounding 1 + delta to bf16 first gave


def test_apply_delta_views_per_head_outputs():
    x = torch.randn(2, 5, 4, 8)  # (B, T, heads, head_dim), e.g. Qwen3's q_norm output
    delta = torch.randn(2, 1, 32)
    torch.testing.assert_close(apply_delta(x, delta), x * (1 + delta.view(2, 1, 4, 8)), rtol=1e-6, atol=1e-6)


def test_rational_is_bounded_outside_the_fitted_range():
    a = torch.tensor(GELU_NUMERATOR, dtype=torch.float64)
    b = torch.tensor(GELU_DENOMINATOR, dtype=torch.float64)

    def raw(x):  # the plain rational P(x) / (1 + |x Q(x)|), without the bound
        p = sum(c * x ** k for k, c in enumerate(a))
        q = sum(c * x ** k for k, c in enumerate(b))
        return p / (1 + (q * x).abs())

    inside = torch.linspace(-RATIONAL_RANGE, RATIONAL_RANGE, 4001, dtype=torch.float64)
    torch.testing.assert_close(rational(inside, a, b), raw(inside), rtol=1e-12, atol=1e-12)
    assert raw(torch.tensor(-1e4, dtype=torch.float64)) > 1e4  # what the unbounded form did
    above = torch.tensor([40.5, 100.0, 1e3, 1e6, 1e30], dtype=torch.float64)
    below = -above
    top, bottom = raw(torch.tensor(RATIONAL_RANGE, dtype=torch.float64)), raw(torch.tensor(-RATIONAL_RANGE, dtype=torch.float64))
    torch.testing.assert_close(rational(above, a, b), top + (above - RATIONAL_RANGE), rtol=1e-12, atol=0)
    torch.testing.assert_close(rational(below, a, b), bottom.expand(5), rtol=1e-12, atol=1e-15)
    assert abs(float(bottom)) < 0.25 and float(top) == pytest.approx(40.0, abs=0.5)  # GELU(-40) = 0, GELU(40) = 40
    x = torch.tensor([-1e4, -50.0, 0.5, 50.0, 1e4], dtype=torch.float64, requires_grad=True)
    rational(x, a, b).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0] == 0 and x.grad[-1] == 1


def test_rational_per_row_coefficients_match_one_set_each():
    x = torch.randn(3, 6) * 10
    a = torch.tensor(GELU_NUMERATOR) + torch.randn(3, 7) * 0.01
    b = torch.tensor(GELU_DENOMINATOR) + torch.randn(3, 5) * 0.01
    rows = torch.stack([rational(x[i], a[i], b[i]) for i in range(3)])
    assert torch.equal(rational(x, a, b), rows)


def test_attention_pooling_scores_are_scaled_by_sqrt_d():
    hidden = torch.randn(2, 5, 64)
    query = torch.randn(64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    scores = (hidden @ query / 8.0).masked_fill(~mask, float("-inf"))
    expected = torch.einsum("bt,btd->bd", scores.softmax(-1), hidden)
    torch.testing.assert_close(pool_prompt(hidden, mask, "attention", query), expected, rtol=1e-6, atol=1e-6)
