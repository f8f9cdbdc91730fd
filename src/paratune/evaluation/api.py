"""lm-eval over HTTP against ``paratune serve``: ``local-completions`` plus the context boundary for PARA.

lm-eval's ``local-completions`` scores a (context, continuation) pair by sending context + continuation as one
prompt with ``echo: true, logprobs: 1, max_tokens: 1`` and summing the returned prompt log-probabilities after
the context. That works as is for the base model, LoRA and (IA)^3 adapters (a causal model's earlier positions
do not see later tokens). A PARA adapter pools the prompt, so the server must know where the context ends; the
server refuses echo scoring of a PARA adapter without it (400, ``param: context_tokens``). This model,
registered as ``paratune-completions``, sends ``context_tokens`` (lm-eval's own context length, after its left
truncation) with every log-likelihood request; everything else is ``local-completions``:

    lm_eval --model paratune-completions --include_path <paratune task folder> --tasks arc_easy \\
        --model_args model=tenant-a,base_url=http://127.0.0.1:8000/v1/completions,tokenizer=<backbone folder>,\\
tokenizer_backend=huggingface
"""

from __future__ import annotations

from lm_eval.api.registry import register_model
from lm_eval.models.openai_completions import LocalCompletionsAPI


@register_model("paratune-completions")
class ParatuneCompletionsAPI(LocalCompletionsAPI):
    _context_lengths: list[int] | None = None

    def batch_loglikelihood_requests(self, chunks):
        inputs, ctxlens, cache_keys = super().batch_loglikelihood_requests(chunks)
        self._context_lengths = list(ctxlens)
        return inputs, ctxlens, cache_keys

    def _create_payload(self, messages, generate=False, gen_kwargs=None, seed=1234, eos=None, **kwargs):
        payload = super()._create_payload(messages, generate=generate, gen_kwargs=gen_kwargs, seed=seed, eos=eos,
                                          **kwargs)
        if not generate:
            lengths = kwargs.get("ctxlens") or self._context_lengths
            if not lengths or len(lengths) != 1 or len(messages) != 1:
                raise ValueError("paratune-completions scores one request per HTTP call (batch_size=1, "
                                 "num_concurrent=1): the server takes one prompt with its context_tokens")
            payload["context_tokens"] = int(lengths[0])
        return payload
