"""Bi-level training of PARA's rational activations (first-order, DARTS style).

The papers train the rational activation coefficients on a held-out validation split and every other
parameter on the training split, alternating. ``BilevelTrainer`` does, for every optimizer step of the
Hugging Face Trainer:

1. the usual step of the *main* optimizer on training batches (gradient accumulation, clipping and the LR
   schedule as configured). The activation coefficients are not in this optimizer, and their gradients from
   the training batches are discarded right after each backward, so they neither move with the training data
   nor count in the gradient-norm clipping;
2. one step of the *activation* optimizer (AdamW, constant ``bilevel_lr``, no weight decay, no clipping) on
   one validation batch, with gradients taken for the activation coefficients only
   (``torch.autograd.grad``, so no other parameter's ``.grad`` is touched).

Validation batch ``k`` (the batch used after optimizer step ``k``) is a pure function of ``k``, the process
rank and the seed, so resuming from a checkpoint replays the same validation batches without saving an
iterator. The activation optimizer's state is saved next to the main one as ``activation_optimizer.pt`` in
every checkpoint and restored on resume.

Limits: the validation forward runs on the unwrapped model and the activation gradients are averaged across
processes with ``torch.distributed.all_reduce``; that covers one device and DDP (``torchrun``), not FSDP or
DeepSpeed ZeRO-3 (sharded parameters), for which ``BilevelTrainer`` raises.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

logger = logging.getLogger(__name__)

ACTIVATION_OPTIMIZER_NAME = "activation_optimizer.pt"
_ACTIVATION_MARKERS = (".activation.numerator", ".activation.denominator")


def is_activation_parameter(name: str) -> bool:
    """True for a rational activation coefficient of a PARA generator (``...para.generators.<a>.activation.*``)."""
    return ".para.generators." in name and any(marker in name for marker in _ACTIVATION_MARKERS)


def activation_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable rational activation coefficients of ``model``, in ``named_parameters`` order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and is_activation_parameter(n)]


class _ActivationStep(TrainerCallback):
    """Runs the activation step right after each step of the main optimizer."""

    def __init__(self, trainer: "BilevelTrainer"):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.activation_step()


class BilevelTrainer(Trainer):
    """A ``transformers.Trainer`` that alternates main steps on training batches with activation-coefficient
    steps on validation batches (see the module docstring). ``val_dataset`` is collated with the trainer's
    ``data_collator``; each validation batch holds ``per_device_train_batch_size`` examples."""

    def __init__(self, *args, val_dataset, bilevel_lr: float = 1e-6, **kwargs):
        super().__init__(*args, **kwargs)
        if val_dataset is None or len(val_dataset) == 0:
            raise ValueError("bilevel training needs a non-empty validation split (val_dataset)")
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ValueError("bilevel training supports one device and DDP only, not FSDP or DeepSpeed")
        self.val_dataset = val_dataset
        self.bilevel_lr = bilevel_lr
        self.activation_optimizer: torch.optim.Optimizer | None = None
        named = activation_parameters(self.model)
        if not named:
            raise ValueError(
                "bilevel training found no trainable rational activation coefficients "
                "(parameters named '...para.generators.<adapter>.activation.{numerator,denominator}'); "
                "it needs a PARA adapter with activation='rational'"
            )
        self._activation_params = [p for _, p in named]
        self._val_loss_sum = 0.0
        self._val_loss_count = 0
        self.add_callback(_ActivationStep(self))

    # ----- optimizers -------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        """The Trainer's optimizer over every trainable parameter except the activation coefficients, plus a
        separate AdamW over the coefficients (``self.activation_optimizer``)."""
        if self.optimizer is None:
            # Hide the coefficients from the stock optimizer builder (which keeps param groups, weight decay
            # rules and the configured optimizer class), then give them back their gradients.
            act_params = self._activation_params
            for p in act_params:
                p.requires_grad_(False)
            try:
                super().create_optimizer(model)
            finally:
                for p in act_params:
                    p.requires_grad_(True)
        if self.activation_optimizer is None:
            self.activation_optimizer = torch.optim.AdamW(self._activation_params, lr=self.bilevel_lr, weight_decay=0.0)
        return self.optimizer

    # ----- the two steps ----------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        for p in self._activation_params:  # the coefficients learn from validation batches only
            p.grad = None
        return loss

    def validation_batch(self, step: int) -> dict:
        """The collated validation batch used after optimizer step ``step`` (0-based) on this process: the
        validation set is walked in a fresh seeded permutation per pass, ranks taking interleaved batches."""
        n = len(self.val_dataset)
        size = min(self.args.per_device_train_batch_size, n)
        per_pass = math.ceil(n / size)
        index = step * self.args.world_size + self.args.process_index
        pass_, within = divmod(index, per_pass)
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + pass_)
        order = torch.randperm(n, generator=generator).tolist()
        rows = order[within * size:(within + 1) * size]
        return self.data_collator([self.val_dataset[i] for i in rows])

    def activation_step(self) -> torch.Tensor:
        """One step of the activation optimizer on the next validation batch; returns its loss."""
        batch = self._prepare_inputs(self.validation_batch(self.state.global_step))
        model = self.model
        was_training = model.training
        model.train()
        with torch.enable_grad(), self.compute_loss_context_manager(), self.accelerator.autocast():
            loss = self.compute_loss(model, batch)
            grads = torch.autograd.grad(loss, self._activation_params, allow_unused=True)
        if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self._activation_params, grads)]
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.args.world_size
            grads = list(torch.split(flat, [g.numel() for g in grads]))
        for p, g in zip(self._activation_params, grads):
            p.grad = None if g is None else g.reshape(p.shape).to(p.dtype)
        self.activation_optimizer.step()
        for p in self._activation_params:
            p.grad = None
        model.train(was_training)
        loss = loss.detach()
        self._val_loss_sum += float(loss)
        self._val_loss_count += 1
        return loss

    def log(self, logs, start_time=None):
        if "loss" in logs and self._val_loss_count:
            logs["bilevel_val_loss"] = self._val_loss_sum / self._val_loss_count
            self._val_loss_sum, self._val_loss_count = 0.0, 0
        super().log(logs, start_time)

    # ----- checkpoints ------------------------------------------------------------------------------------
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save and self.activation_optimizer is not None:
            torch.save(self.activation_optimizer.state_dict(), os.path.join(output_dir, ACTIVATION_OPTIMIZER_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, ACTIVATION_OPTIMIZER_NAME)
        if not os.path.isfile(path):
            logger.warning(
                "checkpoint %s has no %s (not a bilevel run?): the activation optimizer starts fresh",
                checkpoint, ACTIVATION_OPTIMIZER_NAME,
            )
            return
        self.activation_optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
