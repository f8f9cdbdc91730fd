"""/v1/completions: generate (whole or streamed), and with echo + logprobs score the prompt itself (lm-eval's
loglikelihood over HTTP), optionally with the next token from the same forward."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request as HttpRequest, Response

from ...engine import AdapterError, NoFreeSlot, Request
from ..errors import ApiError, adapter_failed, adapter_unloaded
from ..generation import FINISH, GenerationService, generation
from ..schemas import CompletionRequest

router = APIRouter()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, http: HttpRequest, response: Response,
                      service: Annotated[GenerationService, Depends(generation)]):
    start = time.perf_counter()
    tokenizer = service.tokenizer
    adapter, kind = await service.resolve_adapter(body.model)
    ids = list(body.prompt) if isinstance(body.prompt, list) else tokenizer(body.prompt)["input_ids"]
    if isinstance(body.prompt, list) and max(ids) >= service.vocab_size:
        raise ApiError(400, f"prompt token ids must be < {service.vocab_size} (the vocabulary size)", param="prompt")
    if body.max_tokens == 0 and not body.echo:
        raise ApiError(400, "max_tokens: Input should be greater than or equal to 1 (0 is allowed only with "
                       "echo=true, to score the prompt)", param="max_tokens")
    scoring = body.echo and body.logprobs is not None
    context = _check_context(body, ids, adapter, kind, scoring)
    request = service.admit(ids, adapter, service.sampling(body, body.logprobs is not None), "prompt")
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    prompt_text = body.prompt if isinstance(body.prompt, str) else tokenizer.decode(ids)

    def chunk(text, finish_reason, logprobs=None):
        return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}

    if scoring and body.stream:
        raise ApiError(400, "echo with logprobs is not streamed; send stream=false", param="stream")
    if body.max_tokens == 0 and not scoring:  # echo without logprobs: the prompt, nothing generated
        request.finish_reason = "length"
        service.observe(request, "completions", start, 200)
        return {**chunk(prompt_text, "length"), "usage": service.usage(request)}
    if scoring:  # the scoring forward holds its adapter itself (and the generation after it, if any)
        return await _echo_scores(service, body, http, request, ids, context, prompt_text, start, chunk)
    response.headers.update(headers := await service.load(request))
    if body.stream:
        return service.stream(request, start, "completions",
                              lambda ev: chunk(ev.text, FINISH.get(ev.finish_reason) if ev.finish_reason else None),
                              headers, _usage_chunk(body, chunk))
    done = await service.run_to_end(http, request, start, "completions")
    logprobs = None
    if done.params.logprobs:
        tokens, values = service.token_logprobs(done)
        logprobs = {"tokens": tokens, "token_logprobs": values, "top_logprobs": None, "text_offset": None}
    body_text = (prompt_text if body.echo else "") + done.text
    return {**chunk(body_text, FINISH.get(done.finish_reason, "stop"), logprobs), "usage": service.usage(done)}


def _usage_chunk(body, chunk):
    """OpenAI's ``stream_options.include_usage``: the last chunk has no choices and the usage (None: not asked)."""
    if not (body.stream_options and body.stream_options.include_usage):
        return None
    return lambda usage: {**chunk("", None), "choices": [], "usage": usage}


def _check_context(body: CompletionRequest, ids: list[int], adapter: str | None, kind: str | None,
                   scoring: bool) -> int:
    """How many leading prompt tokens a PARA adapter pools (all of them unless ``context_tokens``)."""
    n = body.context_tokens
    if n is not None and n > len(ids):
        raise ApiError(400, f"context_tokens is {n} but the prompt has {len(ids)} tokens", param="context_tokens")
    para = kind == "PARA"
    if para and scoring and n is None:
        raise ApiError(400, f"{adapter!r} is a PARA adapter: echo with logprobs scores the prompt, and a PARA "
                       "adapter must pool only the context part of it, never the continuation being scored. "
                       "Send context_tokens (the number of leading prompt tokens that are the context), e.g. "
                       "with lm-eval's model 'paratune-completions' (paratune.evaluation.api), which sends it",
                       param="context_tokens", code="context_required")
    if para and n is not None and n < len(ids) and (body.max_tokens is None or body.max_tokens > 1):
        raise ApiError(400, "with context_tokens shorter than the prompt a PARA adapter can score the prompt and "
                       "at most one next token (max_tokens 0 or 1): generation pools the whole prompt",
                       param="max_tokens")
    return len(ids) if n is None else n


async def _echo_scores(service: GenerationService, body: CompletionRequest, http: HttpRequest, request: Request,
                       ids: list[int], context: int, prompt_text: str, start: float, chunk) -> dict:
    """echo + logprobs: every prompt token's log-probability (OpenAI's legacy shape, the first token None),
    from one side forward on the engine thread; with max_tokens 1 the next token comes from the same forward,
    with more the engine generates them after."""
    decode = service.tokenizer.decode
    top_k = body.logprobs
    want_next = body.max_tokens is not None and body.max_tokens <= 1
    try:
        scores = await service.front.score(ids, request.adapter, context, top_k,
                                           request.params if body.max_tokens == 1 else None)
    except NoFreeSlot:
        request.finish_reason = "cancelled"
        raise ApiError(429, "every KV slot is busy; retry later", "rate_limit_error", None, "queue_full") from None
    except KeyError:
        request.finish_reason = "cancelled"
        raise adapter_unloaded(request.adapter) from None
    except AdapterError as error:
        request.finish_reason = "cancelled"
        raise adapter_failed(request.adapter, error) from None
    tokens = [decode([t]) for t in ids]
    values = [None] + scores.values
    tops = [None] + [{decode([t]): v for t, v in row} for row in scores.top]
    generated = []
    if want_next:
        if scores.next_token is not None:
            token, value, top = scores.next_token
            request.output_ids.append(token)
            generated = [(decode([token]), value, {decode([t]): v for t, v in top})]
        request.finish_reason = "length"
        service.observe(request, "completions", start, 200)
        text_tail = "".join(g[0] for g in generated)
        finish = "length"
    else:
        done = await service.run_to_end(http, request, start, "completions")
        text_tail, finish = done.text, FINISH.get(done.finish_reason, "stop")
        generated = [(decode([t]), v, None) for t, v in zip(done.output_ids, done.logprobs)]
    offsets = _text_offsets(decode, ids, prompt_text)
    end = len(prompt_text)
    for g in generated:
        offsets.append(end)
        end += len(g[0])
    logprobs = {"tokens": tokens + [g[0] for g in generated],
                "token_logprobs": values + [g[1] for g in generated],
                "top_logprobs": tops + [g[2] for g in generated],
                "text_offset": offsets}
    return {**chunk(prompt_text + text_tail, finish, logprobs), "usage": service.usage(request)}


def _text_offsets(decode, ids: list[int], text: str) -> list[int]:
    """Character offset of each prompt token in the echoed text (decoded prefix lengths, clipped to it)."""
    return [min(len(decode(ids[:i])), len(text)) for i in range(len(ids))]
