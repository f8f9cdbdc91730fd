"""SST-2 (TSV with header ``sentence<TAB>label``, label 0/1): choices "negative"/"positive"."""

from __future__ import annotations

from pathlib import Path

from .base import Example, Task

LABELS = ["negative", "positive"]


def sst2_prompt(sentence: str) -> str:
    return f"Sentence: {sentence}\nIs the sentiment of this sentence positive or negative?"


class Sst2Task(Task):
    name = "sst2"
    kind = "multiple_choice"
    default_file = "sst2/glue_dev.tsv"
    max_new_tokens = 4

    def _read(self, path: Path) -> list[Example]:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        header = lines[0].split("\t") if lines else []
        for name in ("sentence", "label"):
            if name not in header:
                raise ValueError(f"{path} line 1: missing field {name!r} in the header {header}")
        s_col, l_col = header.index("sentence"), header.index("label")
        examples = []
        for n, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            cols = line.split("\t")
            where = f"{path} line {n}"
            if len(cols) <= max(s_col, l_col):
                raise ValueError(f"{where}: expected {len(header)} tab-separated fields, got {len(cols)}")
            if cols[l_col].strip() not in ("0", "1"):
                raise ValueError(f"{where}: field 'label' must be 0 or 1, got {cols[l_col]!r}")
            label = int(cols[l_col])
            examples.append(
                Example(
                    id=f"sst2/{path.stem}/{len(examples)}",
                    prompt=sst2_prompt(cols[s_col].strip()),
                    answer=LABELS[label],
                    choices=list(LABELS),
                    label=label,
                )
            )
        return examples


SST2 = Sst2Task()
