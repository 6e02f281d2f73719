"""The names of 0.x kept for one release: a renamed keyword or attribute still works, with a ``FutureWarning``.

Imports nothing of histofast, so any module (``histofast.io`` included) may use it."""
from __future__ import annotations

import warnings
from typing import Any


def renamed_keyword(flat: dict[str, Any], owner: str, old: str, new: str, value: Any) -> Any:
    """``value`` of keyword ``new``, or (with a ``FutureWarning``) what ``flat`` gives under its 0.x name ``old``
    (taken out of ``flat``); both given raise ``TypeError``."""
    if old not in flat:
        return value
    if value is not None:
        raise TypeError(f"{owner}: {old}= and {new}= both given ({old}= is the old name of {new}=)")
    warnings.warn(f"{owner}({old}=…): renamed {new}=; {old}= goes in the next release", FutureWarning, stacklevel=3)
    return flat.pop(old)


def renamed_attribute(owner: Any, old: str, new: str) -> Any:
    """``owner.new``, read under its 0.x name ``old`` (with a ``FutureWarning``)."""
    warnings.warn(f"{type(owner).__name__}.{old}: renamed {new}; {old} goes in the next release", FutureWarning,
                  stacklevel=3)
    return getattr(owner, new)
