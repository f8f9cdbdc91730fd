"""``train(config)``: the API behind ``paratune train``.

Load the backbone, wrap it with the adapter of ``config.method`` (PARA, or the PEFT baselines LoRA, IA3,
prompt tuning), tokenise the data (``data.py``) and train with the Hugging Face ``transformers.Trainer``, so
``torchrun`` / ``accelerate launch`` work unchanged. What lands in ``config.output``:

* ``checkpoint-<step>/``: Trainer checkpoints every ``save_steps`` (adapter, optimizer, LR scheduler, RNG
  states, trainer state with the data position; with ``bilevel`` also ``activation_optimizer.pt``). The two
  newest are kept. ``resume=True`` continues from the newest *complete* one (its ``trainer_state.json`` is
  written last) and reproduces an uninterrupted run with the same seed.
* ``metrics.jsonl``: one JSON object per log event (``step``, ``epoch``, ``loss``, ``lr``, ``grad_norm``,
  ``tokens_per_s`` over non-padding input tokens since the previous event, ``eval_loss``, ...). On resume,
  lines past the checkpoint's step are dropped before new ones are appended.
* the final adapter in PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
  ``PeftModel.from_pretrained``), the tokenizer, and ``train_config.json``. They are written to a temporary
  folder first and moved in with ``adapter_config.json`` last, so a half-written adapter never looks complete.
* ``runs/``: TensorBoard events, only when ``tensorboard`` (or ``tensorboardX``) is installed.

PARA batches carry ``para_prompt_mask`` (``remove_unused_columns=False`` lets it reach the model); the
baselines get the same batches without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .config import TrainConfig
from .data import DataStats, ParaDataCollator, build_dataset, load_records, split_validation

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"
SAVE_TOTAL_LIMIT = 2
# Cumulative counters the Trainer adds to every log; step lines carry tokens_per_s instead.
_SKIPPED_LOG_KEYS = ("num_input_tokens_seen", "train_runtime", "train_tokens_per_second")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_FFN_INPUT_MODULES = ("down_proj", "fc2", "w2", "dense_4h_to_h")  # IA3 scales these modules' inputs


@dataclass
class TrainResult:
    output_dir: str
    trainable_params: int
    final_loss: Optional[float]  # the last logged training loss (None when no step was logged)
    steps: int  # optimizer steps done in total (including those before a resume)
    stats: DataStats  # the training split's data statistics


def train(config: TrainConfig, backbone: Any = None, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Train an adapter as ``config`` says and save it to ``config.output``.

    ``backbone`` is an already loaded ``paratune.models.Backbone`` or a ``(model, tokenizer)`` pair (tests,
    notebooks; the model is wrapped in place by PEFT); by default ``paratune.models.load_backbone(config.model)``
    loads it. Extra ``callbacks`` are handed to the Trainer.

    Raises ValueError for bad settings or data (empty data set, every record too long, an ``output`` that
    already holds a run while ``resume`` is False, LoRA/IA3 ``targets`` missing from the model) and
    FileNotFoundError for missing data paths. ``bf16`` is autocast mixed precision: weights stay in the
    backbone's dtype (fp32 from ``load_backbone``).
    """
    config.validate()
    _refuse_lone_accelerate_cpu_process()
    cfg = config.resolved()
    output = Path(cfg.output)
    checkpoint = _resume_checkpoint(output, cfg.resume)

    model, tokenizer = _unpack_backbone(backbone, cfg.model)
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token

    records = load_records(cfg.data)
    val_dataset = None
    if cfg.bilevel:
        records, val_records = split_validation(records, cfg.bilevel_val_fraction, seed=cfg.seed)
        val_dataset, _ = build_dataset(tokenizer, val_records, cfg.format, cfg.max_length)
    train_dataset, stats = build_dataset(tokenizer, records, cfg.format, cfg.max_length)
    logger.info("training data: %s", stats.summary())
    eval_dataset = None
    if cfg.eval_data:
        eval_dataset, eval_stats = build_dataset(tokenizer, load_records(cfg.eval_data), cfg.format, cfg.max_length)
        logger.info("evaluation data: %s", eval_stats.summary())

    set_seed(cfg.seed)  # adapter initialisation
    peft_model = build_peft_model(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)

    collator = ParaDataCollator(tokenizer) if cfg.method == "para" else _WithoutPromptMask(tokenizer)
    args = _training_arguments(cfg, output)
    trainer_kwargs = dict(
        model=peft_model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        callbacks=[MetricsCallback(output / METRICS_FILE), *callbacks],
    )
    if cfg.bilevel:
        from .bilevel import BilevelTrainer

        trainer: Trainer = BilevelTrainer(**trainer_kwargs, val_dataset=val_dataset, bilevel_lr=cfg.bilevel_lr)
    else:
        trainer = Trainer(**trainer_kwargs)

    trainer.train(resume_from_checkpoint=checkpoint)
    step = trainer.state.global_step
    evaluated = any("eval_loss" in e and e.get("step") == step for e in trainer.state.log_history)
    if eval_dataset is not None and not evaluated:
        trainer.evaluate()  # a final evaluation, unless eval_steps just did it
    if trainer.is_world_process_zero():
        _save_final(trainer.model, tokenizer, cfg, output)
    if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainResult(
        output_dir=str(output),
        trainable_params=trainable,
        final_loss=losses[-1] if losses else None,
        steps=trainer.state.global_step,
        stats=stats,
    )


def _refuse_lone_accelerate_cpu_process() -> None:
    """``accelerate launch --cpu --num_processes N`` (N > 1) without an MPI host file starts ONE process (accelerate
    1.x runs several CPU processes only through mpirun) that trains alone with the per-device batch size: a
    different global batch than asked for, silently. Its trace: accelerate's CPU flag and a MASTER_ADDR, but no
    WORLD_SIZE (torchrun / accelerate's multi-process launcher) and no MPI world size."""
    env = os.environ
    mpi = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_RANK")
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env and "WORLD_SIZE" not in env \
            and not any(name in env for name in mpi):
        raise ValueError(
            "accelerate launch --cpu with --num_processes > 1 started a single process (accelerate runs several CPU "
            "processes only through MPI, with --mpirun_hostfile), so training would silently use one process's "
            "batch. For several CPU processes (DDP over gloo) run `torchrun --nproc_per_node N -- paratune train "
            "...` or, on a machine without GPUs, `accelerate launch --multi_gpu --num_processes N paratune train "
            "...`; for one process drop --num_processes"
        )


# ------------------------------------------------------------------------------------------- the model


def build_peft_model(model: torch.nn.Module, config: TrainConfig):
    """Wrap ``model`` (in place, as PEFT does) with a fresh trainable adapter for ``config.method``; method
    defaults (``r``, ``pooling``, ...) are filled in as ``TrainConfig.resolved`` says."""
    import peft

    from ..para import ParaConfig

    config = config.resolved()
    method = config.method
    if method == "para":
        kwargs = {"targets": config.targets} if config.targets else {}
        peft_config = ParaConfig(
            r=config.r, pooling=config.pooling, activation=config.activation, task_type="CAUSAL_LM", **kwargs
        )
    elif method == "lora":
        targets = config.targets or _default_targets(model, ["q_proj", "v_proj"])
        peft_config = peft.LoraConfig(
            r=config.r, lora_alpha=2 * config.r, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM"
        )
    elif method == "ia3":
        targets = config.targets or _default_targets(model, ["q_proj", "v_proj", "down_proj"])
        feedforward = None if targets is None else [t for t in targets if t.split(".")[-1] in _FFN_INPUT_MODULES]
        peft_config = peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")
    elif method == "prompt-tuning":
        peft_config = peft.PromptTuningConfig(num_virtual_tokens=config.num_virtual_tokens, task_type="CAUSAL_LM")
    else:  # pragma: no cover - TrainConfig.validate rejects it first
        raise ValueError(f"unknown method {method!r}")
    try:
        return peft.get_peft_model(model, peft_config)
    except ValueError as error:
        if config.targets and method in ("lora", "ia3"):
            raise ValueError(f"targets {config.targets} do not fit this model: {error}") from error
        raise


def _default_targets(model: torch.nn.Module, wanted: list[str]) -> Optional[list[str]]:
    """``wanted`` when the model has all of those modules (Llama-like models), else None: PEFT's default for
    the architecture (e.g. ``c_attn`` for GPT-2)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return list(wanted) if all(w in names for w in wanted) else None


def _unpack_backbone(backbone: Any, name: str):
    if backbone is None:
        from ..models import load_backbone

        backbone = load_backbone(name)
    if hasattr(backbone, "model") and hasattr(backbone, "tokenizer"):
        return backbone.model, backbone.tokenizer
    if isinstance(backbone, (tuple, list)) and len(backbone) == 2:
        return backbone[0], backbone[1]
    raise TypeError(
        f"backbone must be a paratune.models.Backbone or a (model, tokenizer) pair, got {type(backbone).__name__}"
    )


class _WithoutPromptMask(ParaDataCollator):
    """The PARA collator minus ``para_prompt_mask``: the baselines must not receive it."""

    def __call__(self, features):
        batch = super().__call__(features)
        batch.pop("para_prompt_mask")
        return batch


# ---------------------------------------------------------------------------------------- the Trainer


def _training_arguments(cfg: TrainConfig, output: Path) -> TrainingArguments:
    from transformers.integrations import is_tensorboard_available

    evaluate = bool(cfg.eval_data)
    return TrainingArguments(
        # Without an accelerator the Trainer needs use_cpu=True for bf16 (CPU autocast) and for several
        # processes (torchrun on CPU: DDP over gloo); on a CPU-only machine it changes nothing else.
        use_cpu=not _has_accelerator(),
        dataloader_pin_memory=_has_accelerator(),
        output_dir=str(output),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a share of all steps
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=SAVE_TOTAL_LIMIT,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=(cfg.eval_steps or cfg.save_steps) if evaluate else None,
        prediction_loss_only=True,  # never gather (batch x length x vocab) logits
        seed=cfg.seed,
        bf16=cfg.bf16,
        **_checkpointing_arguments(cfg.gradient_checkpointing),
        remove_unused_columns=False,  # keep para_prompt_mask
        label_names=["labels"],
        include_num_input_tokens_seen="non_padding",
        report_to=["tensorboard"] if is_tensorboard_available() else "none",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every adapter parameter takes part in every forward
    )


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps is not None and mps.is_available())


def _checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """transformers 5.x renamed ``gradient_checkpointing*`` to ``activation_checkpointing*`` (old names warn).
    Non-reentrant checkpointing: PARA's generators run in hooks outside the checkpointed layer forward."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {prefix: enabled, f"{prefix}_kwargs": {"use_reentrant": False}}


class MetricsCallback(TrainerCallback):
    """Appends one JSON line per log event to ``path`` (main process only); makes the Trainer log the last
    step too, so the final loss is always recorded."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a resumed run: drop what was logged after the checkpoint
            kept = [line for line in self.path.read_text().splitlines() if _line_step(line) <= state.global_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:  # always log the last step (on every rank: logging gathers)
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record: dict[str, Any] = {"step": state.global_step}
        if state.epoch is not None:
            record["epoch"] = state.epoch
        for key, value in logs.items():
            if (key in _SKIPPED_LOG_KEYS and "loss" in logs) or key == "epoch" or not isinstance(value, (int, float)):
                continue
            record["lr" if key == "learning_rate" else key] = value if math.isfinite(value) else None
        if "loss" in logs:
            now = time.perf_counter()
            if self._last_time is not None and now > self._last_time:
                record["tokens_per_s"] = (state.num_input_tokens_seen - self._last_tokens) / (now - self._last_time)
            self._last_time, self._last_tokens = now, state.num_input_tokens_seen
        record["time"] = time.time()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _line_step(line: str) -> float:
    try:
        return json.loads(line).get("step", math.inf)
    except (ValueError, AttributeError):
        return math.inf


# ------------------------------------------------------------------------------ checkpoints and output


def last_checkpoint(output: str | os.PathLike) -> Optional[Path]:
    """The newest complete ``checkpoint-<step>`` folder in ``output`` (one with ``trainer_state.json``, which
    the Trainer writes last), or None."""
    output = Path(output)
    if not output.is_dir():
        return None
    found = []
    for child in output.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def _resume_checkpoint(output: Path, resume: bool) -> Optional[str]:
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {str(output)!r} exists and is not a folder")
    checkpoint = last_checkpoint(output)
    if resume:
        if checkpoint is None:
            logger.warning("resume=True but %s holds no complete checkpoint: training from the start", output)
            return None
        logger.info("resuming from %s", checkpoint)
        return str(checkpoint)
    leftovers = [c.name for c in output.iterdir() if _CHECKPOINT_RE.match(c.name)] if output.is_dir() else []
    if leftovers or (output / "adapter_config.json").exists():
        raise ValueError(
            f"output {str(output)!r} already holds a training run ({', '.join(sorted(leftovers)) or 'an adapter'}); "
            "pass resume=True (--resume) to continue it or choose another folder"
        )
    return None


def _save_final(peft_model, tokenizer, cfg: TrainConfig, output: Path) -> None:
    """save_pretrained into a temporary folder inside ``output``, then move the files in, adapter_config.json
    (what marks a folder as an adapter) last."""
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob(".final-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=output))
    try:
        peft_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        marker = output / "adapter_config.json"
        if marker.exists():
            marker.unlink()  # an older adapter stops looking complete while it is replaced
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == "adapter_config.json")
        for src in files:
            dst = output / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
