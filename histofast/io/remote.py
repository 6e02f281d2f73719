"""Slides in object storage: ``https://`` and ``s3://`` objects read by byte ranges through fsspec (aiohttp for
HTTP, s3fs for S3), never downloaded whole.

``RemoteFile`` is one object, read the way ``tiles.Reader`` reads a local file: a list of (offset, count) ranges at
a time, coalesced into few requests sent concurrently, each retried with backoff when the connection fails, times out
or comes back short, every request conditional on the ETag the object had when it was opened (``If-Match``), so that
an object changed in between is an error, never a mix of two versions. ``RemoteFile.open()`` gives the file-like
object that tifffile and pydicom parse headers from, over a bounded cache of blocks.

Credentials and endpoints come from where fsspec, aiohttp and botocore look (``AWS_*`` variables, ``~/.aws``,
``AWS_ENDPOINT_URL_S3``, ``~/.netrc``, ``FSSPEC_S3_*``), never from histofast's own arguments, and are never logged:
URLs carrying credentials are refused, and messages show URLs without their query values (``SlideURL.shown``)."""
from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import re
import threading
from collections import OrderedDict
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..errors import SlideError

log = logging.getLogger("histofast")

PROTOCOLS = ("http", "https", "s3")
RETRIES = 4  # tries after the first, for a request that fails in a way a retry can mend
BACKOFF = 0.25  # seconds before the first retry, doubled (with jitter) before each next one
TIMEOUT = 30.0  # seconds one request may take, headers and body, before it is retried
MAX_GAP = 64 << 10  # ranges this close are fetched in one request (the gap's bytes are thrown away)
MAX_REQUEST = 16 << 20  # bytes one coalesced request may span
BLOCK = 256 << 10  # the header cache's block: what one read of a header costs at least
CACHE_BLOCKS = 64  # blocks the header cache keeps (16 MiB)


def is_url(path: Any) -> bool:
    """Whether ``path`` is a remote slide's URL (``http://``, ``https://`` or ``s3://``)."""
    return isinstance(path, str) and urlsplit(path).scheme.lower() in PROTOCOLS and "://" in path


class SlideURL(str):
    """A remote slide's URL where a ``Path`` would be: ``name``, ``stem``, ``suffix`` and ``parent`` as for a path, and
    ``shown``, the URL as messages and logs give it (query values hidden: a presigned URL's signature is a credential).
    """

    def __new__(cls, url: str) -> SlideURL:
        parts = urlsplit(url)
        if parts.username or parts.password:
            raise SlideError(cls._hide(url), "a URL must not carry credentials (they would end up in logs and grid "
                                             "files): use the environment, ~/.netrc or ~/.aws instead")
        if not parts.netloc:
            raise SlideError(url, "expected a URL like https://host/path or s3://bucket/key")
        return super().__new__(cls, url)

    @staticmethod
    def _hide(url: str) -> str:
        parts = urlsplit(url)
        query = "&".join(f"{k}=…" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
        return urlunsplit((parts.scheme, parts.hostname or "", parts.path, query, ""))

    @property
    def shown(self) -> str:
        """The URL with its query values hidden."""
        return self._hide(self) if urlsplit(self).query else str(self)

    @property
    def protocol(self) -> str:
        return urlsplit(self).scheme.lower()

    @property
    def name(self) -> str:
        return urlsplit(self).path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind("."):] if "." in name.lstrip(".") else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)]

    @property
    def parent(self) -> SlideURL:
        parts = urlsplit(self)
        folder = parts.path.rstrip("/").rsplit("/", 1)[0] + "/"
        return SlideURL(urlunsplit((parts.scheme, parts.netloc, folder, "", "")))


def filesystem(protocol: str):
    """fsspec's filesystem for ``protocol``, configured from the usual places (fsspec caches one per process).

    Raises:
        SlideError: fsspec (or s3fs, for S3) is not installed."""
    try:
        import fsspec

        if protocol == "s3":
            import s3fs  # noqa: F401  (fsspec would name it less clearly)
            # botocore's retries off: ours (and s3fs's own, of throttling and dropped connections) are enough. The
            # endpoint botocore would take from the environment, passed on: fsspec keys its cache of filesystems by
            # their arguments, so a changed AWS_ENDPOINT_URL(_S3) gets a filesystem of its own.
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            return fsspec.filesystem("s3", config_kwargs={"retries": {"max_attempts": 1}},
                                     **({"endpoint_url": endpoint} if endpoint else {}))
        import aiohttp  # noqa: F401
        # trust_env: proxies from HTTP(S)_PROXY and credentials from ~/.netrc, as curl and requests take them.
        return fsspec.filesystem(protocol, client_kwargs={"trust_env": True})
    except ImportError as e:
        raise SlideError(f"{protocol}://", f"reading {protocol}:// URLs needs {e.name}: pip install "
                                           "'histofast[remote]'") from None


def listing(url: SlideURL) -> list[SlideURL]:
    """The objects directly under a folder URL (``s3://bucket/prefix/``; ``https://host/dir/`` where the server
    lists folders, as nginx's autoindex does), sorted by name."""
    fs = filesystem(url.protocol)
    try:
        entries = fs.ls(url, detail=True)
    except Exception as e:
        raise SlideError(url.shown, f"cannot list this folder ({type(e).__name__}: {e})") from None
    prefix = "s3://" if url.protocol == "s3" else ""
    return sorted(SlideURL(prefix + e["name"] if prefix and not e["name"].startswith(prefix) else e["name"])
                  for e in entries if e.get("type") == "file")


class Changed(Exception):
    """The object's ETag is no longer the one it had when opened."""


class Fatal(Exception):
    """A request that no retry can mend (missing object, access denied)."""


class RemoteFile:
    """One remote object, read by byte ranges from many threads.

    ``requests`` and ``bytes`` count what was fetched (for the benchmark's per-tile figures); ``retries`` the
    requests sent again."""

    def __init__(self, url: str | SlideURL) -> None:
        self.url = SlideURL(url)
        self.requests = self.bytes = self.retries = 0
        self._lock = threading.Lock()
        info = self._call(lambda fs: fs._info(self.url), "its size")
        self.size = int(info.get("size") or 0)
        etag = info.get("ETag") or info.get("etag")
        # If-Match compares strong ETags only: a weak one (W/"…") would fail every request.
        self.etag = etag if etag and not etag.startswith("W/") else None
        if not self.size:
            raise SlideError(self.url.shown, "the server gives no size for this object (or it is empty)")
        self._header_cache = _Blocks(self)

    # -- reading ------------------------------------------------------------------------------
    def __call__(self, offset: int, count: int) -> bytes:
        """``count`` bytes at ``offset`` (fewer only past the object's end)."""
        return self.ranges([(offset, count)])[0]

    def ranges(self, wanted: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, count) range, fetched in as few requests as ``MAX_GAP`` and ``MAX_REQUEST``
        allow, all at once; a range past the object's end comes back as far as the object goes.

        Raises:
            SlideError: naming the URL and the byte range of a request that failed ``RETRIES`` + 1 times, came back
                short every time, found the object changed or gone."""
        clipped = [(o, max(0, min(o + n, self.size)) - o) for o, n in wanted]
        requests = _coalesce([(o, n) for o, n in clipped if n > 0])
        if not requests:
            return [b"" for _ in wanted]
        bodies = self._call(lambda fs: self._gather(fs, requests), None)
        out = []
        for o, n in clipped:
            if n <= 0:
                out.append(b"")
                continue
            i = next(i for i, (s, e) in enumerate(requests) if s <= o and o + n <= e)
            start = o - requests[i][0]
            out.append(bodies[i][start : start + n])
        return out

    def open(self) -> io.BufferedReader:
        """A seekable binary file over the object for header parsers (tifffile, pydicom), reading through a cache of
        ``CACHE_BLOCKS`` blocks of ``BLOCK`` bytes shared by every file opened from this object."""
        return io.BufferedReader(_RawFile(self._header_cache, self.size, self.url.name), buffer_size=8192)

    def close(self) -> None:
        self._header_cache.clear()

    # -- the requests -------------------------------------------------------------------------
    def _call(self, make, what: str | None):
        """Run the coroutine ``make(fs)`` on fsspec's event loop and wait; ``what``: what an ``_info`` call asks
        for, to name in its error (range requests name their own)."""
        from fsspec.asyn import sync

        fs = filesystem(self.url.protocol)  # looked up per call: fsspec gives a forked worker its own
        if what is None:
            return sync(fs.loop, lambda: make(fs))
        try:
            return sync(fs.loop, lambda: self._retried(lambda: make(fs), what))
        except (Fatal, Changed) as e:
            raise SlideError(self.url.shown, str(e)) from None

    async def _gather(self, fs, requests: list[tuple[int, int]]) -> list[bytes]:
        """Every request's bytes, all sent at once; the first failure raised once all are settled."""
        bodies = await asyncio.gather(*(self._get(fs, s, e) for s, e in requests), return_exceptions=True)
        for body in bodies:
            if isinstance(body, BaseException):
                raise body
        return bodies

    async def _get(self, fs, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object, retried; every try asks for the ETag the object was opened with."""
        what = f"bytes {start}..{end}"

        async def get() -> bytes:
            if self.url.protocol == "s3":
                bucket, key, _ = fs.split_path(self.url)
                # s3fs's cat_file takes no conditions: its own get_object call, with IfMatch.
                resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}",
                                         **({"IfMatch": self.etag} if self.etag else {}))
                try:
                    body = await resp["Body"].read()
                finally:
                    resp["Body"].close()
            else:
                body = await fs._cat_file(self.url, start=start, end=end,
                                          headers={"If-Match": self.etag} if self.etag else {})
            if len(body) > end - start:
                raise Fatal(f"{what}: the server sent {len(body)} bytes: it ignores byte ranges, and remote slides are "
                            "read by ranges only")
            if len(body) != end - start:
                raise _Short(f"the server sent {len(body)} of the {end - start} bytes asked for")
            with self._lock:
                self.requests += 1
                self.bytes += len(body)
            return body

        try:
            return await self._retried(get, what)
        except (Fatal, Changed) as e:
            raise SlideError(self.url.shown, str(e)) from None

    async def _retried(self, attempt, what: str):
        """``await attempt()``, tried ``RETRIES`` more times with backoff unless the error is final."""
        for tries in range(RETRIES + 1):
            try:
                return await asyncio.wait_for(attempt(), TIMEOUT)
            except (Fatal, Changed):
                raise
            except Exception as e:
                kind = _kind(e)
                if kind == "changed":
                    raise Changed(f"{what}: the object changed since it was opened (its ETag is no longer "
                                  f"{self.etag}): reopen the slide") from None
                if kind == "fatal":
                    raise Fatal(f"{what}: {_describe(e)}") from None
                if tries == RETRIES:
                    raise SlideError(self.url.shown, f"{what}: failed {RETRIES + 1} times, the last time with "
                                                     f"{_describe(e)}") from None
                with self._lock:
                    self.retries += 1
                delay = BACKOFF * 2 ** tries * (0.5 + random.random())
                log.debug("%s: %s: %s; retrying in %.2f s", self.url.shown, what, _describe(e), delay)
                await asyncio.sleep(delay)


class _Short(Exception):
    """A response whose body is shorter than the range asked for."""


def _kind(e: BaseException) -> str:
    """'changed' (412: the ETag no longer matches), 'fatal' (missing, forbidden, a bad request) or 'retry'."""
    if isinstance(e, FileNotFoundError) and e.__cause__ is not None:  # fsspec's HTTP info: any failure reads so
        return _kind(e.__cause__)
    status = getattr(e, "status", None)  # aiohttp's ClientResponseError
    response = getattr(e, "response", None)  # botocore's ClientError
    if status is None and isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    # s3fs turns S3's 412 into OSError(EINVAL, "At least one of the pre-conditions you specified did not hold").
    if status == 412 or any(text in str(e) for text in ("PreconditionFailed", "pre-conditions you specified")):
        return "changed"
    if isinstance(e, (FileNotFoundError, PermissionError)) or status in (400, 401, 403, 404, 405, 416):
        return "fatal"
    return "retry"


def _describe(e: BaseException) -> str:
    """What went wrong, for a message: never a URL's query (a presigned URL's signature is a credential)."""
    if isinstance(e, FileNotFoundError) and e.__cause__ is not None:
        return _describe(e.__cause__)
    if isinstance(e, asyncio.TimeoutError):
        return f"no complete answer within {TIMEOUT:g} s"
    status = getattr(e, "status", None)
    if isinstance(e, FileNotFoundError) or status == 404:
        return "no such object"
    if isinstance(e, PermissionError) or status in (401, 403):
        return "access denied"
    if status is not None:
        return f"HTTP {status} {getattr(e, 'message', '')}".strip()
    text = re.sub(r"\?[^\s'\"]*", "?…", str(e))
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end) requests covering the (offset, count) ranges: ranges within ``MAX_GAP`` of each other merged, up
    to ``MAX_REQUEST`` bytes a request."""
    merged: list[list[int]] = []
    for offset, count in sorted(ranges):
        end = offset + count
        if merged and offset - merged[-1][1] <= MAX_GAP and max(end, merged[-1][1]) - merged[-1][0] <= MAX_REQUEST:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([offset, end])
    return [(s, e) for s, e in merged]


class _Blocks:
    """A bounded LRU cache of an object's ``BLOCK``-sized blocks (header parsing reads small pieces, often again)."""

    def __init__(self, file: RemoteFile) -> None:
        self._file = file
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, offset: int, count: int) -> bytes:
        first, last = offset // BLOCK, (offset + count - 1) // BLOCK
        with self._lock:
            missing = [b for b in range(first, last + 1) if b not in self._blocks]
        if missing:
            got = self._file.ranges([(b * BLOCK, BLOCK) for b in missing])
            with self._lock:
                self._blocks.update(zip(missing, got))
        with self._lock:
            parts = []
            for b in range(first, last + 1):
                block = self._blocks.get(b)
                if block is None:  # evicted meanwhile by another reader: read it alone
                    block = self._file(b * BLOCK, BLOCK)
                else:
                    self._blocks.move_to_end(b)
                parts.append(block)
            while len(self._blocks) > CACHE_BLOCKS:
                self._blocks.popitem(last=False)
        data = b"".join(parts)
        start = offset - first * BLOCK
        return data[start : start + count]

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()


class _RawFile(io.RawIOBase):
    """The raw, seekable file ``RemoteFile.open`` buffers."""

    def __init__(self, blocks: _Blocks, size: int, name: str) -> None:
        self._blocks, self._size, self._pos = blocks, size, 0
        self.name = name  # pydicom and tifffile name the file they parse

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence] + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._size - self._pos)
        if count <= 0:
            return 0
        data = self._blocks.read(self._pos, count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
