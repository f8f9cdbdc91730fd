import torch

from paratune.para.rational import RationalActivation, rational


def test_initialised_close_to_gelu():
    x = torch.linspace(-4, 4, 801)
    error = (RationalActivation()(x) - torch.nn.functional.gelu(x)).abs().max()
    assert error < 0.03


def test_bounded_and_gelu_like_far_out():
    x = torch.tensor([-40.0, -20.0, 20.0, 40.0])
    y = RationalActivation()(x)
    assert torch.isfinite(y).all()
    assert (y[:2].abs() < 1.0).all()  # negative side stays near 0
    assert torch.allclose(y[2:], x[2:], rtol=0.05)  # positive side stays near identity


def test_matches_the_formula_and_has_twelve_parameters():
    act = RationalActivation()
    assert sum(p.numel() for p in act.parameters()) == 12
    x = torch.randn(50, dtype=torch.float64)
    a, b = act.numerator.double(), act.denominator.double()
    p = sum(a[i] * x**i for i in range(7))
    q = sum(b[j - 1] * x**j for j in range(1, 6))
    assert torch.allclose(rational(x, a, b), p / (1 + q.abs()))


def test_bf16_input_is_evaluated_in_fp32():
    act = RationalActivation()
    x = torch.linspace(-3, 3, 7)
    assert act(x.bfloat16()).dtype == torch.bfloat16
    assert torch.allclose(act(x.bfloat16()).float(), act(x), atol=0.05)
