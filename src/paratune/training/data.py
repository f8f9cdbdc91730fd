"""Training data for PARA: read records, turn them into prompt/response token ids, collate batches.

Every training example carries, besides ``input_ids`` / ``labels``, a boolean ``para_prompt_mask`` that is
True exactly on the prompt tokens (everything before the response, including the chat template's
assistant header / generation prompt) and False on response tokens and padding. PARA's generator pools
hidden states over those positions only; the loss covers response tokens only (``labels == -100`` on the
prompt and on padding).

Pipeline::

    records = load_records(["train.jsonl"])                 # JSON, JSONL or a save_to_disk folder
    train, val = split_validation(records, 0.1, seed=0)       # optional, for bi-level training
    dataset, stats = build_dataset(tokenizer, train, "alpaca", max_length=512)
    collator = ParaDataCollator(tokenizer)                    # HF Trainer compatible

Formats (``format=``):

* ``alpaca``: ``instruction``, optional ``input``, ``output``. Prompt = instruction + ("\\n\\n" + input
  when input is non-empty); response = output.
* ``chat``: ``messages`` = list of ``{"role", "content"}``. The LAST message must be from the assistant and
  is the response; every message before it (system prompt included) is the prompt.
* ``prompt-completion``: ``prompt``, ``completion``.

Tokenisation (``encode_example``): with a chat template the prompt ids are the template rendering of the
prompt messages with ``add_generation_prompt=True`` (alpaca / prompt-completion prompts become a single
user message), and the response ids are what the template renders after that prompt for the full
conversation: the response text followed by the template's end-of-turn token(s). If the template does not
render the prompt as a prefix of the full conversation, the response is tokenised on its own followed by
EOS. Without a chat template the prompt ids are ``tokenizer(prompt)`` and the response ids are
``tokenizer(response, add_special_tokens=False) + [eos]``; a multi-message chat prompt is then rendered as
a plain ``role: content`` transcript ending in ``"assistant: "`` (see ``plain_chat_prompt``).

An example whose prompt alone leaves no room for a response token within ``max_length`` is skipped (and
counted): the prompt is never truncated. An over-long response is truncated at its tail.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch.utils.data import Dataset

from ..jsonl import parse_jsonl

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
FORMATS = ("alpaca", "chat", "prompt-completion")
REQUIRED_FIELDS = {
    "alpaca": ("instruction", "output"),
    "chat": ("messages",),
    "prompt-completion": ("prompt", "completion"),
}
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".jsonlines"}

PathsLike = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]


# --------------------------------------------------------------------------------------------- records


class Record(dict):
    """A plain ``dict`` that also remembers where it came from (``source``, e.g. ``"a.jsonl line 7"``).

    ``load_records`` returns these so that format errors raised later (after a validation split, say)
    still name the file and line. Anywhere a dict is expected, a Record works.
    """

    source: str | None

    def __init__(self, *args: Any, source: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.source = source

    def __reduce__(self):  # keep ``source`` through pickling (DataLoader workers, multiprocessing)
        return (_make_record, (dict(self), self.source))


def _make_record(data: dict, source: str | None) -> Record:
    return Record(data, source=source)


def _as_path_list(paths: PathsLike) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("no data paths given")
    return out


def load_records(paths: PathsLike) -> list[dict]:
    """Read records from one or more paths and concatenate them in order.

    Each path is a JSON file holding a list of objects, a JSONL file (one object per line, blank lines
    skipped), or a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
    (the ``"train"`` split of a DatasetDict is used). The returned items are dicts (``Record``) that also
    carry a ``source`` attribute naming file and line / index for error messages.
    """
    records: list[dict] = []
    for path in _as_path_list(paths):
        if not path.exists():
            raise FileNotFoundError(f"data path {str(path)!r} does not exist")
        if path.is_dir():
            part = _read_hf_folder(path)
        else:
            part = _read_json_file(path)
        if not part:
            raise ValueError(f"data set {str(path)!r} is empty (no records)")
        records.extend(part)
    if not records:  # pragma: no cover - every part is non-empty, kept for clarity
        raise ValueError("the data set is empty (no records)")
    return records


def _read_json_file(path: Path) -> list[Record]:
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise ValueError(f"data file {str(path)!r} is empty (no records)")
    if path.suffix.lower() in _JSONL_SUFFIXES:
        return _parse_jsonl(path, text)
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        return _json_list_to_records(path, data)
    # Not a JSON list: either JSONL saved under another extension, or a single JSON value.
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" or text.count("\n") > 0:
            return _parse_jsonl(path, text)
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if isinstance(data, dict) and path.suffix.lower() != ".json":  # a one-line JSONL file (.txt, no suffix)
        return _parse_jsonl(path, text)
    return _json_list_to_records(path, data)


def _json_list_to_records(path: Path, data: Any) -> list[Record]:
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of objects (or JSONL, one object per line), "
            f"got a JSON {_json_type(data)}"
        )
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(
                f"{path}: expected a JSON list of objects, but record index {i} is a JSON {_json_type(item)}"
            )
        out.append(Record(item, source=f"{path} record index {i}"))
    return out


def _parse_jsonl(path: Path, text: str) -> list[Record]:
    return [Record(item, source=where) for where, item in parse_jsonl(text, path)]


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def _read_hf_folder(path: Path) -> list[Record]:
    is_dict = (path / "dataset_dict.json").is_file()
    is_single = (path / "state.json").is_file() or (path / "dataset_info.json").is_file()
    if not (is_dict or is_single):
        raise ValueError(
            f"{path} is a folder but not a Hugging Face datasets folder saved with save_to_disk "
            "(no dataset_dict.json or state.json); pass a .json / .jsonl file or such a folder"
        )
    import datasets  # imported lazily: it is slow to import and only needed here

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(
                f"{path}: the DatasetDict has no 'train' split (splits: {', '.join(sorted(ds.keys()))}); "
                "save the split you want as its own Dataset or name it 'train'"
            )
        ds = ds["train"]
        where = f"{path} [train]"
    else:
        where = str(path)
    return [Record(row, source=f"{where} row {i}") for i, row in enumerate(ds.to_list())]


def split_validation(records: Sequence[Any], fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministically split ``records`` into ``(train, validation)``.

    ``round(fraction * n)`` items (at least 1 when ``fraction > 0``) go to validation, chosen by a
    ``random.Random(seed)`` permutation; both parts keep the original order. The same records, fraction
    and seed always give the same split. ``fraction == 0`` returns ``(all, [])``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    items = list(records)
    n = len(items)
    if fraction == 0.0:
        return items, []
    n_val = max(1, round(fraction * n))
    if n - n_val < 1:
        raise ValueError(
            f"cannot split {n} record(s) with validation fraction {fraction}: the training part would be empty"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(items) if i not in val_idx]
    val = [r for i, r in enumerate(items) if i in val_idx]
    return train, val


# --------------------------------------------------------------------------------------------- formats


def _normalise_format(format: str) -> str:
    key = str(format).strip().lower().replace("_", "-")
    if key not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; allowed formats: {', '.join(FORMATS)}")
    return key


def _where(record: Mapping, source: str | None) -> str:
    src = source or getattr(record, "source", None)
    return f" ({src})" if src else ""


def _field(record: Mapping, name: str, fmt: str, source: str | None, *, optional: bool = False) -> Any:
    if name not in record or (record[name] is None and not optional):
        if optional:
            return None
        present = ", ".join(sorted(map(str, record.keys()))) or "none"
        raise ValueError(
            f"record is missing field {name!r} required by format {fmt!r}{_where(record, source)}; "
            f"fields present: {present}"
        )
    value = record[name]
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(
            f"field {name!r} must be a string, got {type(value).__name__}{_where(record, source)}"
        )
    return value


def split_prompt_response(record: Mapping, format: str, source: str | None = None) -> tuple[list[dict], str]:
    """Return ``(prompt_messages, response_text)`` for one record.

    ``prompt_messages`` is the chat prefix fed to the template with ``add_generation_prompt=True``: a
    single user message for alpaca / prompt-completion, the whole prefix for chat. Raises ValueError
    naming the missing / bad field and the record's source.
    """
    fmt = _normalise_format(format)
    if not isinstance(record, Mapping):
        raise ValueError(f"record must be a JSON object, got {type(record).__name__}{_where({}, source)}")
    if fmt == "alpaca":
        instruction = _field(record, "instruction", fmt, source)
        extra = _field(record, "input", fmt, source, optional=True)
        output = _field(record, "output", fmt, source)
        prompt = instruction + ("\n\n" + extra if extra and extra.strip() else "")
        if not prompt.strip():
            raise ValueError(f"field 'instruction' is empty{_where(record, source)}")
        return [{"role": "user", "content": prompt}], output
    if fmt == "prompt-completion":
        prompt = _field(record, "prompt", fmt, source)
        completion = _field(record, "completion", fmt, source)
        if not prompt.strip():
            raise ValueError(f"field 'prompt' is empty{_where(record, source)}")
        return [{"role": "user", "content": prompt}], completion
    # chat
    if "messages" not in record or record["messages"] is None:
        present = ", ".join(sorted(map(str, record.keys()))) or "none"
        raise ValueError(
            f"record is missing field 'messages' required by format 'chat'{_where(record, source)}; "
            f"fields present: {present}"
        )
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"field 'messages' must be a non-empty list of messages{_where(record, source)}")
    clean = []
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{j}] must be an object with 'role' and 'content'{_where(record, source)}")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"messages[{j}] is missing field {key!r}{_where(record, source)}")
            if not isinstance(m[key], str):
                raise ValueError(
                    f"messages[{j}].{key} must be a string, got {type(m[key]).__name__}{_where(record, source)}"
                )
        clean.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in clean):
        raise ValueError(f"chat record has no assistant message to train on{_where(record, source)}")
    if clean[-1]["role"] != "assistant":
        raise ValueError(
            f"the last message of a chat record must be from the assistant (it is the response), "
            f"got role {clean[-1]['role']!r}{_where(record, source)}"
        )
    if len(clean) < 2:
        raise ValueError(
            f"chat record has no prompt: it needs at least one message before the final assistant message"
            f"{_where(record, source)}"
        )
    return clean[:-1], clean[-1]["content"]


def plain_chat_prompt(messages: Sequence[Mapping]) -> str:
    """Prompt text for a tokenizer WITHOUT a chat template.

    A single user message is its content verbatim (as for alpaca / prompt-completion); anything else is
    a ``"role: content"`` transcript, one message per paragraph, ending with ``"assistant: "``.
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant: "


# ----------------------------------------------------------------------------------------- tokenising


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _to_ids(out: Any) -> list[int]:
    """apply_chat_template / tokenizer outputs differ across versions: list, BatchEncoding, tensor."""
    if isinstance(out, Mapping):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):  # batched
        out = out[0]
    return [int(i) for i in out]


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token so responses can be terminated")
    return int(eos)


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _render(tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool, source: str | None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # templates raise on e.g. non-alternating roles
        raise ValueError(f"the chat template failed on this record{_where({}, source)}: {e}") from e


def _template_ids(tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool, source: str | None) -> list[int]:
    try:
        # return_dict=False: a plain list of ids (transformers 5 otherwise returns a BatchEncoding; _to_ids
        # copes with either).
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
    except Exception as e:  # templates raise on e.g. non-alternating roles
        raise ValueError(f"the chat template failed on this record{_where({}, source)}: {e}") from e
    return _to_ids(out)


def _template_prompt_response_ids(
    tokenizer: Any, prompt_messages: list[dict], response: str, source: str | None
) -> tuple[list[int], list[int]]:
    prompt_ids = _template_ids(tokenizer, prompt_messages, add_generation_prompt=True, source=source)
    full_messages = list(prompt_messages) + [{"role": "assistant", "content": response}]
    prompt_text = _render(tokenizer, prompt_messages, add_generation_prompt=True, source=source)
    full_text = _render(tokenizer, full_messages, add_generation_prompt=False, source=source)
    eos = _eos_id(tokenizer)
    if not full_text.startswith(prompt_text):
        # The template renders the generation prompt differently from an assistant turn: no reliable way
        # to find the end-of-turn marker, so terminate the response with EOS.
        logger.debug("chat template: prompt is not a prefix of the full rendering; using response + eos")
        return prompt_ids, _to_ids(tokenizer(response, add_special_tokens=False)) + [eos]
    full_ids = _template_ids(tokenizer, full_messages, add_generation_prompt=False, source=source)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        response_ids = full_ids[len(prompt_ids) :]
    else:  # token boundary merged across prompt/response: tokenise the rendered suffix on its own
        response_ids = _to_ids(tokenizer(full_text[len(prompt_text) :], add_special_tokens=False))
    if not (set(response_ids) & (_special_ids(tokenizer) | {eos})):
        # The template emits no end-of-turn token after the response: add EOS so the model learns to stop.
        response_ids = response_ids + [eos]
    return prompt_ids, response_ids


def encode_example(
    tokenizer: Any,
    record: Mapping,
    format: str,
    max_length: int,
    source: str | None = None,
) -> dict | None:
    """Tokenise one record into a PARA training example, or return None when the prompt is too long.

    Returns ``{"input_ids", "labels", "para_prompt_mask", "n_prompt_tokens", "n_response_tokens",
    "truncated"}`` where ``labels`` is -100 on the prompt and ``para_prompt_mask`` (list of bools) is True
    exactly on the prompt. None means the prompt alone needs ``>= max_length`` tokens (no room for a single
    response token); the prompt is never truncated. A too-long response is cut at its tail
    (``truncated=True``). ``source`` (file and line) is used in error messages; it defaults to the
    record's own ``source`` when it is a ``Record``.
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    source = source or getattr(record, "source", None)
    prompt_messages, response = split_prompt_response(record, format, source)
    if has_chat_template(tokenizer):
        prompt_ids, response_ids = _template_prompt_response_ids(tokenizer, prompt_messages, response, source)
    else:
        prompt_ids = _to_ids(tokenizer(plain_chat_prompt(prompt_messages)))
        response_ids = _to_ids(tokenizer(response, add_special_tokens=False)) + [_eos_id(tokenizer)]
    if not prompt_ids:
        raise ValueError(f"the prompt tokenised to zero tokens{_where(record, source)}")
    if len(prompt_ids) >= max_length:
        return None
    truncated = len(prompt_ids) + len(response_ids) > max_length
    if truncated:
        response_ids = response_ids[: max_length - len(prompt_ids)]
    n_p, n_r = len(prompt_ids), len(response_ids)
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * n_p + list(response_ids),
        "para_prompt_mask": [True] * n_p + [False] * n_r,
        "n_prompt_tokens": n_p,
        "n_response_tokens": n_r,
        "truncated": truncated,
    }


# -------------------------------------------------------------------------------------------- dataset


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


_EXAMPLE_KEYS = ("input_ids", "labels", "para_prompt_mask")


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
        examples.append({k: ex[k] for k in _EXAMPLE_KEYS})
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


# ------------------------------------------------------------------------------------------- collator


class ParaDataCollator:
    """Right-pad examples into a batch for the HF Trainer or a plain DataLoader.

    Returns ``input_ids`` (padded with the tokenizer's pad id, else its eos id), ``attention_mask``
    (1 on tokens, 0 on padding), ``labels`` (-100 on padding) and ``para_prompt_mask`` (bool, False on
    padding). Extra keys in the features are ignored. ``pad_to_multiple_of`` rounds the padded length up.
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None):
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        if isinstance(pad, (list, tuple)):
            pad = pad[0] if pad else None
        if pad is None:
            raise ValueError("the tokenizer has neither a pad_token nor an eos_token to pad with")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.tokenizer = tokenizer
        self.pad_token_id = int(pad)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        rows = []
        for j, f in enumerate(features):
            missing = [k for k in _EXAMPLE_KEYS if k not in f]
            if missing:
                raise KeyError(f"feature {j} is missing {', '.join(missing)} (expected {', '.join(_EXAMPLE_KEYS)})")
            ids = _as_list(f["input_ids"])
            labels = _as_list(f["labels"])
            mask = [bool(x) for x in _as_list(f["para_prompt_mask"])]
            if not (len(ids) == len(labels) == len(mask)):
                raise ValueError(
                    f"feature {j}: input_ids, labels and para_prompt_mask differ in length "
                    f"({len(ids)}, {len(labels)}, {len(mask)})"
                )
            rows.append((ids, labels, mask))
        length = max(len(r[0]) for r in rows)
        m = self.pad_to_multiple_of
        if m:
            length = ((length + m - 1) // m) * m
        b = len(rows)
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, length), dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        prompt_mask = torch.zeros((b, length), dtype=torch.bool)
        for i, (ids, lab, pm) in enumerate(rows):
            n = len(ids)
            input_ids[i, :n] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, :n] = 1
            labels[i, :n] = torch.tensor(lab, dtype=torch.long)
            prompt_mask[i, :n] = torch.tensor(pm, dtype=torch.bool)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "para_prompt_mask": prompt_mask,
        }


def _as_list(x: Any) -> list:
    if hasattr(x, "tolist"):
        return x.tolist()
    return list(x)
