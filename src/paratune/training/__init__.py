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
