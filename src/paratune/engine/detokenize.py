"""Incremental detokenisation and stop strings: O(1) work per generated token, not a re-decode of the output.

``tokenizers``' DecodeStream turns token ids into text as they arrive (it holds back an incomplete UTF-8
character until the token that completes it), so a request's text grows by appending. A stop string can only
end in the newest text, so only the last ``len(stop) - 1`` earlier characters plus the new ones are searched.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


def make_detokenizer(backend: Tokenizer | None, tokenizer, stop: list[str]) -> "Detokenizer | None":
    """The request's detokenizer: incremental on a Rust backend, full re-decode otherwise, None without a tokenizer."""
    if backend is not None:
        return Detokenizer(backend, stop)
    return None if tokenizer is None else FullDecodeDetokenizer(tokenizer, stop)


def engine_tokenizer(tokenizer) -> Tokenizer | None:
    """A private copy of a fast tokenizer's Rust backend for the engine thread: one Rust tokenizer used from
    two threads at once raises "Already borrowed", and the server's event loop encodes with the original."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        inner = getattr(tokenizer, "_tokenizer", None)  # a LockedTokenizer around a fast tokenizer
        backend = getattr(inner, "backend_tokenizer", None)
    return None if backend is None else Tokenizer.from_str(backend.to_str())


class Detokenizer:
    """One request's text: ``push`` each generated token; ``text`` is the output so far (cut at a stop string)."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str] = ()):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.stream = DecodeStream(skip_special_tokens=True)
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> bool:
        """Append one token's text; True when a stop string has appeared (``text`` then ends before it)."""
        if self.stopped:
            return True
        piece = self._next_piece(token)
        if not piece:
            return False
        start = max(0, len(self.text) - self.longest_stop + 1)
        self.text += piece
        if self.stop:
            window = self.text[start:]
            hits = [window.find(s) for s in self.stop if s in window]
            if hits:
                self.text = self.text[: start + min(hits)]
                self.stopped = True
        return self.stopped

    def _next_piece(self, token: int) -> str | None:
        return self.stream.step(self.tokenizer, token)


class FullDecodeDetokenizer(Detokenizer):
    """For a tokenizer without a Rust backend (a slow, Python-only one): re-decodes the output per token."""

    def __init__(self, tokenizer, stop: list[str] = ()):
        super().__init__(None, stop)
        self.slow = tokenizer
        self.ids: list[int] = []
        self.decoded = ""

    def _next_piece(self, token: int) -> str | None:
        self.ids.append(token)
        text = self.slow.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the token that completes it
            return None
        piece, self.decoded = text[len(self.decoded):], text
        return piece
