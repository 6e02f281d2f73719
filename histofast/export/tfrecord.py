"""TFRecord shards of tiles without TensorFlow: tf.train.Example encoding, CRC32C framing,
atomic shard + DALI index writing, and a pure-Python reader."""
from __future__ import annotations

import numbers
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Union

import google_crc32c

from ..errors import HistofastError
from ..utils.atomic import temporary_name
from ..utils.encode import IMAGE_FORMATS

__all__ = [
    "TILE_FEATURES", "TILE_FORMATS", "TFRecordWriter", "crc32c", "dali_features", "decode_example",
    "encode_example", "masked_crc32c", "read_tfrecord", "tile_example",
]

FeatureValue = Union[bytes, str, int, float, Sequence[int], Sequence[float], Sequence[bytes]]
DecodedValue = Union[bytes, list[int], list[float], list[bytes]]

# The tile schema: feature key -> kind ("bytes", "int64" or "float"). x and y are level-0 pixels,
# label is -100 (NO_LABEL) when unknown, format is "jpg" or "png". `dali_features()` turns this into the
# `features=` argument of `nvidia.dali.fn.readers.tfrecord`; for TensorFlow use
# `tf.io.FixedLenFeature([], tf.string / tf.int64)` per key.
TILE_FEATURES: Mapping[str, str] = {
    "image": "bytes", "label": "int64", "slide": "bytes", "x": "int64", "y": "int64",
    "level": "int64", "tile_size": "int64", "format": "bytes",
}
TILE_FORMATS = IMAGE_FORMATS

# ----------------------------------------------------------------------------------------- CRC32C

_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord frames use it (google-crc32c: C where built)."""
    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant, so that a CRC stored inside
    CRC-protected data does not make the outer CRC degenerate."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ------------------------------------------------------------------------------ Example protobuf
# Example{features=1: Features{feature=1: map<string, Feature>}};
# Feature oneof {bytes_list=1, float_list=2, int64_list=3}, each a message whose field 1 is the
# repeated value (floats and int64 packed, as TensorFlow writes them).

_BYTES, _FLOAT, _INT64 = 1, 2, 3
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_BYTES_LIKE = (bytes, bytearray, memoryview)
_ONE_BYTE = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if value < 0x80:  # most tags, lengths and small ints: skip building a bytearray
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: int, parts: list[bytes]) -> list[bytes]:
    """A length-delimited field holding the concatenation of ``parts``, as chunks: a 100 KB image
    is then copied once, by the final join, instead of once per nesting level."""
    return [_ONE_BYTE[tag] + _varint(sum(map(len, parts))), *parts]


def _feature(key: str, value: Any) -> list[bytes]:
    """Chunks of the serialized Feature of one value (`encode_example` gives the type rules)."""
    if isinstance(value, (*_BYTES_LIKE, str)):
        kind, items = _BYTES, [value]
    elif isinstance(value, numbers.Integral):
        kind, items = _INT64, [value]
    elif isinstance(value, numbers.Real):
        kind, items = _FLOAT, [value]
    else:
        try:
            items = list(value)
        except TypeError:
            raise HistofastError(f"feature {key!r}: {type(value).__name__} is not bytes, str, int, "
                                 "float or a sequence of one of them") from None
        if all(isinstance(v, numbers.Integral) for v in items):
            kind = _INT64  # an empty list too: nothing tells its kind, so one is picked
        elif all(isinstance(v, numbers.Real) for v in items):
            kind = _FLOAT
        elif all(isinstance(v, (*_BYTES_LIKE, str)) for v in items):
            kind = _BYTES
        else:
            raise HistofastError(f"feature {key!r}: a list must hold only ints, only floats or "
                                 "only bytes/str")
    if kind == _BYTES:
        body = [chunk for v in items
                for chunk in _delimited(0x0A, [v.encode() if isinstance(v, str) else bytes(v)])]
        return _delimited(0x0A, body)
    if kind == _INT64:
        ints = [int(v) for v in items]
        bad = [v for v in ints if not _INT64_MIN <= v <= _INT64_MAX]
        if bad:
            raise HistofastError(f"feature {key!r}: {bad[0]} does not fit in int64")
        # Negative numbers are varints of their 64-bit two's complement (10 bytes), as int64 is.
        packed = b"".join(_varint(v & 0xFFFFFFFFFFFFFFFF) for v in ints)
        return _delimited(0x1A, _delimited(0x0A, [packed]) if ints else [])
    try:
        packed = struct.pack(f"<{len(items)}f", *map(float, items))
    except (OverflowError, struct.error) as e:
        raise HistofastError(f"feature {key!r}: {e} (values must fit in float32)") from None
    return _delimited(0x12, _delimited(0x0A, [packed]) if items else [])


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialize a ``tf.train.Example``.

    bytes and str (UTF-8) become a one-element bytes_list; int (numpy integers too) an int64_list;
    float a float_list (rounded to float32); a sequence of ints, floats or bytes/str the list of
    that kind (an empty sequence an empty int64_list). Keys are written in sorted order so the same
    features always give the same bytes.
    """
    for key in features:
        if not isinstance(key, str):
            raise HistofastError(f"feature key {key!r}: must be a str")
    entries: list[bytes] = []
    for key in sorted(features):
        entry = _delimited(0x0A, [key.encode()]) + _delimited(0x12, _feature(key, features[key]))
        entries += _delimited(0x0A, entry)
    return b"".join(_delimited(0x0A, entries))


def _malformed(reason: str) -> HistofastError:
    return HistofastError(f"malformed tf.train.Example: {reason}")


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise _malformed("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _malformed("varint longer than 10 bytes")


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field in buf[pos:end]; the value is the int of a
    varint, the (start, stop) of a length-delimited field, or the offset of a fixed32/fixed64."""
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _malformed("field number 0")
        if wire == 0:
            value, pos = _read_varint(buf, pos, end)
        elif wire == 2:
            size, pos = _read_varint(buf, pos, end)
            if size > end - pos:
                raise _malformed(f"field {field} runs past the end of its message")
            value, pos = (pos, pos + size), pos + size
        elif wire in (1, 5):
            value, pos = pos, pos + (8 if wire == 1 else 4)
            if pos > end:
                raise _malformed(f"field {field} runs past the end of its message")
        else:
            raise _malformed(f"unsupported wire type {wire}")
        yield field, wire, value


def _signed64(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF  # protobuf keeps the low 64 bits of an over-long varint
    return value - (1 << 64) if value >> 63 else value


def _list_values(buf: bytes, kind: int, start: int, stop: int) -> list:
    """Values of a BytesList/FloatList/Int64List; repeated scalars may come packed or one by one,
    and a parser must accept both."""
    values: list = []
    for field, wire, value in _fields(buf, start, stop):
        if field != 1:
            continue  # unknown fields are skipped, as protobuf parsers do
        if kind == _BYTES and wire == 2:
            values.append(buf[value[0]:value[1]])
        elif kind == _FLOAT and wire == 5:
            values.append(struct.unpack_from("<f", buf, value)[0])
        elif kind == _FLOAT and wire == 2:
            a, b = value
            if (b - a) % 4:
                raise _malformed("packed float list length is not a multiple of 4")
            values.extend(struct.unpack_from(f"<{(b - a) // 4}f", buf, a))
        elif kind == _INT64 and wire == 0:
            values.append(_signed64(value))
        elif kind == _INT64 and wire == 2:
            pos, b = value
            while pos < b:
                v, pos = _read_varint(buf, pos, b)
                values.append(_signed64(v))
        else:
            raise _malformed(f"wire type {wire} for the values of a kind-{kind} list")
    return values


def _decode_feature(buf: bytes, start: int, stop: int) -> DecodedValue:
    kind, values = 0, []
    for field, wire, value in _fields(buf, start, stop):
        if field not in (_BYTES, _FLOAT, _INT64) or wire != 2:
            continue
        if field != kind:  # oneof: a later member replaces an earlier one; the same one merges
            kind, values = field, []
        values.extend(_list_values(buf, field, *value))
    if kind == _BYTES and len(values) == 1:
        return values[0]
    return values


def decode_example(data: bytes) -> dict[str, DecodedValue]:
    """Parse a serialized ``tf.train.Example`` into {key: value}.

    A bytes_list of exactly one element gives ``bytes`` (other lengths a ``list[bytes]``);
    int64_list gives ``list[int]``; float_list ``list[float]``; a Feature with no kind ``[]``.
    Raises HistofastError on malformed input.
    """
    buf = data if isinstance(data, bytes) else bytes(data)
    out: dict[str, DecodedValue] = {}
    for field, wire, features in _fields(buf, 0, len(buf)):
        if field != 1 or wire != 2:
            continue
        for f, w, entry in _fields(buf, *features):
            if f != 1 or w != 2:
                continue
            key, value = "", []
            for ef, ew, ev in _fields(buf, *entry):
                if ef == 1 and ew == 2:
                    try:
                        key = buf[ev[0]:ev[1]].decode()
                    except UnicodeDecodeError:
                        raise _malformed("feature key is not UTF-8") from None
                elif ef == 2 and ew == 2:
                    value = _decode_feature(buf, *ev)
            out[key] = value  # a repeated key keeps the last entry, as protobuf maps do
    return out


# --------------------------------------------------------------------------------- tile schema


def tile_example(image: bytes, *, label: int, slide: str, x: int, y: int, level: int,
                 tile_size: int, fmt: str) -> bytes:
    """Serialized Example of one tile in the `TILE_FEATURES` schema.

    image: encoded JPEG/PNG bytes; label: class index, -100 (NO_LABEL) when unknown; slide: slide name;
    x, y: tile origin in level-0 pixels; level: pyramid level it was read at; tile_size: side in
    level pixels; fmt: "jpg" or "png".
    """
    if fmt not in TILE_FORMATS:
        raise HistofastError(f"fmt={fmt!r}: must be one of {', '.join(TILE_FORMATS)}")
    values = {"image": image, "label": label, "slide": slide, "x": x, "y": y, "level": level,
              "tile_size": tile_size, "format": fmt}
    for key, kind in TILE_FEATURES.items():
        ok = (isinstance(values[key], (*_BYTES_LIKE, str)) if kind == "bytes"
              else isinstance(values[key], numbers.Integral))
        if not ok:
            raise HistofastError(f"{key}={values[key]!r}: must be {kind}")
    return encode_example(values)


def dali_features(schema: Mapping[str, str] = TILE_FEATURES) -> dict[str, Any]:
    """The ``features=`` argument of ``nvidia.dali.fn.readers.tfrecord`` for records in
    ``schema`` (kind "bytes", "int64" or "float" per key): scalars, missing ints read as -1."""
    import nvidia.dali.tfrecord as tfrec  # here, not at the top: DALI is optional

    kinds = {"bytes": (tfrec.string, ""), "int64": (tfrec.int64, -1), "float": (tfrec.float32, 0.0)}
    return {key: tfrec.FixedLenFeature((), *kinds[kind]) for key, kind in schema.items()}


# ------------------------------------------------------------------------------ files and index


def _temp_name(path: str) -> str:
    # Same directory, so os.replace is a rename within one file system; a leading dot and a
    # random part keep it out of "*.tfrecord" globs and away from concurrent writers.
    head, tail = os.path.split(path)
    return os.path.join(head, temporary_name(tail))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _fsync_directory(path: str) -> None:
    # Makes the renames themselves durable. Best effort: Windows cannot open a directory, and some
    # network file systems refuse to fsync one; the renames are done either way.
    if os.name != "posix":
        return
    try:
        fd = os.open(path or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class TFRecordWriter:
    """Writes one TFRecord shard and its DALI index, atomically.

    Records go to a hidden temporary file beside ``path``; only when the ``with`` block exits
    without an exception (or on `close()`) are the shard and its index (``path + ".idx"`` by
    default, lines ``"{offset} {size}\\n"`` as DALI's tfrecord2idx writes them) moved into place.
    On an exception (or `abort()`) the temporary files are removed and nothing is left.

    Commit order: a stale index at ``index_path`` is deleted first, then the shard is renamed,
    then the index last. A crash in between therefore leaves at worst a shard without an index,
    never an index describing a different or unfinished shard: **an index file certifies that
    the shard beside it is complete**, and a shard without one is from an interrupted run
    (DALI refuses it; delete it or rebuild the index). Hidden ``.NAME.*.tmp`` files are also
    left-overs of killed processes and can be deleted.

    Usage::

        with TFRecordWriter("train-00000.tfrecord") as w:
            for tile in tiles:
                w.write(tile_example(...))
    """

    def __init__(self, path: str | os.PathLike,
                 index_path: str | os.PathLike | None = None) -> None:
        self.path = os.fspath(path)
        self.index_path = self.path + ".idx" if index_path is None else os.fspath(index_path)
        if os.path.abspath(self.path) == os.path.abspath(self.index_path):
            raise HistofastError(f"index_path={self.index_path!r}: must differ from path")
        self._tmp_path, self._tmp_index = _temp_name(self.path), _temp_name(self.index_path)
        self._file = open(self._tmp_path, "xb")  # mode 0o666 less umask, like any new file
        self._index: list[tuple[int, int]] = []
        self._offset = 0
        self._closed = False

    @property
    def num_records(self) -> int:
        """Records written so far."""
        return len(self._index)

    @property
    def nbytes(self) -> int:
        """Bytes of shard written so far, framing included (for rotating shards by size)."""
        return self._offset

    def write(self, record: bytes) -> None:
        """Append one record (e.g. an `encode_example` result)."""
        if self._closed:
            raise ValueError(f"{self.path}: write to a closed TFRecordWriter")
        data = record if isinstance(record, bytes) else bytes(record)
        length = struct.pack("<Q", len(data))
        self._file.write(length + struct.pack("<I", masked_crc32c(length)))
        self._file.write(data)
        self._file.write(struct.pack("<I", masked_crc32c(data)))
        size = len(data) + 16
        self._index.append((self._offset, size))
        self._offset += size

    def close(self) -> None:
        """Finish the shard and index and move them into place (see the class docstring)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.flush()
            os.fsync(self._file.fileno())  # contents on disk before the rename makes them visible
            self._file.close()
            with open(self._tmp_index, "x", encoding="ascii", newline="\n") as f:
                f.writelines(f"{offset} {size}\n" for offset, size in self._index)
                f.flush()
                os.fsync(f.fileno())
            _remove(self.index_path)
            os.replace(self._tmp_path, self.path)
            os.replace(self._tmp_index, self.index_path)
            _fsync_directory(os.path.dirname(self.path))
            if os.path.dirname(self.index_path) != os.path.dirname(self.path):
                _fsync_directory(os.path.dirname(self.index_path))
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Drop everything written: remove the temporary files, leave no shard and no index."""
        self._closed = True
        self._discard()

    def _discard(self) -> None:
        self._file.close()
        _remove(self._tmp_path)
        _remove(self._tmp_index)

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_tfrecord(path: str | os.PathLike, check_crc: bool = True) -> Iterator[bytes]:
    """Yield the payload of each record of a TFRecord file.

    Raises HistofastError naming the file and the record's byte offset on a truncated record or
    a CRC mismatch. The 8-byte length's own CRC is checked even with ``check_crc=False``: it
    costs nothing, and a corrupt length would otherwise send the reader off reading garbage.
    """
    path = os.fspath(path)

    def corrupt(offset: int, reason: str) -> HistofastError:
        return HistofastError(f"{path}: record at offset {offset}: {reason}")

    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise corrupt(offset, f"truncated: {len(header)} of 12 header bytes")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                raise corrupt(offset, "length CRC mismatch")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise corrupt(offset, f"truncated: {len(data) + len(footer)} of {length + 4} "
                                      "data and CRC bytes")
            if check_crc and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise corrupt(offset, "data CRC mismatch")
            yield data
            offset += length + 16
