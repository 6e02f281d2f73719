"""histofast's exception family.

Catch ``HistofastError`` to handle bad input (a ValueError) without also catching bugs."""
from __future__ import annotations


class HistofastError(ValueError):
    """A bad argument or input; the message names the argument, its value and what was expected."""
