"""/v1/chat/completions: the messages through the backbone's chat template, then generation (whole or streamed)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request as HttpRequest, Response

from ..errors import ApiError
from ..generation import FINISH, GenerationService, generation
from ..schemas import ChatCompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, http: HttpRequest, response: Response,
                           service: Annotated[GenerationService, Depends(generation)]):
    start = time.perf_counter()
    tokenizer = service.tokenizer
    adapter, _ = await service.resolve_adapter(body.model)
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "this backbone has no chat template; use /v1/completions", param="messages")
    messages = [m.model_dump() for m in body.messages]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    request = service.admit(ids, adapter, service.sampling(body, body.logprobs), "messages")
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta, finish_reason):
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    response.headers.update(headers := await service.load(request))
    if body.stream:
        first = [True]

        def event(ev):
            # the role comes with the first chunk only; the closing chunk carries just the finish reason
            delta = {"role": "assistant", "content": ev.text} if first[0] else (
                {"content": ev.text} if ev.text or not ev.finish_reason else {})
            first[0] = False
            return chunk(delta, FINISH.get(ev.finish_reason) if ev.finish_reason else None)

        usage_chunk = (lambda usage: {**chunk({}, None), "choices": [], "usage": usage}) \
            if body.stream_options and body.stream_options.include_usage else None
        return service.stream(request, start, "chat", event, headers, usage_chunk)
    done = await service.run_to_end(http, request, start, "chat")
    logprobs = None
    if done.params.logprobs:
        tokens, values = service.token_logprobs(done)
        logprobs = {"content": [{"token": t, "logprob": v, "bytes": list(t.encode()), "top_logprobs": []}
                                for t, v in zip(tokens, values)]}
    return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "logprobs": logprobs, "finish_reason": FINISH.get(done.finish_reason, "stop")}],
            "usage": service.usage(done)}
