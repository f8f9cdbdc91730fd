"""BoolQ in the LLM-Adapters alpaca format (question only, no passage): choices are the two full outputs
"the correct answer is true" / "the correct answer is false"."""

from __future__ import annotations

from .multiple_choice import AlpacaChoiceTask

BOOLQ = AlpacaChoiceTask("boolq", "boolq/test.json", ("true", "false"))
