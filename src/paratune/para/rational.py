"""Learnable rational activation R(x) = P(x) / (1 + |Q(x)|) (the "safe" Padé activation unit).

P has degree 6 (a0..a6), Q has degree 5 without constant term (b1..b5), as in the PARA/PEDRO papers.
The coefficients start at a least-squares fit of GELU: weighted towards [-4, 4] (max error 0.024 there)
while staying bounded and GELU-like out to |x| = 40. They were fitted by `fit_gelu_coefficients()`.
"""

from __future__ import annotations

import torch
from torch import nn

GELU_NUMERATOR = (
    0.008511935951285746, 0.468700519038635, 0.33735440114914683, 0.08244125411171423,
    0.008083286548954002, 0.00032041088227618985, 4.250618284211522e-06,
)
GELU_DENOMINATOR = (
    -0.10511116843417544, 0.2027946625764384, -0.004077551987635617, 0.0007992569987851991,
    -1.9920020088481085e-06,
)


# Beyond |x| = 40 (the range the GELU fit covers) the rational is not GELU-like: P has degree 6 and
# x * Q(x) degree 5, so |R(x)| grows like (a6 / |b5|) |x| ~ 2.1 |x| on both sides (GELU tends to 0 for large
# negative x), and R spikes where x * Q(x) nears 0 (R(400) ~ 1.3e5 with the initial coefficients). Inputs
# normally stay far inside the range (the pooled vector is RMS-normalised, so |z| <= ||W_row|| sqrt(d) + |b|),
# but a trained down-projection can grow, so outside it we continue as GELU does: R(40) + (x - 40) above, flat
# at R(-40) below. Inside [-40, 40] the result is bit-for-bit the plain rational.
RATIONAL_RANGE = 40.0


def rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Evaluate P(x) / (1 + |x * Q'(x)|) with Horner's rule, in fp32 at least (x**6 loses bf16 precision).

    ``numerator`` (7,) and ``denominator`` (5,) hold one coefficient set, or (B, 7) and (B, 5) one set per row
    of ``x`` (B, ...): the engine evaluates many adapters' activations in one call with the same float order.
    Outside [-RATIONAL_RANGE, RATIONAL_RANGE] the function continues like GELU (see above).
    """
    dtype = x.dtype
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    a = numerator.to(x.dtype)
    b = denominator.to(x.dtype)
    if a.dim() == 2:  # per-row coefficients: (B, k) -> (B, 1, ..., 1) broadcast over x's other dimensions
        shape = (a.shape[0],) + (1,) * (x.dim() - 1)
        coefficient = lambda c, k: c[:, k].reshape(shape)  # noqa: E731
    else:
        coefficient = lambda c, k: c[k]  # noqa: E731
    inside = x.clamp(-RATIONAL_RANGE, RATIONAL_RANGE)
    p = coefficient(a, a.shape[-1] - 1)
    for k in range(a.shape[-1] - 2, -1, -1):
        p = p * inside + coefficient(a, k)
    q = coefficient(b, b.shape[-1] - 1)
    for k in range(b.shape[-1] - 2, -1, -1):
        q = q * inside + coefficient(b, k)
    y = p / (1.0 + (q * inside).abs()) + (x - inside).clamp(min=0)
    return y.to(dtype)


class RationalActivation(nn.Module):
    """Per-layer learnable rational function, initialised to approximate GELU."""

    def __init__(self):
        super().__init__()
        self.numerator = nn.Parameter(torch.tensor(GELU_NUMERATOR, dtype=torch.float32))
        self.denominator = nn.Parameter(torch.tensor(GELU_DENOMINATOR, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rational(x, self.numerator, self.denominator)


def fit_gelu_coefficients(seeds: int = 20) -> tuple[list[float], list[float]]:
    """Refit the GELU initialisation (the constants above came from this; takes ~1 min on a CPU)."""
    inner = torch.linspace(-4, 4, 2001, dtype=torch.float64)
    outer = torch.linspace(-40, 40, 2001, dtype=torch.float64)
    x = torch.cat([inner, outer])
    weight = torch.cat([torch.full_like(inner, 4.0), 1.0 / (1.0 + outer.abs())])
    target = torch.nn.functional.gelu(x)
    best = None
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        a = (torch.randn(7, generator=generator, dtype=torch.float64) * 0.1).requires_grad_(True)
        b = (torch.randn(5, generator=generator, dtype=torch.float64) * 0.1).requires_grad_(True)
        with torch.no_grad():
            a[1] = 0.5
        optimizer = torch.optim.LBFGS([a, b], max_iter=3000, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-14, tolerance_change=1e-16)

        def closure():
            optimizer.zero_grad()
            loss = (weight * (rational(x, a, b) - target) ** 2).mean()
            loss.backward()
            return loss

        for _ in range(4):
            loss = optimizer.step(closure)
        if best is None or loss.item() < best[0]:
            best = (loss.item(), a.detach().tolist(), b.detach().tolist())
    return best[1], best[2]
