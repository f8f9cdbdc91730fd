"""Record formats and tokenisation: one record -> prompt / response token ids, ``labels`` and ``para_prompt_mask``.

Every training example carries, besides ``input_ids`` / ``labels``, a boolean ``para_prompt_mask`` that is
True exactly on the prompt tokens (everything before the response, including the chat template's
assistant header / generation prompt) and False on response tokens and padding. PARA's generator pools
hidden states over those positions only; the loss covers response tokens only (``labels == -100`` on the
prompt and on padding).

Formats (``format=``):

* ``alpaca``: ``instruction``, optional ``input``, ``output``. Prompt = instruction + ("\\n\\n" + input
  when input is non-empty); response = output.
* ``chat``: ``messages`` = list of ``{"role", "content"}``. The LAST message must be from the assistant and
  is the response; every message before it (system prompt included) is the prompt.
* ``prompt-completion``: ``prompt``, ``completion``.
* ``multiple-choice``: ``query`` (str), ``choices`` (list of str), ``gold`` (index into ``choices``). Prompt =
  ``query`` as raw text (never through a chat template), response = ``" " + choices[gold]``, tokenised the
  way lm-eval scores ``query + " " + choice`` (see ``encode_raw_pair``), so an adapter trained on this format
  is trained on exactly the sequences a log-likelihood evaluation scores. No EOS is appended.

Tokenisation of the chat formats (``encode_example``): with a chat template the prompt ids are the template
rendering of the prompt messages with ``add_generation_prompt=True`` (alpaca / prompt-completion prompts
become a single user message), and the response ids are what the template renders after that prompt for the
full conversation: the response text followed by the template's end-of-turn token(s). If the template does
not render the prompt as a prefix of the full conversation, the response is tokenised on its own followed by
EOS. Without a chat template the prompt ids are ``tokenizer(prompt)`` and the response ids are
``tokenizer(response, add_special_tokens=False) + [eos]``; a multi-message chat prompt is then rendered as
a plain ``role: content`` transcript ending in ``"assistant: "`` (see ``plain_chat_prompt``).

An example whose prompt alone leaves no room for a response token within ``max_length`` is skipped (and
counted): the prompt is never truncated. An over-long response is truncated at its tail.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
FORMATS = ("alpaca", "chat", "prompt-completion", "multiple-choice")
RAW_TEXT_FORMATS = ("multiple-choice",)  # prompt is raw text: no chat template, no EOS after the response
REQUIRED_FIELDS = {
    "alpaca": ("instruction", "output"),
    "chat": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "multiple-choice": ("query", "choices", "gold"),
}
EXAMPLE_KEYS = ("input_ids", "labels", "para_prompt_mask")


def _normalise_format(format: str) -> str:
    key = str(format).strip().lower().replace("_", "-")
    if key not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; allowed formats: {', '.join(FORMATS)}")
    return key


def _where(record: Mapping, source: str | None) -> str:
    src = source or getattr(record, "source", None)
    return f" ({src})" if src else ""


def _field(record: Mapping, name: str, fmt: str, source: str | None, *, optional: bool = False) -> Any:
    if name not in record or (record[name] is None and not optional):
        if optional:
            return None
        present = ", ".join(sorted(map(str, record.keys()))) or "none"
        raise ValueError(
            f"record is missing field {name!r} required by format {fmt!r}{_where(record, source)}; "
            f"fields present: {present}"
        )
    value = record[name]
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(
            f"field {name!r} must be a string, got {type(value).__name__}{_where(record, source)}"
        )
    return value


def split_prompt_response(record: Mapping, format: str, source: str | None = None) -> tuple[list[dict], str]:
    """Return ``(prompt_messages, response_text)`` for one record.

    ``prompt_messages`` is the chat prefix fed to the template with ``add_generation_prompt=True``: a
    single user message for alpaca / prompt-completion, the whole prefix for chat. For multiple-choice it is
    a single user message holding the raw ``query`` (``encode_example`` never templates it). Raises ValueError
    naming the missing / bad field and the record's source.
    """
    fmt = _normalise_format(format)
    if not isinstance(record, Mapping):
        raise ValueError(f"record must be a JSON object, got {type(record).__name__}{_where({}, source)}")
    if fmt == "alpaca":
        instruction = _field(record, "instruction", fmt, source)
        extra = _field(record, "input", fmt, source, optional=True)
        output = _field(record, "output", fmt, source)
        prompt = instruction + ("\n\n" + extra if extra and extra.strip() else "")
        if not prompt.strip():
            raise ValueError(f"field 'instruction' is empty{_where(record, source)}")
        return [{"role": "user", "content": prompt}], output
    if fmt == "prompt-completion":
        prompt = _field(record, "prompt", fmt, source)
        completion = _field(record, "completion", fmt, source)
        if not prompt.strip():
            raise ValueError(f"field 'prompt' is empty{_where(record, source)}")
        return [{"role": "user", "content": prompt}], completion
    if fmt == "multiple-choice":
        query, response = _multiple_choice(record, source)
        return [{"role": "user", "content": query}], response
    # chat
    if "messages" not in record or record["messages"] is None:
        present = ", ".join(sorted(map(str, record.keys()))) or "none"
        raise ValueError(
            f"record is missing field 'messages' required by format 'chat'{_where(record, source)}; "
            f"fields present: {present}"
        )
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"field 'messages' must be a non-empty list of messages{_where(record, source)}")
    clean = []
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{j}] must be an object with 'role' and 'content'{_where(record, source)}")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"messages[{j}] is missing field {key!r}{_where(record, source)}")
            if not isinstance(m[key], str):
                raise ValueError(
                    f"messages[{j}].{key} must be a string, got {type(m[key]).__name__}{_where(record, source)}"
                )
        clean.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in clean):
        raise ValueError(f"chat record has no assistant message to train on{_where(record, source)}")
    if clean[-1]["role"] != "assistant":
        raise ValueError(
            f"the last message of a chat record must be from the assistant (it is the response), "
            f"got role {clean[-1]['role']!r}{_where(record, source)}"
        )
    if len(clean) < 2:
        raise ValueError(
            f"chat record has no prompt: it needs at least one message before the final assistant message"
            f"{_where(record, source)}"
        )
    return clean[:-1], clean[-1]["content"]


def _multiple_choice(record: Mapping, source: str | None) -> tuple[str, str]:
    """``(query, " " + choices[gold])`` of a multiple-choice record, every field checked."""
    fmt = "multiple-choice"
    query = _field(record, "query", fmt, source)
    if not query.strip():
        raise ValueError(f"field 'query' is empty{_where(record, source)}")
    if "choices" not in record or record["choices"] is None:
        _field(record, "choices", fmt, source)  # raises: missing field
    choices = record["choices"]
    if not isinstance(choices, list) or not choices:
        raise ValueError(
            f"field 'choices' must be a non-empty list of strings, got {_describe(choices)}{_where(record, source)}"
        )
    for j, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            raise ValueError(
                f"field 'choices' must be a non-empty list of strings, but choices[{j}] is {_describe(choice)}"
                f"{_where(record, source)}"
            )
    if "gold" not in record or record["gold"] is None:
        _field(record, "gold", fmt, source)  # raises: missing field
    gold = record["gold"]
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ValueError(
            f"field 'gold' must be an integer index into 'choices' (0 to {len(choices) - 1}), got {gold!r}"
            f"{_where(record, source)}"
        )
    return query, " " + choices[gold]


def _describe(value: Any) -> str:
    """``'text'`` for a string, ``2 (int)`` / ``[] (list)`` otherwise; long values by their type alone."""
    text = repr(value)
    if len(text) > 40:
        return f"a {type(value).__name__}"
    return text if isinstance(value, str) else f"{text} ({type(value).__name__})"


def plain_chat_prompt(messages: Sequence[Mapping]) -> str:
    """Prompt text for a tokenizer WITHOUT a chat template.

    A single user message is its content verbatim (as for alpaca / prompt-completion); anything else is
    a ``"role: content"`` transcript, one message per paragraph, ending with ``"assistant: "``.
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant: "


# ----------------------------------------------------------------------------------------- tokenising


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _to_ids(out: Any) -> list[int]:
    """apply_chat_template / tokenizer outputs differ across versions: list, BatchEncoding, tensor."""
    if isinstance(out, Mapping):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):  # batched
        out = out[0]
    return [int(i) for i in out]


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token so responses can be terminated")
    return int(eos)


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _render(tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool, source: str | None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # templates raise on e.g. non-alternating roles
        raise ValueError(f"the chat template failed on this record{_where({}, source)}: {e}") from e


def _template_ids(tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool, source: str | None) -> list[int]:
    try:
        # return_dict=False: a plain list of ids (transformers 5 otherwise returns a BatchEncoding; _to_ids
        # copes with either).
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
    except Exception as e:  # templates raise on e.g. non-alternating roles
        raise ValueError(f"the chat template failed on this record{_where({}, source)}: {e}") from e
    return _to_ids(out)


def _template_prompt_response_ids(
    tokenizer: Any, prompt_messages: list[dict], response: str, source: str | None
) -> tuple[list[int], list[int]]:
    prompt_ids = _template_ids(tokenizer, prompt_messages, add_generation_prompt=True, source=source)
    full_messages = list(prompt_messages) + [{"role": "assistant", "content": response}]
    prompt_text = _render(tokenizer, prompt_messages, add_generation_prompt=True, source=source)
    full_text = _render(tokenizer, full_messages, add_generation_prompt=False, source=source)
    eos = _eos_id(tokenizer)
    if not full_text.startswith(prompt_text):
        # The template renders the generation prompt differently from an assistant turn: no reliable way
        # to find the end-of-turn marker, so terminate the response with EOS.
        logger.debug("chat template: prompt is not a prefix of the full rendering; using response + eos")
        return prompt_ids, _to_ids(tokenizer(response, add_special_tokens=False)) + [eos]
    full_ids = _template_ids(tokenizer, full_messages, add_generation_prompt=False, source=source)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        response_ids = full_ids[len(prompt_ids) :]
    else:  # token boundary merged across prompt/response: tokenise the rendered suffix on its own
        response_ids = _to_ids(tokenizer(full_text[len(prompt_text) :], add_special_tokens=False))
    if not (set(response_ids) & (_special_ids(tokenizer) | {eos})):
        # The template emits no end-of-turn token after the response: add EOS so the model learns to stop.
        response_ids = response_ids + [eos]
    return prompt_ids, response_ids


def encode_raw_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` after it, split as lm-eval (0.4) splits a
    log-likelihood request of a causal LM: trailing whitespace of the context moves to the continuation, then
    ``context_ids = tokenizer(context)`` and ``continuation_ids = tokenizer(context + continuation)`` minus its
    first ``len(context_ids)`` tokens (the tokenizer's default special tokens, as ``tokenizer.encode``)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    context_ids = _to_ids(tokenizer(context))
    whole_ids = _to_ids(tokenizer(context + continuation))
    return context_ids, whole_ids[len(context_ids):]


def encode_example(
    tokenizer: Any,
    record: Mapping,
    format: str,
    max_length: int,
    source: str | None = None,
) -> dict | None:
    """Tokenise one record into a PARA training example, or return None when the prompt is too long.

    Returns ``{"input_ids", "labels", "para_prompt_mask", "n_prompt_tokens", "n_response_tokens",
    "truncated"}`` where ``labels`` is -100 on the prompt and ``para_prompt_mask`` (list of bools) is True
    exactly on the prompt. None means the prompt alone needs ``>= max_length`` tokens (no room for a single
    response token); the prompt is never truncated. A too-long response is cut at its tail
    (``truncated=True``). ``source`` (file and line) is used in error messages; it defaults to the
    record's own ``source`` when it is a ``Record``.
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    source = source or getattr(record, "source", None)
    prompt_messages, response = split_prompt_response(record, format, source)
    fmt = _normalise_format(format)
    if fmt in RAW_TEXT_FORMATS:
        prompt_ids, response_ids = encode_raw_pair(tokenizer, prompt_messages[0]["content"], response)
        if not response_ids:
            raise ValueError(f"the response tokenised to zero tokens{_where(record, source)}")
    elif has_chat_template(tokenizer):
        prompt_ids, response_ids = _template_prompt_response_ids(tokenizer, prompt_messages, response, source)
    else:
        prompt_ids = _to_ids(tokenizer(plain_chat_prompt(prompt_messages)))
        response_ids = _to_ids(tokenizer(response, add_special_tokens=False)) + [_eos_id(tokenizer)]
    if not prompt_ids:
        raise ValueError(f"the prompt tokenised to zero tokens{_where(record, source)}")
    if len(prompt_ids) >= max_length:
        return None
    truncated = len(prompt_ids) + len(response_ids) > max_length
    if truncated:
        response_ids = response_ids[: max_length - len(prompt_ids)]
    n_p, n_r = len(prompt_ids), len(response_ids)
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * n_p + list(response_ids),
        "para_prompt_mask": [True] * n_p + [False] * n_r,
        "n_prompt_tokens": n_p,
        "n_response_tokens": n_r,
        "truncated": truncated,
    }


