"""Training utilities for PARA."""

from paratune.training.data import (
    FORMATS,
    IGNORE_INDEX,
    DataStats,
    ParaDataCollator,
    ParaDataset,
    Record,
    build_dataset,
    encode_example,
    has_chat_template,
    load_records,
    plain_chat_prompt,
    split_prompt_response,
    split_validation,
)

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "DataStats",
    "ParaDataCollator",
    "ParaDataset",
    "Record",
    "build_dataset",
    "encode_example",
    "has_chat_template",
    "load_records",
    "plain_chat_prompt",
    "split_prompt_response",
    "split_validation",
]

# The training API behind ``paratune train`` (HF Trainer based) and its bi-level variant.
from paratune.training.bilevel import BilevelTrainer, activation_parameters, is_activation_parameter  # noqa: E402
from paratune.training.config import METHODS, TrainConfig  # noqa: E402
from paratune.training.trainer import (  # noqa: E402
    MetricsCallback,
    TrainResult,
    build_peft_model,
    last_checkpoint,
    train,
)

__all__ += [
    "METHODS",
    "BilevelTrainer",
    "MetricsCallback",
    "TrainConfig",
    "TrainResult",
    "activation_parameters",
    "build_peft_model",
    "is_activation_parameter",
    "last_checkpoint",
    "train",
]
