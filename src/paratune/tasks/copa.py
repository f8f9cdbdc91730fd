"""SuperGLUE COPA (JSONL: premise, choice1, choice2, question "cause"/"effect", label 0/1, idx).

Prompt: "Premise: <premise>\\nWhat was the cause?" (or "What happened as a result?"); choices are the two
alternative sentences.
"""

from __future__ import annotations

from pathlib import Path

from .base import Example, Task, read_jsonl, require

QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}


class CopaTask(Task):
    name = "copa"
    kind = "multiple_choice"
    default_file = "superglue/COPA/val.jsonl"
    max_new_tokens = 32

    def _read(self, path: Path) -> list[Example]:
        examples = []
        for where, rec in read_jsonl(path):
            premise = require(rec, "premise", where)
            choices = [require(rec, "choice1", where), require(rec, "choice2", where)]
            question = require(rec, "question", where)
            if question not in QUESTIONS:
                raise ValueError(f"{where}: field 'question' must be 'cause' or 'effect', got {question!r}")
            label = require(rec, "label", where)
            if label not in (0, 1):
                raise ValueError(f"{where}: field 'label' must be 0 or 1, got {label!r}")
            examples.append(
                Example(
                    id=f"copa/{path.stem}/{rec.get('idx', len(examples))}",
                    prompt=f"Premise: {premise}\n{QUESTIONS[question]}",
                    answer=choices[label],
                    choices=choices,
                    label=label,
                    meta={"question": question},
                )
            )
        return examples


COPA = CopaTask()
