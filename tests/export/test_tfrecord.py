"""histofast.export.tfrecord: CRC32C vectors, Example encoding against protobuf, framing, atomic shards,
and (where installed) DALI reading the shards back."""
from __future__ import annotations

import io
import math
import os
import struct

import numpy as np
import pytest
from PIL import Image

from histofast import HistofastError
from histofast.export import tfrecord
from histofast.export.tfrecord import (
    TILE_FEATURES,
    TFRecordWriter,
    crc32c,
    decode_example,
    encode_example,
    masked_crc32c,
    read_tfrecord,
    tile_example,
)

# ---------------------------------------------------------------------------- independent CRC32C


def _reference_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_REF_TABLE = _reference_table()


def ref_crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _REF_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def ref_mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# RFC 3720 (iSCSI) appendix B.4 and the "check" value of the CRC catalogue.
CRC_VECTORS = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("data,expected", CRC_VECTORS)
def test_crc32c_known_vectors(data, expected):
    assert crc32c(data) == expected


@pytest.mark.parametrize("n", [511, 512, 513, 1000, 4097, 65536, 100_003, 300_001])
def test_crc32c_matches_reference(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(bytearray(data)) == ref_crc32c(data)


def test_masked_crc():
    assert masked_crc32c(b"") == 0xA282EAD8  # crc 0 rotates to 0
    # 0xE3069283 rotated right by 15 is 0x2507C60D; plus the delta, mod 2**32.
    assert masked_crc32c(b"123456789") == (0x2507C60D + 0xA282EAD8) & 0xFFFFFFFF
    for data, crc in CRC_VECTORS:
        assert masked_crc32c(data) == ref_mask(crc)


# ------------------------------------------------------------------------------- Example encoding


def test_encode_small_example_by_hand():
    # Example{features{feature{key:"a" value{int64_list{value:[1,-1]}}}
    #                  feature{key:"b" value{bytes_list{value:["xy"]}}}
    #                  feature{key:"c" value{float_list{value:[1.0]}}}}}
    int_feature = b"\x1a\x0d" + b"\x0a\x0b" + b"\x01" + b"\xff" * 9 + b"\x01"
    entry_a = b"\x0a\x01a" + b"\x12\x0f" + int_feature
    entry_b = b"\x0a\x01b" + b"\x12\x06" + b"\x0a\x04\x0a\x02xy"
    entry_c = b"\x0a\x01c" + b"\x12\x08" + b"\x12\x06\x0a\x04" + struct.pack("<f", 1.0)
    features = b"".join(b"\x0a" + bytes([len(e)]) + e for e in (entry_a, entry_b, entry_c))
    expected = b"\x0a" + bytes([len(features)]) + features
    assert encode_example({"c": 1.0, "b": "xy", "a": [1, -1]}) == expected
    assert decode_example(expected) == {"a": [1, -1], "b": b"xy", "c": [1.0]}


def _random_features(rng: np.random.Generator) -> dict:
    """A random mix of every value kind encode_example accepts, with awkward edges."""
    ints = [0, 1, -1, 127, 128, -(1 << 63), (1 << 63) - 1, 1 << 62, -(1 << 31)]
    out: dict = {}
    for i in range(int(rng.integers(0, 12))):
        key = ["", "image", "é✓", "x" * 200, f"k{i}"][int(rng.integers(0, 5))] + str(i)
        kind = int(rng.integers(0, 9))
        if kind == 0:
            out[key] = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        elif kind == 1:
            out[key] = bytes(range(256))
        elif kind == 2:
            out[key] = "slide-" + "é" * int(rng.integers(0, 4))
        elif kind == 3:
            out[key] = int(rng.integers(-(1 << 63), (1 << 63) - 1, dtype=np.int64))
        elif kind == 4:
            out[key] = [ints[j] for j in rng.integers(0, len(ints), int(rng.integers(1, 20)))]
        elif kind == 5:
            out[key] = float(np.float32(rng.normal() * 10.0 ** rng.integers(-30, 30)))
        elif kind == 6:
            values = rng.normal(size=int(rng.integers(1, 50))).astype(np.float32)
            out[key] = [float(v) for v in values]
            out[key] += [0.0, -0.0, math.inf, -math.inf]
        elif kind == 7:
            out[key] = []
        else:
            out[key] = [b"", b"a", "ü"][: int(rng.integers(2, 4))]
    return out


def _expected(value) -> object:
    """What decode_example gives back for a value given to encode_example."""
    def as_bytes(v):
        return v.encode() if isinstance(v, str) else bytes(v)
    if isinstance(value, (bytes, str)):
        return as_bytes(value)
    if isinstance(value, int):
        return [value]
    if isinstance(value, float):
        return [value]
    if value and isinstance(value[0], (bytes, str)):
        return [as_bytes(v) for v in value] if len(value) != 1 else as_bytes(value[0])
    return list(value)


def _assert_same(decoded: dict, features: dict) -> None:
    assert decoded.keys() == features.keys()
    for key, value in features.items():
        got, want = decoded[key], _expected(value)
        if isinstance(want, list) and want and isinstance(want[0], float):
            # float32 bit patterns: -0.0 and NaN compare by bits, not by ==
            assert struct.pack(f"<{len(got)}f", *got) == struct.pack(f"<{len(want)}f", *want), key
        else:
            assert got == want, key


@pytest.mark.parametrize("seed", range(40))
def test_encode_decode_round_trip(seed):
    features = _random_features(np.random.default_rng(seed))
    data = encode_example(features)
    _assert_same(decode_example(data), features)
    assert encode_example(dict(reversed(list(features.items())))) == data  # key order is sorted


def test_encode_accepts_numpy_values():
    data = encode_example({"a": np.int64(-5), "b": np.arange(3), "c": np.float32(0.5),
                           "d": np.array([1.5, 2.5], np.float32), "e": True})
    assert decode_example(data) == {"a": [-5], "b": [0, 1, 2], "c": [0.5], "d": [1.5, 2.5],
                                    "e": [1]}


@pytest.mark.parametrize("features,fragment", [
    ({"a": 1 << 63}, "does not fit in int64"),
    ({"a": [-(1 << 63) - 1]}, "does not fit in int64"),
    ({"a": 1e39}, "float32"),
    ({"a": [1, "x"]}, "only ints"),
    ({"a": None}, "NoneType"),
    ({1: b""}, "must be a str"),
    ({"a": b"", 1: b""}, "must be a str"),
])
def test_encode_rejects_bad_values(features, fragment):
    with pytest.raises(HistofastError, match=fragment):
        encode_example(features)


@pytest.mark.parametrize("data", [
    b"\x0a\x05\x0a\x03\x0a\x01",  # length runs past the end
    b"\x0a",  # truncated varint
    b"\x0f",  # wire type 7
    b"\x0a\x0c\x0a\x0a\x0a\x01a\x12\x05\x12\x03\x0a\x01\x00",  # packed float length 1
    b"\x08" + b"\xff" * 11,  # varint longer than 10 bytes
])
def test_decode_rejects_malformed(data):
    with pytest.raises(HistofastError, match="malformed"):
        decode_example(data)


def test_decode_accepts_unpacked_merged_and_unknown_fields():
    # int64_list{value: 7 (unpacked), value: [-2] (packed)}, float_list split over two
    # FloatList fields (which protobuf merges), an unknown field in each message, a key repeated.
    ints = b"\x08\x07" + b"\x0a\x0a" + b"\xfe" + b"\xff" * 8 + b"\x01" + b"\x10\x05"
    floats_1 = b"\x0d" + struct.pack("<f", 2.5)
    floats_2 = b"\x0a\x04" + struct.pack("<f", -1.0)
    feature_i = b"\x1a" + bytes([len(ints)]) + ints
    feature_f = (b"\x12" + bytes([len(floats_1)]) + floats_1 + b"\x12" + bytes([len(floats_2)])
                 + floats_2 + b"\x20\x01")
    def entry(key: bytes, feature: bytes) -> bytes:
        e = b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(feature)]) + feature
        return b"\x0a" + bytes([len(e)]) + e
    body = entry(b"i", feature_i) + entry(b"f", feature_f) + entry(b"i", b"\x0a\x02\x0a\x00")
    example = b"\x0a" + bytes([len(body)]) + body + b"\x12\x01z"
    assert decode_example(example) == {"i": b"", "f": [2.5, -1.0]}
    assert decode_example(example[:-3]) == {"i": b"", "f": [2.5, -1.0]}
    body = entry(b"i", feature_i)
    assert decode_example(b"\x0a" + bytes([len(body)]) + body) == {"i": [7, -2]}


# ------------------------------------------------------- cross-check with Google's protobuf runtime


def _example_class(packed: bool):
    """tensorflow.Example built from a hand-written descriptor (same field numbers and types
    as tensorflow/core/example/{example,feature}.proto), so TensorFlow is not needed."""
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name=f"hf_example_{packed}.proto",
                                             package="tensorflow", syntax="proto3")

    def message(name, fields, oneof=None):
        m = fdp.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof:
                f.oneof_index = 0
            if ftype in (F.TYPE_FLOAT, F.TYPE_INT64):
                f.options.packed = packed
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, None)])
    message("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
                        ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
                        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List")], "kind")
    features = message("Features", [("feature", 1, F.TYPE_MESSAGE, rep,
                                     ".tensorflow.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt,
                    type_name=".tensorflow.Feature")
    message("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def _fill(example, features: dict) -> None:
    for key, value in features.items():
        feature = example.features.feature[key]
        want = _expected(value)
        if isinstance(want, bytes):
            feature.bytes_list.value.append(want)
        elif want and isinstance(want[0], bytes):
            feature.bytes_list.value.extend(want)
        elif want and isinstance(want[0], float):
            feature.float_list.value.extend(want)
        else:
            feature.int64_list.SetInParent()  # an empty list still selects the int64 kind
            feature.int64_list.value.extend(want)


@pytest.mark.parametrize("seed", range(20))
def test_encoding_matches_protobuf(seed):
    Example = _example_class(packed=True)
    features = _random_features(np.random.default_rng(seed))
    ours = encode_example(features)
    theirs = Example()
    _fill(theirs, features)
    assert Example.FromString(ours) == theirs
    assert theirs.SerializeToString(deterministic=True) == ours  # deterministic: sorted map keys


@pytest.mark.parametrize("seed", range(20))
def test_decode_reads_unpacked_protobuf(seed):
    Example = _example_class(packed=False)
    features = _random_features(np.random.default_rng(seed))
    theirs = Example()
    _fill(theirs, features)
    _assert_same(decode_example(theirs.SerializeToString()), features)


# --------------------------------------------------------------------------- framing and shards


def test_framing_of_a_tiny_record(tmp_path):
    path = tmp_path / "a.tfrecord"
    with TFRecordWriter(path) as w:
        w.write(b"abc")
        w.write(b"")
    length3, length0 = struct.pack("<Q", 3), bytes(8)
    expected = (length3 + struct.pack("<I", ref_mask(ref_crc32c(length3))) + b"abc"
                + struct.pack("<I", ref_mask(ref_crc32c(b"abc")))
                + length0 + struct.pack("<I", ref_mask(ref_crc32c(length0)))
                + struct.pack("<I", 0xA282EAD8))
    assert path.read_bytes() == expected
    assert (tmp_path / "a.tfrecord.idx").read_text() == "0 19\n19 16\n"
    assert list(read_tfrecord(path)) == [b"abc", b""]


def _index_by_walking(path) -> str:
    """The index DALI's tools/tfrecord2idx would write: offset and framed size per record."""
    lines, data, pos = [], open(path, "rb").read(), 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        lines.append(f"{pos} {length + 16}\n")
        pos += length + 16
    return "".join(lines)


def test_shard_index_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    records = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()
               for n in rng.integers(0, 3000, 50)]
    records.append(rng.integers(0, 256, 150_000, dtype=np.uint8).tobytes())
    path = tmp_path / "s.tfrecord"
    with TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
        assert w.num_records == len(records) and w.nbytes == sum(len(r) + 16 for r in records)
        assert not path.exists()  # nothing visible before the block ends
    assert sorted(os.listdir(tmp_path)) == ["s.tfrecord", "s.tfrecord.idx"]
    assert (tmp_path / "s.tfrecord.idx").read_text() == _index_by_walking(path)
    assert list(read_tfrecord(path)) == records


def test_exception_leaves_nothing(tmp_path):
    (tmp_path / "idx").mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        with TFRecordWriter(tmp_path / "s.tfrecord", tmp_path / "idx" / "s.idx") as w:
            w.write(b"x" * 1000)
            assert len(os.listdir(tmp_path)) == 2  # the hidden temporary shard and idx/
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["idx"] and os.listdir(tmp_path / "idx") == []


def test_exception_keeps_an_existing_shard(tmp_path):
    path = tmp_path / "s.tfrecord"
    with TFRecordWriter(path) as w:
        w.write(b"old")
    with pytest.raises(KeyError):
        with TFRecordWriter(path) as w:
            w.write(b"new")
            raise KeyError
    assert list(read_tfrecord(path)) == [b"old"]
    assert sorted(os.listdir(tmp_path)) == ["s.tfrecord", "s.tfrecord.idx"]


def test_overwrite_and_custom_index_path(tmp_path):
    path, index = tmp_path / "s.tfrecord", tmp_path / "sub" / "s.idx"
    index.parent.mkdir()
    for payloads in ([b"1", b"22"], [b"333"]):
        with TFRecordWriter(path, index_path=index) as w:
            for p in payloads:
                w.write(p)
    assert list(read_tfrecord(path)) == [b"333"]
    assert index.read_text() == "0 19\n"
    assert sorted(os.listdir(tmp_path)) == ["s.tfrecord", "sub"]


def test_crash_between_renames_leaves_a_shard_without_index(tmp_path, monkeypatch):
    path = tmp_path / "s.tfrecord"
    with TFRecordWriter(path) as w:
        w.write(b"old")
    replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        with TFRecordWriter(path) as w:
            w.write(b"new")
    # The documented protocol: the stale index is gone, so the pair cannot look complete.
    assert os.listdir(tmp_path) == ["s.tfrecord"]


def test_writer_misuse(tmp_path):
    with pytest.raises(HistofastError, match="must differ from path"):
        TFRecordWriter(tmp_path / "a", tmp_path / "a")
    w = TFRecordWriter(tmp_path / "a")
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(b"x")
    w = TFRecordWriter(tmp_path / "b")
    w.write(b"x")
    w.abort()
    assert sorted(os.listdir(tmp_path)) == ["a", "a.idx"]


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "s.tfrecord"
    with TFRecordWriter(path) as w:
        for n in (10, 2000, 5):
            w.write(bytes([n % 256]) * n)
    return path


@pytest.mark.parametrize("cut", [1, 11, 12, 25, 29, 30, 31, 2045])
def test_truncated_file_names_file_and_offset(shard, cut):
    data = shard.read_bytes()
    shard.write_bytes(data[:cut])
    offset = max(o for o in (0, 26, 2042) if o < cut)  # records of 26, 2016 and 21 bytes
    with pytest.raises(HistofastError, match=rf"s\.tfrecord: record at offset {offset}: truncated"):
        list(read_tfrecord(shard))


def test_corruption_is_detected(shard):
    data = bytearray(shard.read_bytes())
    data[26 + 12 + 100] ^= 1  # a data byte of the second record
    shard.write_bytes(bytes(data))
    records = read_tfrecord(shard)
    assert next(records) == bytes([10]) * 10  # records before the damage still come out
    with pytest.raises(HistofastError, match="offset 26: data CRC mismatch"):
        next(records)
    assert len(list(read_tfrecord(shard, check_crc=False))) == 3
    data[26 + 2] ^= 1  # the second record's length
    shard.write_bytes(bytes(data))
    with pytest.raises(HistofastError, match="offset 26: length CRC mismatch"):
        list(read_tfrecord(shard, check_crc=False))


# ------------------------------------------------------------------------------------- tile schema


def test_tile_example_schema():
    data = tile_example(b"\xff\xd8jpeg", label=-1, slide="TCGA-05-4244", x=1024, y=-0, level=1,
                        tile_size=512, fmt="jpg")
    decoded = decode_example(data)
    assert decoded == {"image": b"\xff\xd8jpeg", "label": [-1], "slide": b"TCGA-05-4244",
                       "x": [1024], "y": [0], "level": [1], "tile_size": [512], "format": b"jpg"}
    assert set(TILE_FEATURES) == set(decoded)
    for key, kind in TILE_FEATURES.items():
        assert isinstance(decoded[key], bytes if kind == "bytes" else list)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"fmt": "jpeg"}, "fmt='jpeg'"),
    ({"label": 1.0}, "label=1.0: must be int64"),
    ({"slide": 3}, "slide=3: must be bytes"),
])
def test_tile_example_rejects_bad_arguments(kwargs, fragment):
    args = dict(label=0, slide="s", x=0, y=0, level=0, tile_size=512, fmt="png") | kwargs
    with pytest.raises(HistofastError, match=fragment):
        tile_example(b"", **args)


# ------------------------------------------------------------------------------ DALI, if installed


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=90)
    return buf.getvalue()


def test_dali_reads_shard(tmp_path):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    rng = np.random.default_rng(0)
    tiles = []
    for i in range(6):
        fmt = "png" if i % 2 == 0 else "jpg"
        image = rng.integers(0, 256, (32 + 8 * i, 48, 3), dtype=np.uint8)
        if fmt == "jpg":  # smooth content, so JPEG error stays small and the check meaningful
            image = np.repeat(np.repeat(image[::8, ::8], 8, 0), 8, 1)[: image.shape[0]]
        tiles.append(dict(image=image, fmt=fmt, label=i - 1, slide=f"slide-{i}", x=512 * i,
                          y=7 * i, level=i % 3, tile_size=32 + 8 * i))
    path = tmp_path / "tiles.tfrecord"
    with TFRecordWriter(path) as w:
        for t in tiles:
            w.write(tile_example(_encode(t["image"], t["fmt"]), label=t["label"], slide=t["slide"],
                                 x=t["x"], y=t["y"], level=t["level"], tile_size=t["tile_size"],
                                 fmt=t["fmt"]))

    @pipeline_def(batch_size=len(tiles), num_threads=1, device_id=None)
    def pipeline():
        r = fn.readers.tfrecord(path=str(path), index_path=str(path) + ".idx",
                                features=tfrecord.dali_features(), random_shuffle=False)
        return (fn.decoders.image(r["image"], device="cpu"), r["label"], r["slide"], r["x"],
                r["y"], r["level"], r["tile_size"], r["format"])

    pipe = pipeline()
    pipe.build()
    images, label, slide, x, y, level, tile_size, fmt = pipe.run()
    for k, t in enumerate(tiles):
        got = np.array(images[k])
        if t["fmt"] == "png":
            np.testing.assert_array_equal(got, t["image"])
        else:
            jpeg = _encode(t["image"], "jpg")
            reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            assert np.abs(got.astype(int) - reference).max() <= 2
        assert int(np.array(label[k])) == t["label"]
        assert bytes(np.array(slide[k])).decode() == t["slide"]
        assert (int(np.array(x[k])), int(np.array(y[k]))) == (t["x"], t["y"])
        assert int(np.array(level[k])) == t["level"]
        assert int(np.array(tile_size[k])) == t["tile_size"]
        assert bytes(np.array(fmt[k])).decode() == t["fmt"]
