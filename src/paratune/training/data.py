"""Training data for PARA: read records, turn them into prompt/response token ids, collate batches.

Pipeline::

    records = load_records(["train.jsonl"])                 # JSON, JSONL or a save_to_disk folder
    train, val = split_validation(records, 0.1, seed=0)       # optional, for bi-level training
    dataset, stats = build_dataset(tokenizer, train, "alpaca", max_length=512)
    collator = ParaDataCollator(tokenizer)                    # HF Trainer compatible

The pieces live by concept: ``records.py`` (reading files, ``Record``, ``split_validation``), ``formats.py``
(the record formats and their tokenisation, ``encode_example``), ``collator.py`` (``ParaDataCollator``); this
module builds the data set (``build_dataset``, ``DataStats``) and re-exports the rest, so
``from paratune.training.data import X`` keeps working for every name it offered before the split.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch.utils.data import Dataset

from .collator import ParaDataCollator
from .formats import (
    EXAMPLE_KEYS,
    FORMATS,
    IGNORE_INDEX,
    RAW_TEXT_FORMATS,
    REQUIRED_FIELDS,
    _normalise_format,
    encode_example,
    encode_raw_pair,
    has_chat_template,
    plain_chat_prompt,
    split_prompt_response,
)
from .records import PathsLike, Record, _make_record, load_records, split_validation

__all__ = [
    "EXAMPLE_KEYS",
    "FORMATS",
    "IGNORE_INDEX",
    "RAW_TEXT_FORMATS",
    "REQUIRED_FIELDS",
    "DataStats",
    "ParaDataCollator",
    "ParaDataset",
    "PathsLike",
    "Record",
    "build_dataset",
    "encode_example",
    "encode_raw_pair",
    "has_chat_template",
    "load_records",
    "plain_chat_prompt",
    "split_prompt_response",
    "split_validation",
]
_ = _make_record  # pickles of Record made before the split name paratune.training.data._make_record

logger = logging.getLogger(__name__)


@dataclass
class DataStats:
    """What ``build_dataset`` did with the records."""

    n_records: int = 0  # records read
    n_examples: int = 0  # examples kept
    n_skipped_too_long: int = 0  # prompt alone did not fit in max_length
    n_truncated: int = 0  # response tail cut to fit max_length
    n_tokens: int = 0  # tokens over all kept examples (prompt + response)
    n_prompt_tokens: int = 0
    n_response_tokens: int = 0  # tokens that carry loss
    max_length: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.n_examples}/{self.n_records} examples kept, {self.n_skipped_too_long} skipped "
            f"(prompt > max_length={self.max_length}), {self.n_truncated} truncated, {self.n_tokens} tokens "
            f"({self.n_response_tokens} response)"
        )


class ParaDataset(Dataset):
    """A list of encoded examples (``input_ids``, ``labels``, ``para_prompt_mask`` as Python lists)."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]

    def __iter__(self):
        return iter(self.examples)


EXAMPLE_KEYS = ("input_ids", "labels", "para_prompt_mask")


def build_dataset(
    tokenizer: Any,
    paths: PathsLike | Sequence[Mapping],
    format: str,
    max_length: int,
) -> tuple[ParaDataset, DataStats]:
    """Read (``paths``: file(s) / folder(s)) or take (a list of record dicts) records and encode them.

    Returns a ``ParaDataset`` of ``{"input_ids", "labels", "para_prompt_mask"}`` examples and a
    ``DataStats``. Logs a warning when records were skipped because their prompt does not fit in
    ``max_length``; raises ValueError when every record was skipped.
    """
    fmt = _normalise_format(format)
    if isinstance(paths, (str, os.PathLike)) or (
        isinstance(paths, Sequence) and paths and not isinstance(paths[0], Mapping)
    ):
        records = load_records(paths)  # type: ignore[arg-type]
    else:
        records = list(paths)  # type: ignore[arg-type]
        if not records:
            raise ValueError("the data set is empty (no records)")
    stats = DataStats(n_records=len(records), max_length=max_length)
    examples: list[dict] = []
    first_skipped = None
    for i, record in enumerate(records):
        source = getattr(record, "source", None) or f"record index {i}"
        ex = encode_example(tokenizer, record, fmt, max_length, source=source)
        if ex is None:
            stats.n_skipped_too_long += 1
            first_skipped = first_skipped or source
            continue
        stats.n_truncated += int(ex["truncated"])
        stats.n_prompt_tokens += ex["n_prompt_tokens"]
        stats.n_response_tokens += ex["n_response_tokens"]
        examples.append({k: ex[k] for k in EXAMPLE_KEYS})
    stats.n_examples = len(examples)
    stats.n_tokens = stats.n_prompt_tokens + stats.n_response_tokens
    if not examples:
        raise ValueError(
            f"all {stats.n_records} records were skipped: every prompt needs at least max_length={max_length} "
            "tokens, leaving no room for the response; raise max_length or shorten the prompts"
        )
    if stats.n_skipped_too_long:
        logger.warning(
            "skipped %d of %d records whose prompt alone does not fit in max_length=%d tokens "
            "(first: %s); raise max_length to keep them",
            stats.n_skipped_too_long,
            stats.n_records,
            max_length,
            first_skipped,
        )
    if stats.n_truncated:
        logger.info(
            "truncated the response of %d of %d records to fit max_length=%d",
            stats.n_truncated,
            stats.n_records,
            max_length,
        )
    return ParaDataset(examples), stats
