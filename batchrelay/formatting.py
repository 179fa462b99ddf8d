"""Words and figures the CLI prints, the same in every command."""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`1 batch`, `2 batches`, `0 deliveries`."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"
