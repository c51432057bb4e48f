"""The unit every text step hands on: a span of the client's text and what is spoken for it."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Token:
    """``source[start:end]`` of the text given to the step that made it, and its spoken form.

    ``spoken`` is one or more words, keeping the source's punctuation (",", ".", "?"...) so that
    the model's prosody and the sentence splitter still see it; "" when nothing is spoken (a lone
    dash, say). Tokens are in source order and never overlap.
    """

    start: int
    end: int
    spoken: str

    def shifted(self, by: int) -> Token:
        return replace(self, start=self.start + by, end=self.end + by)

    @property
    def words(self) -> list[str]:
        return self.spoken.split()
