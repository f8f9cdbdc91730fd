"""Score any transformers causal LM on a task: choice log-likelihoods, response loss, greedy generation.

Token layout (shared by ``score_choices`` and ``response_loss``): the prompt is ``build_prompt`` (the
chat template's single user turn plus generation prompt, or the raw text without a template), tokenised
on its own; the response (a choice, or the gold answer) is tokenised on its own without special tokens;
the row is their concatenation, so the prompt/response boundary is exact. Rows are right-padded and
batched (``batch_size`` rows per forward pass, several choices of one example may share a batch). When
``prompt_mask_kwarg`` is given (e.g. ``"para_prompt_mask"``) the model also receives a bool B x T tensor
under that keyword, True exactly on prompt tokens (False on response tokens and padding), as PARA models
expect.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .base import Example, Task


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(tokenizer: Any, prompt_text: str) -> str:
    """The prompt as the model sees it: a single user message + generation prompt, or the raw text."""
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": prompt_text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt_text


def encode_prompt(tokenizer: Any, prompt_text: str) -> list[int]:
    # A rendered chat template already holds its special tokens (BOS included where the template has one).
    ids = tokenizer(build_prompt(tokenizer, prompt_text), add_special_tokens=not has_chat_template(tokenizer))
    return list(ids["input_ids"])


def encode_response(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _device(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid[0] if isinstance(tid, (list, tuple)) else tid)
    return 0


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def _row_logprobs(
    model: Any,
    tokenizer: Any,
    rows: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    prompt_mask_kwarg: str | None,
    desc: str,
) -> list[torch.Tensor]:
    """For each (prompt_ids, response_ids) row, the log-probability of every response token (float32)."""
    for p, r in rows:
        if not p:
            raise ValueError("a prompt tokenised to zero tokens; the first response token has no context")
        if not r:
            raise ValueError("a response tokenised to zero tokens")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    device = _device(model)
    pad = _pad_id(tokenizer)
    order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))  # less padding
    result: list[torch.Tensor | None] = [None] * len(rows)
    with torch.inference_mode(), tqdm(total=len(rows), desc=desc, disable=None, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            lengths = [len(rows[i][0]) + len(rows[i][1]) for i in idx]
            T = max(lengths)
            input_ids = torch.full((len(idx), T), pad, dtype=torch.long)
            attention = torch.zeros((len(idx), T), dtype=torch.long)
            prompt_mask = torch.zeros((len(idx), T), dtype=torch.bool)
            for b, i in enumerate(idx):
                p, r = rows[i]
                input_ids[b, : lengths[b]] = torch.tensor(p + r)
                attention[b, : lengths[b]] = 1
                prompt_mask[b, : len(p)] = True
            kwargs = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
            if prompt_mask_kwarg:
                kwargs[prompt_mask_kwarg] = prompt_mask.to(device)
            # Prompt tuning (PEFT) prepends its virtual tokens and returns their logits too: keep the last T.
            logits = _logits(model(**kwargs))[:, -T:]
            for b, i in enumerate(idx):
                p, r = rows[i]
                # logits at position t predict token t+1: response tokens at len(p)..len(p)+len(r)-1
                step = logits[b, len(p) - 1 : len(p) + len(r) - 1].float()
                target = torch.tensor(r, device=step.device)
                result[i] = F.log_softmax(step, dim=-1).gather(-1, target[:, None])[:, 0].cpu()
            bar.update(len(idx))
    return result  # type: ignore[return-value]


def choice_logliks(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 8,
    prompt_mask_kwarg: str | None = None,
) -> list[list[float]]:
    """Summed log-likelihood of each choice's tokens given the prompt, per example."""
    rows, owners = [], []
    for e in examples:
        if not e.choices:
            raise ValueError(f"example {e.id!r} has no choices")
        prompt = encode_prompt(tokenizer, e.prompt)
        for c in e.choices:
            r = encode_response(tokenizer, c)
            if not r:
                raise ValueError(f"example {e.id!r}: choice {c!r} tokenised to zero tokens")
            rows.append((prompt, r))
            owners.append(e)
    logps = _row_logprobs(model, tokenizer, rows, batch_size, prompt_mask_kwarg, "choices")
    out, k = [], 0
    for e in examples:
        out.append([float(lp.sum()) for lp in logps[k : k + len(e.choices)]])
        k += len(e.choices)
    return out


def score_choices(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 8,
    prompt_mask_kwarg: str | None = None,
    return_logliks: bool = False,
) -> list[int] | tuple[list[int], list[list[float]]]:
    """Predicted choice index (argmax summed log-likelihood) per example; with ``return_logliks=True``
    returns ``(predictions, per-choice log-likelihoods)``."""
    logliks = choice_logliks(model, tokenizer, examples, batch_size, prompt_mask_kwarg)
    preds = [max(range(len(ll)), key=ll.__getitem__) for ll in logliks]
    return (preds, logliks) if return_logliks else preds


def response_loss(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 8,
    prompt_mask_kwarg: str | None = None,
) -> float:
    """Mean token-level cross-entropy over the gold answer tokens of all examples (one average over all
    answer tokens, not a mean of per-example means). Examples whose answer is empty are skipped."""
    rows = []
    for e in examples:
        r = encode_response(tokenizer, e.answer)
        if r:
            rows.append((encode_prompt(tokenizer, e.prompt), r))
    if not rows:
        return float("nan")
    logps = _row_logprobs(model, tokenizer, rows, batch_size, prompt_mask_kwarg, "response loss")
    total = sum(float(-lp.double().sum()) for lp in logps)
    return total / sum(len(lp) for lp in logps)


@contextlib.contextmanager
def _left_padding(tokenizer: Any):
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    gen_cfg = getattr(model, "generation_config", None)
    for tid in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
        for t in tid if isinstance(tid, (list, tuple)) else [tid]:
            if t is not None and int(t) not in ids:
                ids.append(int(t))
    return ids


def generate_answers(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 8,
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy generation per example (left padding, stop at EOS); only the new tokens are decoded,
    special tokens skipped, surrounding whitespace stripped."""
    model.eval()
    device = _device(model)
    template = has_chat_template(tokenizer)
    prompts = [build_prompt(tokenizer, e.prompt) for e in examples]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    result: list[str] = [""] * len(prompts)
    gen_cfg = copy.deepcopy(model.generation_config)
    gen_cfg.do_sample, gen_cfg.temperature, gen_cfg.top_p, gen_cfg.top_k = False, None, None, None
    gen_cfg.max_new_tokens, gen_cfg.max_length = max_new_tokens, None
    eos = _eos_ids(model, tokenizer)
    gen_cfg.eos_token_id = eos or None
    with _left_padding(tokenizer), torch.inference_mode(), tqdm(
        total=len(prompts), desc="generate", disable=None, leave=False
    ) as bar:
        gen_cfg.pad_token_id = tokenizer.pad_token_id
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=not template
            ).to(device)
            out = model.generate(**enc, generation_config=gen_cfg)
            new = out[:, enc["input_ids"].shape[1] :]
            for b, i in enumerate(idx):
                result[i] = tokenizer.decode(new[b], skip_special_tokens=True).strip()
            bar.update(len(idx))
    return result


def evaluate(
    model: Any,
    tokenizer: Any,
    task: Task | str,
    examples: Sequence[Example],
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    prompt_mask_kwarg: str | None = None,
    with_loss: bool = True,
) -> dict:
    """Score ``examples`` of ``task``: choice likelihoods for multiple choice, greedy generation otherwise.

    Returns ``{"task", "n", <task metrics>, "response_loss", "predictions": [{"id", "prediction", "gold",
    "correct", ...}]}``. For multiple choice, ``prediction`` and ``gold`` are the choice texts and each
    entry also has ``pred_index``, ``label`` and ``logliks``. ``max_new_tokens`` defaults to the task's.
    Generation does not pass ``prompt_mask_kwarg`` (a PARA model's own generate handles its mask).
    """
    if isinstance(task, str):
        from .registry import get_task

        task = get_task(task)
    examples = list(examples)
    records = []
    if task.is_multiple_choice(examples):
        preds, logliks = score_choices(model, tokenizer, examples, batch_size, prompt_mask_kwarg, return_logliks=True)
        for e, p, ll in zip(examples, preds, logliks):
            records.append(
                {"id": e.id, "prediction": e.choices[p], "gold": e.choices[e.label] if e.label is not None else e.answer,
                 "correct": task.is_correct(p, e), "pred_index": p, "label": e.label, "logliks": ll}
            )
    else:
        n_new = max_new_tokens if max_new_tokens is not None else task.max_new_tokens
        preds = generate_answers(model, tokenizer, examples, batch_size, n_new)
        for e, p in zip(examples, preds):
            records.append({"id": e.id, "prediction": p, "gold": e.answer, "correct": task.is_correct(p, e)})
    result = {"task": task.name, "n": len(examples)}
    result.update(task.score(preds, examples))
    if with_loss:
        result["response_loss"] = response_loss(model, tokenizer, examples, batch_size, prompt_mask_kwarg)
    result["predictions"] = records
    return result
