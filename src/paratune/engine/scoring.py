"""Echo scoring: the log-probability of every prompt token under an adapter, from one forward that writes no KV
(lm-eval's loglikelihood over HTTP), and optionally the next token sampled from the same forward."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .request import SamplingParams
from .sampler import Sampler, seeded_generator


@dataclass
class PromptScores:
    values: list[float]  # log-probability of prompt token t given tokens < t, t = 1 .. T-1
    top: list[list[tuple[int, float]]]  # the top-k (token, log-probability) at each of those positions
    next_token: tuple[int, float, list[tuple[int, float]]] | None  # sampled after the prompt, when asked


def prompt_scores(logits: torch.Tensor, ids: list[int], top_k: int,
                  next_params: SamplingParams | None) -> PromptScores:
    """``logits`` (T, vocab) of every position of ``ids`` -> each prompt token's log-probability given the tokens
    before it, the ``top_k`` alternatives at each position, and with ``next_params`` the token after the prompt."""
    logp = F.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(ids[1:], device=logp.device)
    values = logp[:-1].gather(-1, target[:, None])[:, 0].tolist()
    top: list[list[tuple[int, float]]] = [[] for _ in range(len(ids) - 1)]
    if top_k:
        best = logp[:-1].topk(top_k, dim=-1)
        top = [list(zip(i, v)) for i, v in zip(best.indices.tolist(), best.values.tolist())]
    next_token = None
    if next_params is not None:
        sampler = Sampler(logits.device, [next_params], [seeded_generator(next_params, logits.device)])
        token = int(sampler(logits[-1:])[0][0])
        last = logp[-1]
        best = last.topk(max(top_k, 1))
        next_token = (token, float(last[token]), list(zip(best.indices.tolist(), best.values.tolist()))[:top_k])
    return PromptScores(values, top, next_token)
