"""``Source``: where a setting's default comes from (its origin, the section or reason, and for the paper or the
report the exact words it rests on). The table of every setting's source is ``params.sources``; a compared
augmentation declares its own settings' sources beside its section (``params.methods``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Origin = Literal["paper", "report", "package", "method"]
# Origins whose Source must carry a quote of the report or the paper's public text.
QUOTED = ("paper", "report")


@dataclass(frozen=True)
class Source:
    """Where a setting's default comes from: its origin, the section or reason in words and, for the paper or the
    report, the exact words it rests on.

    ``quote`` is required for ``paper`` and ``report`` and must appear in ``where``, so the settings table shows the
    evidence beside the claim; tests/test_attributions.py finds each quote word for word in the report or the
    paper's public text (``../shared/reference/``).
    """

    origin: Origin
    where: str
    quote: str = ""

    def __post_init__(self) -> None:
        if self.origin not in ("paper", "report", "package", "method"):
            raise ValueError(f"unknown origin {self.origin!r}: use 'paper', 'report', 'package' or 'method'")
        if not self.where.strip():
            raise ValueError("a Source needs its section or reason in 'where'")
        if self.origin in QUOTED and not self.quote.strip():
            raise ValueError(f"a {self.origin} Source needs the exact words it rests on in 'quote'")
        if self.quote not in self.where:
            raise ValueError(f"'where' must show the quote {self.quote!r}")

    def text(self) -> str:
        """The source in words, as the settings table shows it: 'report — Generation of Augmented Images §6: ...'."""
        return f"{self.origin} — {self.where}"


def from_paper(where: str, quote: str) -> Source:
    return Source("paper", where, quote)


def from_report(where: str, quote: str) -> Source:
    return Source("report", where, quote)


def ours(why: str) -> Source:
    return Source("package", why)


def from_method(where: str) -> Source:
    """A compared augmentation's own code or paper (``params.methods``): the repository and the file."""
    return Source("method", where)
