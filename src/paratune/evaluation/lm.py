"""lm-eval's ``HFLM`` around a paratune backbone, with or without a PEFT adapter, passing PARA's prompt mask.

``ParatuneLM(model, tokenizer)`` accepts a transformers causal LM or a ``peft.PeftModel`` (PARA, LoRA, (IA)^3,
prompt tuning ...); ``ParatuneLM.load(model_name, adapter)`` builds one from a backbone name and an adapter
folder. It is also registered with lm-eval as ``paratune`` (``lm_eval --model paratune --model_args
pretrained=smollm2-135m-instruct,adapter=runs/a``).

PARA pools the hidden states of the *prompt* only. lm-eval's ``HFLM`` runs ``model(input_ids)`` on context +
continuation, which would let a PARA generator pool the continuation it is asked to score. Here, for a PARA
model, every log-likelihood forward also gets ``para_prompt_mask`` = True exactly on the context tokens of each
row (lm-eval's ``context_enc`` after its left truncation), and generation gets the prompt (the attention mask
of the left-padded context) as the mask. The rows of a forward are matched to their requests by replaying
lm-eval's own ordering (``Collator`` with the same sort key) and every row's tokens are checked against the
request it is taken for, so a change in lm-eval's batching raises instead of pooling the wrong tokens. lm-eval's
one-token-continuation cache (one forward for all the choices of a question that share context +
continuation[:-1]) is kept for PARA only when every such group also shares its context boundary, so the pooled
prompt is the same for every member (the usual multiple-choice case: SST-2, BoolQ); otherwise it is off for the
call. ``batch_size="auto"`` is refused for PARA (its probe forwards carry no mask).
"""

from __future__ import annotations

import collections
from pathlib import Path

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator

from ..para import PROMPT_MASK_KWARG, uses_prompt_mask


def load_model(model_name: str, adapter: str | None):
    """(model, tokenizer): the backbone, wrapped in ``peft.PeftModel.from_pretrained`` when ``adapter`` is given."""
    from ..models import load_backbone

    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"--adapter {adapter!r} has no adapter_config.json")
    backbone = load_backbone(model_name)
    model = backbone.model
    if adapter:
        import peft

        model = peft.PeftModel.from_pretrained(model, adapter)
    return model.eval(), backbone.tokenizer


@register_model("paratune")
class ParatuneLM(HFLM):
    def __init__(self, pretrained=None, tokenizer=None, adapter: str | None = None, batch_size: int | str = 8,
                 max_length: int | None = None, **kwargs):
        if pretrained is None or isinstance(pretrained, str):  # lm-eval's --model_args path
            from ..models import DEFAULT_MODEL

            pretrained, tokenizer = load_model(pretrained or DEFAULT_MODEL, adapter)
        elif tokenizer is None:
            raise ValueError("ParatuneLM(model, tokenizer): pass the tokenizer with a model instance")
        self.para = uses_prompt_mask(pretrained)
        if self.para:
            if str(batch_size).startswith("auto"):
                raise ValueError("batch_size='auto' is not supported for PARA models (the size probe has no "
                                 "prompt mask); pass an integer")
            self._want_logits_cache = kwargs.get("logits_cache", True)
        kwargs.setdefault("device", str(next(pretrained.parameters()).device))
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                         max_length=max_length, **kwargs)
        self._pending: collections.deque | None = None

    # ----- log-likelihood: the context is the PARA prompt -------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if not self.para:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

        def _collate(req):  # HFLM._loglikelihood_tokens' sort key and group key, so the replay has its order
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        def _lookup_one_token_cont(req):
            return req[-2] + req[-1][:-1]

        # A shared forward is safe for PARA only if the group's members pool the same prompt (same boundary).
        boundaries = collections.defaultdict(set)
        for _, context_enc, continuation_enc in requests:
            boundaries[tuple(context_enc + continuation_enc[:-1])].add(len(context_enc))
        self.logits_cache = self._want_logits_cache and all(len(b) == 1 for b in boundaries.values())
        ordered = next(Collator(requests, sort_fn=_collate, group_by="contexts" if self.logits_cache else None,
                                group_fn=_lookup_one_token_cont).get_batched(n=0), [])
        pending = collections.deque()
        for _, context_enc, continuation_enc in ordered:
            window = (context_enc + continuation_enc)[-(self.max_length + 1):][:-1]
            n_context = len(window) - (len(continuation_enc) - 1)
            if n_context < 1:
                raise ValueError(f"a continuation of {len(continuation_enc)} tokens leaves no context in the "
                                 f"{self.max_length}-token window: PARA would have no prompt to pool")
            pending.append((window, n_context))
        self._pending = pending
        try:
            result = super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            left, self._pending = len(pending), None
        if left:
            raise RuntimeError(f"{left} log-likelihood rows were never run: lm-eval's batching changed")
        return result

    def context_mask(self, inps: torch.Tensor) -> torch.Tensor:
        """The B x T prompt mask of the next ``len(inps)`` log-likelihood rows (context tokens True)."""
        if self._pending is None:
            raise RuntimeError("a PARA model was called outside a log-likelihood request: no prompt mask known")
        mask = torch.zeros(inps.shape, dtype=torch.bool, device=inps.device)
        for row in range(inps.shape[0]):
            if not self._pending:
                raise RuntimeError("more log-likelihood rows than requests: lm-eval's batching changed")
            window, n_context = self._pending.popleft()
            if inps.shape[1] < len(window) or inps[row, : len(window)].tolist() != window:
                raise RuntimeError("a log-likelihood row does not hold the tokens of its request: lm-eval's "
                                   "batching changed, refusing to guess the PARA prompt")
            mask[row, :n_context] = True
        return mask

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        if not self.para:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        mask = self.context_mask(inps)
        with torch.no_grad():
            return self.model(input_ids=inps, **{PROMPT_MASK_KWARG: mask}).logits

    # ----- generation: the (left-padded) context is the PARA prompt ---------------------------------------
    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        if self.para:
            attention = generation_kwargs.get("attention_mask")
            generation_kwargs[PROMPT_MASK_KWARG] = (torch.ones_like(context) if attention is None
                                                    else attention).bool()
        return super()._model_generate(context, max_length, stop, **generation_kwargs)
