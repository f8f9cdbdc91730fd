"""Batched on-device sampling: one call per step for every row, one host transfer for the tokens.

Each row has its own SamplingParams (greedy when temperature is 0, else temperature, top-k, top-p, optional
seed). Sampled rows draw by the exponential race: with q ~ Exp(1) per vocabulary entry, argmax(p / q) is a
sample from p (vLLM does the same), so a per-row seed needs only a per-row noise draw from that row's
generator, not a per-row multinomial, and nothing leaves the device until the tokens are read once.
"""

from __future__ import annotations

import torch

from .request import SamplingParams


def truncated_distribution(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
    limit_k: bool | None = None, limit_p: bool | None = None,
) -> torch.Tensor:
    """The distribution each row samples from: softmax(logits / temperature), restricted to the top_k most
    likely tokens (0 = no limit), then to the smallest set of the most likely tokens whose probability reaches
    top_p (computed on the top-k distribution; the most likely token is always kept), renormalised.

    logits (n, V); temperature, top_p (n,) float; top_k (n,) int -> probabilities (n, V) in fp32.
    ``limit_k`` / ``limit_p``: whether any row limits k / p (the caller knows; asking the tensors is a host sync).
    """
    scores = logits.float() / temperature[:, None]
    limit_k = bool((top_k > 0).any()) if limit_k is None else limit_k
    limit_p = bool((top_p < 1).any()) if limit_p is None else limit_p
    if not (limit_k or limit_p):
        return torch.softmax(scores, dim=-1)
    ordered, order = torch.sort(scores, dim=-1, descending=True)
    vocab = scores.shape[-1]
    ranks = torch.arange(vocab, device=scores.device)
    if limit_k:
        k = torch.where(top_k > 0, top_k, vocab)
        ordered = ordered.masked_fill(ranks >= k[:, None], float("-inf"))
    if limit_p:
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        ordered = ordered.masked_fill(before >= top_p[:, None], float("-inf"))
    return torch.softmax(torch.empty_like(scores).scatter_(1, order, ordered), dim=-1)


def seeded_generator(params: SamplingParams, device) -> torch.Generator | None:
    """A request's own random stream when it sets a seed (None: the global one). On the logits' device: a CPU
    generator cannot drive CUDA sampling."""
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


class Sampler:
    """Samples one token per row of a step's logits; the rows' parameters are set when the batch changes."""

    def __init__(self, device: torch.device, params: list[SamplingParams] = (),
                 generators: list[torch.Generator | None] = ()):
        self.device = torch.device(device)
        self.set_rows(list(params), list(generators) or [None] * len(params))

    def set_rows(self, params: list[SamplingParams], generators: list[torch.Generator | None]) -> None:
        """Per-row parameters as device tensors, built once per join/leave, not once per step."""
        self.params, self.generators = list(params), list(generators)
        sampled = [i for i, p in enumerate(self.params) if p.temperature > 0]
        self.all_greedy = not sampled
        self.sampled = torch.tensor(sampled, dtype=torch.long, device=self.device)
        self.seeded = [(j, self.generators[i]) for j, i in enumerate(sampled) if self.generators[i] is not None]
        self.unseeded = torch.tensor([j for j, i in enumerate(sampled) if self.generators[i] is None],
                                     dtype=torch.long, device=self.device)
        rows = [self.params[i] for i in sampled]
        self.temperature = torch.tensor([p.temperature for p in rows], dtype=torch.float32, device=self.device)
        self.top_k = torch.tensor([p.top_k for p in rows], dtype=torch.long, device=self.device)
        self.top_p = torch.tensor([p.top_p for p in rows], dtype=torch.float32, device=self.device)
        self.limit_k, self.limit_p = any(p.top_k > 0 for p in rows), any(p.top_p < 1 for p in rows)
        self.logprob_rows = torch.tensor([i for i, p in enumerate(self.params) if p.logprobs], dtype=torch.long,
                                         device=self.device)

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """logits (B, V) -> (tokens (B,) long on the device, log-probabilities (B,) of the chosen tokens under
        the model's own distribution, or None when no row asked for them; rows that did not ask get 0)."""
        tokens = logits.argmax(dim=-1)
        if not self.all_greedy:
            probs = truncated_distribution(logits[self.sampled], self.temperature, self.top_k, self.top_p,
                                           self.limit_k, self.limit_p)
            noise = torch.empty_like(probs)
            if len(self.unseeded):
                noise[self.unseeded] = torch.empty(len(self.unseeded), probs.shape[-1],
                                                   device=probs.device).exponential_()
            for j, generator in self.seeded:
                noise[j] = torch.empty(probs.shape[-1], device=probs.device).exponential_(generator=generator)
            # Exp(1) draws can be exactly 0 (probability 2^-24 each): 0 / 0 on a truncated token would be NaN, which
            # argmax picks. The clamp keeps such tokens at 0 and changes nothing else measurable.
            tokens = tokens.index_copy(0, self.sampled, (probs / noise.clamp_(min=1e-30)).argmax(dim=-1))
        if not len(self.logprob_rows):
            return tokens, None
        logprobs = torch.zeros(len(tokens), dtype=torch.float32, device=logits.device)
        rows = self.logprob_rows
        chosen = torch.log_softmax(logits[rows].float(), dim=-1).gather(1, tokens[rows, None])[:, 0]
        return tokens, logprobs.index_copy(0, rows, chosen)
