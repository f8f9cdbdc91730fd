"""The transformers runner: any architecture, through the model's own forward, with hooks.

Each scaled site and each LoRA module gets one forward hook when the first adapter that needs it is loaded; a
hook asks the step's adapters (``batch.adapters``: ``scale_output_`` / ``scale_input`` / ``lora_``) what to do
with the module's fresh output, so a module no running row adapts costs one dictionary miss. The hooks never see
adapter names (vLLM's split between adapter management and the math inside layers).

How the step reaches the code that uses it: the KV cache gets it through ``_StepCache``, the per-step
``past_key_values`` handed to the forward; the attention (``slot_attention``) through the forward's
``paratune_batch`` keyword, which transformers passes down to it; a Linear's hook is called with the module's
arguments only, so the runner holds the batch of the forward it is running (``_batch``, set and cleared around
that one call, never between calls). PARA's generators run in decoder-layer pre-hooks that exist only for the
duration of a prefill with PARA rows, so a decode step pays no hook per layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ...para.arch import decoder_layers
from ..adapters import Adapter, RowDeltas
from ..batch import Batch
from ..kv_cache import SlotKVCache
from .slot_attention import use_slot_attention


class HFRunner:
    name = "transformers"

    def __init__(self, model: nn.Module, cache: SlotKVCache):
        self.model, self.cache = model, cache
        _, self.layers = decoder_layers(model)
        parameter = next(model.parameters())
        # A 4-D placeholder mask: transformers then skips building its own; slot_attention masks per prompt.
        self._no_mask = torch.zeros(1, 1, 1, 1, dtype=parameter.dtype, device=parameter.device)
        self._batch: Batch | None = None  # the batch of the forward running now, for the Linear hooks
        self._hooked: set = set()
        self._handles: list = []
        use_slot_attention(model)

    def supports(self, batch: Batch) -> bool:
        return True

    # ----- hooks, once per site / LoRA module ---------------------------------------------------------------
    def watch(self, adapter: Adapter, deltas: RowDeltas) -> None:
        """Hook what ``adapter``'s rows adapt (sites already hooked for another adapter are shared)."""
        for key in adapter.sites:
            if key not in self._hooked:
                self._hook_site(key, deltas.sides[key])
        for path in adapter.lora_modules:
            if path not in self._hooked:
                self._hook_lora(path)

    def _hook_site(self, key, side: str) -> None:
        module = self.layers[key[0]].get_submodule(key[1])
        if side == "output":
            def scale_output(module, args, out):
                return out if self._batch is None else self._batch.adapters.scale_output_(key, out)

            self._handles.append(module.register_forward_hook(scale_output))
        else:
            def scale_input(module, args):
                return None if self._batch is None else (self._batch.adapters.scale_input(key, args[0]), *args[1:])

            self._handles.append(module.register_forward_pre_hook(scale_input))
        self._hooked.add(key)

    def _hook_lora(self, path: str) -> None:
        def add_lora(module, args, out):
            return out if self._batch is None else self._batch.adapters.lora_(path, args[0], out)

        self._handles.append(self.model.get_submodule(path).register_forward_hook(add_lora))
        self._hooked.add(path)

    # ----- steps ----------------------------------------------------------------------------------------------
    def prefill(self, batch: Batch) -> torch.Tensor:
        """(prompts, vocab) logits at each packed prompt's last token; KV written."""
        return self._forward(batch, batch.input_ids[None], batch.positions[None], self._no_mask,
                             _StepCache(self.cache, batch), logits_to_keep=batch.last)[0]

    def decode(self, batch: Batch) -> torch.Tensor:
        """(rows, vocab) logits of one decode step."""
        return self._forward(batch, batch.input_ids[:, None], batch.positions[:, None], batch.mask,
                             _StepCache(self.cache, batch))[:, -1]

    def score(self, batch: Batch) -> torch.Tensor:
        """(positions, vocab) logits of every position of one prompt; no KV written."""
        return self._forward(batch, batch.input_ids[None], batch.positions[None], self._no_mask, None)[0]

    def _forward(self, batch: Batch, ids, positions, mask, cache, **kwargs) -> torch.Tensor:
        layer_hooks = []
        if batch.kind == "prefill" and batch.adapters.para is not None:
            layer_hooks = [layer.register_forward_pre_hook(_before_layer(i, batch), with_kwargs=True)
                           for i, layer in enumerate(self.layers)]
        self._batch = batch
        try:
            return self.model(input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=cache,
                              use_cache=cache is not None, paratune_batch=batch, **kwargs).logits
        finally:
            self._batch = None
            for handle in layer_hooks:
                handle.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _before_layer(index: int, batch: Batch):
    def hook(module, args, kwargs):
        batch.adapters.before_layer(index, args[0] if args else kwargs["hidden_states"])

    return hook


class _StepCache:
    """The slot KV cache as transformers' ``past_key_values`` for one step: ``update`` writes and reads the
    step's rows (``SlotKVCache.update`` with this step's batch)."""

    is_compileable = False

    def __init__(self, cache: SlotKVCache, batch: Batch):
        self.cache, self.batch = cache, batch

    def update(self, key_states, value_states, layer_idx: int, cache_kwargs=None):
        return self.cache.update(key_states, value_states, layer_idx, self.batch)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.batch.kind == "prefill" else self.batch.length - 1

    def get_mask_sizes(self, *args, **kwargs):
        raise NotImplementedError("the engine passes its own attention masks")
