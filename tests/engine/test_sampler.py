"""Batched sampling: the distribution each row samples from, against a reference, and empirically."""

import math

import pytest
import torch

from paratune.engine.request import SamplingParams
from paratune.engine.sampler import Sampler, truncated_distribution

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -1.0, -3.0])


def reference(logits, temperature, top_k, top_p):
    """Written independently of the sampler: plain Python over the sorted tokens."""
    scaled = [x / temperature for x in logits.tolist()]
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])
    kept = order[: top_k] if top_k else order
    z = sum(math.exp(scaled[i]) for i in kept)
    probs = {i: math.exp(scaled[i]) / z for i in kept}
    nucleus, total = [], 0.0
    for i in kept:  # most likely first; keep while the mass before this token is below top_p
        if total >= top_p:
            break
        nucleus.append(i)
        total += probs[i]
    z = sum(probs[i] for i in nucleus)
    return torch.tensor([probs[i] / z if i in nucleus else 0.0 for i in range(len(scaled))])


CASES = [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 1, 1.0), (1.0, 0, 0.6),
         (0.8, 4, 0.75), (1.3, 0, 0.95), (1.0, 0, 1e-6)]


def test_truncated_distribution_matches_the_reference():
    temperature = torch.tensor([c[0] for c in CASES])
    top_k = torch.tensor([c[1] for c in CASES])
    top_p = torch.tensor([c[2] for c in CASES])
    got = truncated_distribution(LOGITS.repeat(len(CASES), 1), temperature, top_k, top_p)
    expected = torch.stack([reference(LOGITS, *case) for case in CASES])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (0.8, 4, 0.75)])
def test_sampled_frequencies_follow_the_distribution(case):
    temperature, top_k, top_p = case
    n = 40_000  # one step of n identical rows: n independent draws
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    sampler = Sampler("cpu")
    sampler.set_rows([params] * n, [None] * n)
    torch.manual_seed(0)
    tokens, logprobs = sampler(LOGITS.repeat(n, 1))
    assert logprobs is None  # nobody asked
    frequencies = torch.bincount(tokens, minlength=len(LOGITS)).float() / n
    expected = reference(LOGITS, *case)
    assert torch.all(frequencies[expected == 0] == 0)  # truncated tokens are never drawn
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.01)  # ~4 standard errors at p = 0.5


def test_greedy_seeded_and_logprob_rows_in_one_batch():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    rows = [SamplingParams(), SamplingParams(temperature=1.0, seed=5, logprobs=True),
            SamplingParams(temperature=1.0, top_k=5), SamplingParams(logprobs=True)]

    def run(batch_rows, batch_logits):
        sampler = Sampler("cpu")
        generators = [torch.Generator().manual_seed(p.seed) if p.seed is not None else None for p in batch_rows]
        sampler.set_rows(batch_rows, generators)
        return sampler(batch_logits)

    tokens, logprobs = run(rows, logits)
    assert tokens[0] == logits[0].argmax() and tokens[3] == logits[3].argmax()
    assert tokens[2] in logits[2].topk(5).indices
    expected = torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0]
    torch.testing.assert_close(logprobs[[1, 3]], expected[[1, 3]])
    assert logprobs[0] == 0 and logprobs[2] == 0
    # A seeded row draws the same token whatever else shares its batch.
    alone, _ = run([rows[1]], logits[1:2])
    assert alone[0] == tokens[1]
    draws = {int(run([rows[1]], logits[1:2])[0][0]) for _ in range(5)}
    assert draws == {int(tokens[1])}


def test_all_greedy_batch_is_argmax():
    logits = torch.randn(6, 30, generator=torch.Generator().manual_seed(1))
    sampler = Sampler("cpu")
    sampler.set_rows([SamplingParams()] * 6, [None] * 6)
    tokens, logprobs = sampler(logits)
    assert torch.equal(tokens, logits.argmax(-1)) and logprobs is None
