"""Incremental detokenisation with stop strings.

Decoding only a short window of tokens per step keeps the cost flat in the output length. The window starts a few
tokens back (into the prompt at first) because many tokenizers render a token differently at the start of a text
(a dropped leading space, half of a multi-byte character): the delta is the window's text minus its known prefix,
and is held back while it ends in an incomplete character (U+FFFD). While stop strings are set, the last
len(longest stop) - 1 characters are held back too, so that a stop string is never streamed before it is cut off.
"""

from __future__ import annotations

_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str]):
        self.tokenizer = tokenizer
        self.tokens = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.decoded = ""  # all output text decoded so far
        self.emitted = 0  # how much of `decoded` callers have seen

    @property
    def text(self) -> str:
        return self.decoded[: self.emitted]

    def add(self, token_ids: list[int]) -> tuple[str, bool]:
        """Take new tokens; return (new text for the caller, whether a stop string was hit)."""
        if self.tokenizer is None:
            return "", False
        self.tokens += token_ids
        start = max(0, len(self.decoded) - self.hold)  # a new match must end inside the new text
        self.decoded += self._decode_delta()
        if self.stop:
            hits = [i for i in (self.decoded.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.decoded = self.decoded[: min(hits)]
                return self._emit(len(self.decoded)), True
        return self._emit(len(self.decoded) - self.hold), False

    def flush(self) -> str:
        """The held-back text, once the request has finished for another reason."""
        return self._emit(len(self.decoded))

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        delta = self.decoded[self.emitted : upto]
        self.emitted = upto
        return delta

    def _decode_delta(self) -> str:
        decode = self.tokenizer.decode
        prefix = decode(self.tokens[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = decode(self.tokens[self.prefix_offset :], skip_special_tokens=True)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        return full[len(prefix) :]
