"""ParaModel: the PEFT tuner that attaches PARA to a transformers causal LM.

Each decoder layer gets a ``ParaLayer`` child named ``para``. A forward pre-hook on the wrapped model decides,
per call, whether this forward is a prefill (compute the vectors from the prompt) or a decode step (reuse
the vectors computed at prefill):

* inside ``generate``: the first forward is the prefill, every later one is a decode step, with or without
  a cache (so ``use_cache=False`` and beam search behave the same as cached greedy decoding);
* a plain forward: decode when it is given a non-empty ``past_key_values``, prefill otherwise.

At prefill the prompt is, in this order of precedence:

1. ``para_prompt_mask`` (B x T, True on prompt tokens) when given;
2. else, with TRL's ``completion_mask`` / ``assistant_masks`` (1 on response tokens), the attended tokens
   before each row's first response token;
3. else, with ``labels`` (B x T, -100 where no loss is taken: what completion-only collators such as TRL's and
   ``DataCollatorForSeq2Seq`` produce), the attended tokens before each row's first labelled token;
4. else every non-padding token of the input (inference and scoring: the input is the prompt).

So a trainer that passes only ``labels`` never lets the generator pool the response it is trained to predict.
Labels that leave no prompt (plain language modelling) and packed rows (several examples in one row) are
refused with a ValueError rather than pooled wrongly.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import partial, wraps

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .arch import _model_config, decoder_layers, resolve_sites
from .config import ParaConfig
from .layer import BASE_ROW, ForwardState, ParaLayer

PROMPT_MASK_KWARG = "para_prompt_mask"
RESPONSE_MASK_KWARGS = ("completion_mask", "assistant_masks")  # TRL's names; 1 on response tokens
IGNORE_INDEX = -100  # the label of tokens without loss (transformers' and PyTorch's convention)


class ParaModel(BaseTuner):
    prefix = "para_"
    tuner_layer_cls = ParaLayer
    target_module_mapping: dict = {}

    # ----- injection --------------------------------------------------------------------------------------
    def _pre_injection_hook(self, model: nn.Module, config: ParaConfig, adapter_name: str) -> None:
        if "_para_state" not in self.__dict__:
            self._para_state = ForwardState()
            self._generate_step: int | None = None
            self._generate_prompt_mask: torch.Tensor | None = None
            self._model_hook = model.register_forward_pre_hook(self._before_model, with_kwargs=True)
            self._wrap_generate(model)

    def inject_adapter(self, model, adapter_name, autocast_adapter_dtype=True, low_cpu_mem_usage=False,
                       state_dict=None) -> None:
        """Attach a generator for ``adapter_name`` to every transformed decoder layer (PEFT's module matching
        by name does not fit a per-layer method, so this replaces BaseTuner's generic injection)."""
        config: ParaConfig = self.peft_config[adapter_name]
        if not isinstance(config, ParaConfig):
            raise TypeError(f"ParaModel needs a ParaConfig, got {type(config).__name__}")
        self._check_new_adapter_config(config)
        layers_path, layers = decoder_layers(model)
        n_layers = len(layers)
        indices = config.layers_to_transform or list(range(n_layers))
        if max(indices) >= n_layers:
            raise ValueError(
                f"ParaConfig.layers_to_transform={config.layers_to_transform} but the model has {n_layers} layers"
            )
        hidden_size = _model_config(model).hidden_size
        plans = [(i, layers[i], resolve_sites(model, layers[i], config.targets)) for i in indices]  # may raise
        for index, layer, sites in plans:
            para = getattr(layer, "para", None)
            if para is None:
                para = ParaLayer(layer, index, hidden_size, self._para_state)
                para._active_adapter = list(self.active_adapters)
                layer.add_module("para", para)
            para.update_layer(adapter_name, config, sites)
            name = f"{layers_path}.{index}.para"
            if name not in self.targeted_module_names:
                self.targeted_module_names.append(name)
        self._para_layer_list = None
        self._mark_only_adapters_as_trainable(model)
        if config.inference_mode:
            for para in self._para_layers():
                if adapter_name in para.generators:
                    para.generators[adapter_name].requires_grad_(False)

    def _create_and_replace(self, *args, **kwargs):  # required by BaseTuner; PARA injects per layer instead
        raise NotImplementedError("ParaModel injects per decoder layer; see ParaModel.inject_adapter")

    def _para_layers(self) -> list[ParaLayer]:
        # Cached: read on every checkpointed layer call; layers only appear in inject_adapter / go in unload.
        if self.__dict__.get("_para_layer_list") is None:
            self._para_layer_list = [m for m in self.model.modules() if isinstance(m, ParaLayer)]
        return self._para_layer_list

    # ----- per-call control -------------------------------------------------------------------------------
    def _before_model(self, module, args, kwargs):
        """Runs before every forward of the wrapped model: pop our kwarg and set the mode for all layers."""
        prompt_mask = kwargs.pop(PROMPT_MASK_KWARG, None)
        response_masks = [kwargs.pop(name) for name in RESPONSE_MASK_KWARGS if name in kwargs]
        state = self._para_state
        if module.training:
            self._bind_checkpointing()
        if self._generate_step is not None:
            decoding = self._generate_step > 0
            self._generate_step += 1
            prompt_mask = self._generate_prompt_mask if prompt_mask is None else prompt_mask
        else:
            cache = kwargs.get("past_key_values")
            decoding = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
        if decoding:
            state.mode = "reuse"
            return args, kwargs
        state.mode = "compute"
        response_mask = next((m for m in response_masks if m is not None), None)
        state.pool_mask = self._pool_mask(args, kwargs, prompt_mask, response_mask, training=module.training)
        if state.adapter_names is not None:
            state.adapter_names = _expand_rows(state.adapter_names, state.pool_mask.shape[0], "adapter_names")
        return args, kwargs

    def _bind_checkpointing(self) -> None:
        """Make gradient checkpointing recompute each layer with the PARA vectors of its own forward.

        transformers checkpoints a decoder layer's ``forward`` and runs its hooks outside: the generator (a
        pre-hook on the layer) runs once, and the projections' hooks, inside the checkpointed function, read
        the vectors when they run. On the backward replay they would read whatever the *latest* forward left
        there: with two forwards before one backward (preference losses, custom losses) the first forward's
        gradients came out wrong (21% max relative error on a tiny Llama). So every checkpointing function of
        the model is wrapped (once) to snapshot PARA's per-forward state when the forward runs and to restore
        it for the replay. Reentrant checkpointing cannot backpropagate into the generator (its input comes
        from outside the checkpointed function), so ``use_reentrant=True`` is switched to False with a warning.
        """
        for module in self.model.modules():
            func = module.__dict__.get("_gradient_checkpointing_func")
            if func is None or getattr(func, "_para_bound", False):
                continue
            if isinstance(func, partial) and func.keywords.get("use_reentrant") is True:
                func = partial(func.func, *func.args, **{**func.keywords, "use_reentrant": False})
                if not getattr(self, "_warned_reentrant", False):
                    warnings.warn("PARA needs non-reentrant gradient checkpointing; switched use_reentrant to False")
                    self._warned_reentrant = True
            module._gradient_checkpointing_func = self._replay_with_own_vectors(func)

    def _replay_with_own_vectors(self, checkpoint):
        def checkpoint_with_para_state(function, *args, **kwargs):
            forward_state = self._snapshot()

            def run(*inner_args, **inner_kwargs):
                current = self._snapshot()  # equal to forward_state, except during the backward replay
                self._restore(forward_state)
                try:
                    return function(*inner_args, **inner_kwargs)
                finally:
                    self._restore(current)

            return checkpoint(run, *args, **kwargs)

        checkpoint_with_para_state._para_bound = True
        return checkpoint_with_para_state

    def _snapshot(self) -> tuple:
        state = self._para_state
        return state.mode, state.pool_mask, state.adapter_names, [p.scaler.scales for p in self._para_layers()]

    def _restore(self, snapshot: tuple) -> None:
        state = self._para_state
        state.mode, state.pool_mask, state.adapter_names, scales = snapshot
        for para, layer_scales in zip(self._para_layers(), scales):
            para.scaler.scales = layer_scales

    def _pool_mask(self, args, kwargs, prompt_mask, response_mask, training: bool) -> torch.Tensor:
        """The (B, T) bool mask of the tokens the generators pool at this prefill (see the module docstring)."""
        inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        if inputs is None:
            inputs = kwargs["inputs_embeds"]
        batch, length = inputs.shape[:2]
        attention_mask = kwargs.get("attention_mask")
        mask = torch.ones(batch, length, dtype=torch.bool, device=inputs.device)
        if attention_mask is not None and attention_mask.dim() == 2:
            mask = attention_mask[:, -length:].to(torch.bool)
        labels = kwargs.get("labels")
        if not (isinstance(labels, torch.Tensor) and labels.shape == (batch, length)):
            labels = None
        _refuse_packed_rows(kwargs, mask)
        if prompt_mask is not None:
            prompt_mask = torch.as_tensor(prompt_mask, device=inputs.device).to(torch.bool)
            prompt_mask = _expand_rows(prompt_mask, batch, PROMPT_MASK_KWARG)
            if prompt_mask.shape[1] < length:  # a prompt mask from generate covers only the prompt
                pad = torch.zeros(batch, length - prompt_mask.shape[1], dtype=torch.bool, device=inputs.device)
                prompt_mask = torch.cat([prompt_mask, pad], dim=1)
            if prompt_mask.shape != (batch, length):
                raise ValueError(
                    f"{PROMPT_MASK_KWARG} must have shape (batch, seq_len) = {(batch, length)}, "
                    f"got {tuple(prompt_mask.shape)}"
                )
            mask = mask & prompt_mask
            if labels is not None:
                leaked = (mask & (labels != IGNORE_INDEX)).any(dim=1)
                if bool(leaked.any()):
                    row = int(leaked.nonzero()[0])
                    raise ValueError(
                        f"{PROMPT_MASK_KWARG} marks tokens that have labels (row {row}): PARA would pool the "
                        "response it is trained to predict. The prompt mask must be False wherever labels != -100."
                    )
        elif response_mask is not None or labels is not None:
            # The prompt ends at the first response token: anything after it (later turns included) is unseen.
            response = (response_mask.to(torch.bool) if response_mask is not None else labels != IGNORE_INDEX)
            source = "completion_mask" if response_mask is not None else "labels"
            mask = mask & ((response & mask).cumsum(dim=1) == 0)
            _refuse_unpromptable_rows(mask, source)
        elif training and not getattr(self, "_warned_no_prompt", False):
            warnings.warn(
                f"PARA is training on a batch without {PROMPT_MASK_KWARG} or labels: the generators pool every "
                "input token. If the inputs contain the responses, pass para_prompt_mask (or labels with -100 "
                "on the prompt) so that training pools what serving will see: the prompt only."
            )
            self._warned_no_prompt = True
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            raise ValueError(
                f"every row needs at least one prompt token for PARA to pool over; row {int(empty.nonzero()[0])}"
                " has none (its prompt mask, after padding, is empty)"
            )
        return mask

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """Called by PeftModel around forward/generate: routes ``adapter_names`` (one per row) to the layers."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        adapter_names = list(adapter_names)
        unknown = sorted({n for n in adapter_names if n != BASE_ROW and n not in self.peft_config})
        if unknown:
            raise ValueError(
                f"unknown adapter name(s) {unknown} in adapter_names; known: {sorted(self.peft_config)} "
                f"and {BASE_ROW!r} for base-model rows"
            )
        previous = self._para_state.adapter_names
        self._para_state.adapter_names = adapter_names
        try:
            yield
        finally:
            self._para_state.adapter_names = previous

    def _wrap_generate(self, model: nn.Module) -> None:
        """Wrap the model instance's ``generate`` so its first forward is the prefill and later ones are decode
        steps (PEFT's generic PeftModel calls the transformers model's ``generate`` directly, so the wrapper
        must sit on the model itself). ``para_prompt_mask`` may be passed to ``generate`` for the prompt."""
        original = model.generate

        @wraps(original)
        def generate(*args, **kwargs):
            if self._generate_step is not None:
                raise RuntimeError("generate of a PARA model is not re-entrant")
            self._generate_step, self._generate_prompt_mask = 0, kwargs.pop(PROMPT_MASK_KWARG, None)
            try:
                return original(*args, **kwargs)
            finally:
                self._generate_step, self._generate_prompt_mask = None, None

        model.generate = generate

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """Checkpoint keys carry no adapter name: ``...para.generators.<name>.down.weight`` is saved as
        ``...para.generators.down.weight`` (PEFT's default only strips a name right before the leaf)."""
        return key.replace(f".generators.{adapter_name}.", ".generators.")

    # ----- PEFT API that does not apply to PARA ---------------------------------------------------------
    def _check_merge_allowed(self):
        raise ValueError(
            "PARA adapters cannot be merged into the base weights: their vectors depend on each prompt"
        )

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        if merge:
            self._check_merge_allowed()
        for para in self._para_layers():
            para.remove_hooks()
            parent = para._decoder_layer[0]
            del parent._modules["para"]
        self._para_layer_list = None
        self._model_hook.remove()
        self.model.__dict__.pop("generate", None)  # back to the class's generate
        return self.model


def _refuse_unpromptable_rows(mask: torch.Tensor, source: str) -> None:
    """Rows whose first attended token already has a label: plain language modelling, no prompt to pool."""
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        raise ValueError(
            f"PARA cannot tell the prompt from the response in row {int(empty.nonzero()[0])}: its {source} "
            "label every attended token from the first one (plain language modelling), so the generator would "
            "pool the response it is trained to predict. Pass para_prompt_mask (B x T, True on prompt tokens), "
            "or set the prompt tokens' labels to -100: a completion-only loss, e.g. TRL's SFTTrainer on a "
            "prompt-completion dataset (completion_only_loss), DataCollatorForSeq2Seq with prompt labels -100, "
            "or paratune.training.ParaDataCollator."
        )


def _refuse_packed_rows(kwargs: dict, mask: torch.Tensor) -> None:
    """PARA pools one prompt per row; packed / padding-free rows hold several examples (position_ids restart)."""
    packed = any(kwargs.get(name) is not None for name in ("cu_seq_lens_q", "cu_seqlens_q"))
    position_ids = kwargs.get("position_ids")
    row = None
    if not packed and isinstance(position_ids, torch.Tensor) and position_ids.dim() == 2 \
            and position_ids.shape[-1] == mask.shape[-1] and position_ids.shape[-1] > 1:
        both = mask[:, 1:] & mask[:, :-1]  # compare consecutive attended positions only (left padding is fine)
        restarts = ((position_ids[:, 1:] <= position_ids[:, :-1]) & both).any(dim=1)
        if bool(restarts.any()):
            packed, row = True, int(restarts.nonzero()[0])
    if packed:
        where = f" (position_ids restart inside row {row})" if row is not None else ""
        raise ValueError(
            f"PARA got a packed (padding-free) batch{where}: several examples share one row, but PARA pools one "
            "prompt per row. Pass one example per row: with TRL, SFTConfig(packing=False, padding_free=False)."
        )


def _expand_rows(rows, batch: int, what: str):
    """Repeat per-row values for num_beams / num_return_sequences (generate interleaves the copies)."""
    if len(rows) == batch:
        return rows
    if batch % len(rows) != 0:
        raise ValueError(f"{what} has {len(rows)} rows but the batch has {batch}")
    repeats = batch // len(rows)
    if isinstance(rows, torch.Tensor):
        return rows.repeat_interleave(repeats, dim=0)
    return [name for name in rows for _ in range(repeats)]
