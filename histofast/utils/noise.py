"""Third-party noise routed where it belongs instead of onto the user's terminal.

While histofast opens a file, the libraries it calls may print: native code on file descriptor 2 (libtiff inside
Pillow: "JPEGLib: Bogus marker length."; nvImageCodec's extension loader), tifffile's ``logging`` warnings
("invalid offset to first page"), Python ``warnings`` (Pillow's "Corrupt EXIF data"). ``explained`` collects
them as lines and puts them into the reason of the ``SlideError`` the file then raises, or else into the
``histofast`` log (debug), naming the file.

tifffile's records are taken by a filter on its logger, installed once at import, which acts only for the thread
that is inside a capture: thread-safe and free. File descriptor 2 and the warnings filters belong to the whole
process, so those captures are serialised by one lock: they are used only around short calls (opening a file),
never around the decoding of tiles."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import warnings
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Iterator

from ..errors import SlideError

log = logging.getLogger("histofast")

LOGGERS = ("tifffile",)  # third-party loggers whose records (WARNING and above) a capture takes
SAID_LINES = 4  # captured lines put into a reason at most (the first ones: usually the cause)

# File descriptor 2 belongs to the whole process: one capture at a time, or two overlapping ones leave it
# pointing at the other's deleted temporary file; the warnings filters likewise (catch_warnings is not
# thread-safe). Reentrant: a capture inside another in the same thread is fine.
_CAPTURE = threading.RLock()
# The lines of the capture the current thread (or task) is in, None outside any.
_current: ContextVar[list[str] | None] = ContextVar("histofast_noise", default=None)


class _ToCapture(logging.Filter):
    """On a third-party logger: a record logged by a thread inside a capture becomes one of its lines instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        lines = _current.get()
        if lines is None or record.levelno < logging.WARNING:
            return True
        lines.append(f"{record.name}: {record.getMessage()}")
        return False


_FILTER = _ToCapture()
for _name in LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)


@contextmanager
def stderr_captured() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 meanwhile (nvImageCodec's extension loader prints
    "Failed to load nvjpeg library!" there whatever its verbosity; libtiff its errors). One capture at a time."""
    lines: list[str] = []
    with _CAPTURE:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                lines.extend(sink.read().decode(errors="replace").splitlines())


@contextmanager
def captured(source: str, *, stderr: bool = False, python_warnings: bool = False) -> Iterator[list[str]]:
    """Collect as lines what third-party code would print meanwhile: the records of ``LOGGERS`` logged by this
    thread (always), Python warnings (``python_warnings``) and native writes to file descriptor 2 (``stderr``),
    the last two labelled ``source`` (e.g. "Pillow"). A capture inside another adds to the outer one's lines."""
    outer = _current.get()
    lines = outer if outer is not None else []
    token = _current.set(lines)
    caught: list[warnings.WarningMessage] = []
    native: list[str] = []
    try:
        if not (stderr or python_warnings):
            yield lines
            return
        with _CAPTURE, ExitStack() as stack:
            if python_warnings:
                caught = stack.enter_context(warnings.catch_warnings(record=True))
                warnings.simplefilter("always")  # every one, not once per place: each file gets its own
            if stderr:
                native = stack.enter_context(stderr_captured())
            yield lines
    finally:
        lines.extend(f"{source}: {str(w.message).strip()}" for w in caught)
        lines.extend(f"{source}: {line.strip()}" for line in native if line.strip())
        _current.reset(token)


@contextmanager
def explained(path: str | os.PathLike, source: str, *, stderr: bool = False,
              python_warnings: bool = False) -> Iterator[list[str]]:
    """``captured``, then each line goes where it belongs, once: into the reason of a ``SlideError`` raised
    meanwhile (the same exception, its reason extended), else into the ``histofast`` log (debug), naming the
    file. Inside another capture the lines collected so far, the outer ones' too, are handed on here."""
    lines: list[str] = []
    try:
        with captured(source, stderr=stderr, python_warnings=python_warnings) as lines:
            yield lines
    except SlideError as e:
        extra = said(lines)
        lines.clear()
        if extra:
            e.reason += extra
            e.args = (f"{e.path}: {e.reason}",)
        raise
    finally:
        for line in lines:
            log.debug("%s: %s", os.fspath(path), line)
        lines.clear()


def said(lines: list[str]) -> str:
    """The captured lines for a reason: " [tifffile: …; Pillow: …]" (repeats once, the first ``SAID_LINES``),
    or "" when there are none."""
    unique = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not unique:
        return ""
    more = f"; {len(unique) - SAID_LINES} more" if len(unique) > SAID_LINES else ""
    return f" [{'; '.join(unique[:SAID_LINES])}{more}]"
