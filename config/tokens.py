"""Token counting for enqueued-token budgets: a characters-per-token ratio, or a tokenizer.

A tokenizer is named in configuration as `tiktoken:<encoding>` (needs the `tiktoken`
package and its encoding files) or `<module>:<function>`, any importable function that
takes a text and returns its token count. Both are checked when settings load, so a worker
never starts with a tokenizer it cannot use.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from functools import lru_cache

TIKTOKEN = "tiktoken:"


def check_tokenizer(spec: str) -> None:
    """Raise ValueError saying what is wrong with a tokenizer spec."""
    if spec.startswith(TIKTOKEN):
        if not spec.removeprefix(TIKTOKEN):
            raise ValueError("name the encoding, e.g. 'tiktoken:o200k_base'")
        if importlib.util.find_spec("tiktoken") is None:
            raise ValueError(
                f"{spec!r} needs the tiktoken package, which is not installed; "
                "pip install tiktoken, or give a characters-per-token number instead"
            )
        return
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(
            f"{spec!r} is neither a number (characters per token), 'tiktoken:<encoding>' nor "
            "'<module>:<function>'"
        )
    try:
        func = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load tokenizer {spec!r}: {exc}") from None
    if not callable(func):
        raise ValueError(f"tokenizer {spec!r} is not a function")


@lru_cache(maxsize=32)
def tokenizer(spec: str) -> Callable[[str], int]:
    """A function counting the tokens of a text, for a spec that `check_tokenizer` accepted."""
    if spec.startswith(TIKTOKEN):
        import tiktoken

        encoding = tiktoken.get_encoding(spec.removeprefix(TIKTOKEN))
        return lambda text: len(encoding.encode(text, disallowed_special=()))
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
