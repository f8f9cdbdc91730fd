"""Request and response bodies of the OpenAI-compatible API (the subset paratune serves)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False  # a last chunk, before [DONE], with empty choices and the request's usage


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens even past EOS (benchmarks)
    user: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        if value is None:
            return []
        values = [value] if isinstance(value, str) else value
        if len(values) > 4 or any(not isinstance(v, str) or not v for v in values):
            raise ValueError("stop must be a non-empty string or a list of up to 4 non-empty strings")
        return values


class CompletionRequest(_Sampling):
    """``prompt``: a string, or token ids (lm-eval's ``local-completions`` sends ``[[ids]]``). ``max_tokens: 0``
    (only with ``echo``) generates nothing: with ``logprobs``, the answer is the prompt's own token
    log-probabilities. ``context_tokens`` (paratune's extension): the prompt's first N tokens are the context,
    the rest a continuation being scored; a PARA adapter pools the context only (required for echo scoring on a
    PARA adapter)."""

    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = None  # >= 1, or 0 with echo (checked by the endpoint, which knows echo)
    logprobs: Optional[int] = Field(default=None, ge=0, le=1)
    echo: bool = False
    context_tokens: Optional[int] = Field(default=None, ge=1)

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, value):
        if value is not None and value < 0:
            raise ValueError("Input should be greater than or equal to 1 (or 0 with echo=true, to score the prompt)")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list) and value and not isinstance(value[0], int):
            if len(value) != 1:
                raise ValueError("prompt must be a string (or a list with exactly one string or token list)")
            value = value[0]
        if not value:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and any(t < 0 for t in value):
            raise ValueError("prompt token ids must be >= 0")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False


class AdapterLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str = Field(min_length=1, max_length=1024)
