"""facecli.data.recordio against the RecordIO files the real MXNet 1.9.1 wrote (../shared/golden/recordio)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from facecli.data.recordio import (
    MAGIC_BYTES,
    IRHeader,
    RecordReader,
    RecordWriter,
    frame,
    frame_images,
    pack,
    read_ms1m_layout,
    read_property,
    unpack,
)
from facecli.errors import CorruptFileError

pytestmark = pytest.mark.shared

# (set name in expected.json, sub-set or None, .rec path relative to golden/recordio, raw records without IRHeader)
SETS = [
    ("ms1m_style", None, "ms1m_style/train.rec", False),
    ("ms1m_face2rec2", None, "ms1m_face2rec2/train.rec", False),
    ("flat", None, "flat/data.rec", False),
    ("multilabel", None, "multilabel/data.rec", False),
    ("label_edge", None, "label_edge/data.rec", False),
    ("im2rec", "passthrough", "im2rec/passthrough.rec", False),
    ("im2rec", "reencode_q95", "im2rec/reencode_q95.rec", False),
    ("multipart", "data", "multipart/data.rec", False),
    ("multipart", "raw", "multipart/raw.rec", True),
]
IDS = [f"{s}-{sub}" if sub else s for s, sub, _, _ in SETS]


@pytest.fixture(scope="module")
def golden(shared_dir: Path) -> Path:
    return shared_dir / "golden" / "recordio"


@pytest.fixture(scope="module")
def expected(golden: Path) -> dict:
    return json.loads((golden / "expected.json").read_text(encoding="utf-8"))


def _set(expected: dict, name: str, sub: str | None) -> dict:
    entry = expected["sets"][name]
    return entry[sub] if sub else entry


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(golden: Path, expected_set: dict, key: str, info: dict) -> bytes:
    """The payload that went into ``mx.recordio.pack`` for one golden record."""
    if info.get("payload_is_source_file_bytes"):
        return (golden / info["source"]).read_bytes()
    if "payload_hex" in info:
        return bytes.fromhex(info["payload_hex"])
    if info["payload_length"] == 0:
        return b""
    big = expected_set["big_payload"]
    assert int(key) == big["key"]
    payload = np.random.RandomState(7).randint(0, 256, size=3001, dtype=np.uint8).tobytes()
    payload = bytearray(payload)
    for off in (0, 100, 104, 1000, 2000, 2996):
        payload[off : off + 4] = MAGIC_BYTES
    assert _sha(bytes(payload)) == big["payload_sha256"]
    return bytes(payload)


def _header(info: dict) -> IRHeader:
    h = info["header"]
    label = h["label"] if h["label_kind"] == "array" else h["label"][0]
    return IRHeader(h["flag"], label, h["id"], h["id2"])


@pytest.mark.parametrize("name,sub,rec,raw", SETS, ids=IDS)
def test_reads_every_golden_record_exactly(golden, expected, name, sub, rec, raw):
    info_set = _set(expected, name, sub)
    reader = RecordReader(golden / rec)
    assert reader.keys == info_set["idx_order"]
    assert len(reader) == info_set["num_records"]
    for key, info in info_set["records"].items():
        assert reader.offset(int(key)) == info["offset"]
        record = reader.read(int(key))
        assert len(record) == info["record_length"]
        assert _sha(record) == info["record_sha256"]
        if raw:
            assert record.hex() == info["record_hex"]
            continue
        header, payload = unpack(record)
        want = info["header"]
        assert (header.flag, header.id, header.id2) == (want["flag"], want["id"], want["id2"])
        if want["flag"] > 0:
            assert header.label.dtype == np.float32
            np.testing.assert_array_equal(header.label, np.asarray(want["label"], dtype=np.float32))
        else:
            assert np.float32(header.label) == np.float32(want["label"][0])
        assert len(payload) == info["payload_length"]
        assert _sha(payload) == info["payload_sha256"]


@pytest.mark.parametrize("name,sub,rec,raw", SETS, ids=IDS)
def test_sequential_scan_without_index_matches_file_order(golden, expected, tmp_path, name, sub, rec, raw):
    info_set = _set(expected, name, sub)
    copy = tmp_path / "noidx.rec"
    shutil.copyfile(golden / rec, copy)  # no .idx beside it
    scanned = list(RecordReader(copy).scan())
    assert [off for off, _ in scanned] == [p["offset"] for p in info_set["physical_records_in_file_order"]]
    by_offset = {info["offset"]: info for info in info_set["records"].values()}
    for off, record in scanned:
        assert _sha(record) == by_offset[off]["record_sha256"]


@pytest.mark.parametrize("name,sub,rec,raw", [s for s in SETS if s[1] != "reencode_q95"], ids=[
    i for i, s in zip(IDS, SETS) if s[1] != "reencode_q95"
])
def test_writer_rebuilds_golden_files_byte_for_byte(golden, expected, tmp_path, name, sub, rec, raw):
    """From the inputs alone (source JPEGs, headers, payload descriptions), not by copying records."""
    info_set = _set(expected, name, sub)
    out = tmp_path / "out.rec"
    with RecordWriter(out) as writer:
        for key in info_set["idx_order"]:
            info = info_set["records"][str(key)]
            if raw:
                record = bytes.fromhex(info["record_hex"])
            else:
                record = pack(_header(info), _payload(golden, info_set, str(key), info))
            writer.write(key, record)
    assert out.read_bytes() == (golden / rec).read_bytes()
    assert out.with_suffix(".idx").read_bytes() == (golden / rec).with_suffix(".idx").read_bytes()


def test_multipart_chunks_match_mxnet(golden, expected):
    """Chunk offsets, flags and lengths of frame() equal what MXNet wrote (including 0-length chunks)."""
    for sub in ("data", "raw"):
        info_set = expected["sets"]["multipart"][sub]
        for key, info in info_set["records"].items():
            if sub == "raw":
                record = bytes.fromhex(info["record_hex"])
            else:
                record = pack(_header(info), _payload(golden, info_set, key, info))
            framed = frame(record)
            pos, chunks = 0, []
            while pos < len(framed):
                lrec = int.from_bytes(framed[pos + 4 : pos + 8], "little")
                length = lrec & ((1 << 29) - 1)
                chunks.append({"offset": info["offset"] + pos, "cflag": lrec >> 29, "length": length})
                pos += 8 + length + (-length & 3)
            assert chunks == [{k: c[k] for k in ("offset", "cflag", "length")} for c in info["chunks"]], key


@pytest.mark.parametrize("name,sub,rec", [
    ("flat", None, "flat/data.rec"), ("im2rec", "passthrough", "im2rec/passthrough.rec"),
])
def test_batched_writer_rebuilds_golden_files_byte_for_byte(golden, expected, tmp_path, name, sub, rec):
    """write_images (the packer's batched path) writes MXNet's files too, in batches of uneven sizes."""
    info_set = _set(expected, name, sub)
    keys = list(info_set["idx_order"])
    infos = [info_set["records"][str(key)] for key in keys]
    assert all(_header(i) == IRHeader(0, i["header"]["label"][0], k, 0) for k, i in zip(keys, infos))
    out = tmp_path / "out.rec"
    with RecordWriter(out) as writer:
        for start, stop in ((0, 1), (1, 4), (4, len(keys))):
            batch = list(zip(keys[start:stop], infos[start:stop]))
            writer.write_images([k for k, _ in batch], [i["header"]["label"][0] for _, i in batch],
                                [_payload(golden, info_set, str(k), i) for k, i in batch])
    assert out.read_bytes() == (golden / rec).read_bytes()
    assert out.with_suffix(".idx").read_bytes() == (golden / rec).with_suffix(".idx").read_bytes()


def test_batched_framing_equals_framing_each_record():
    """frame_images must equal frame(pack(...)) per record whatever holds the magic: payloads (aligned or not),
    a key or a label whose bytes are the magic, at every length modulo 4, in batches with and without cuts."""
    rng = np.random.RandomState(5)
    magic_key = int.from_bytes(MAGIC_BYTES, "little")
    magic_label = float(np.frombuffer(MAGIC_BYTES, dtype="<f4")[0])
    for trial in range(200):
        n = int(rng.randint(0, 6))
        keys = [magic_key if rng.rand() < 0.05 else int(rng.randint(0, 1 << 40)) for _ in range(n)]
        labels = [magic_label if rng.rand() < 0.05 else float(rng.randint(0, 100)) for _ in range(n)]
        payloads = []
        for _ in range(n):
            payload = bytearray(rng.randint(0, 256, size=int(rng.randint(0, 64)), dtype=np.uint8).tobytes())
            if len(payload) >= 4 and rng.rand() < 0.3:
                at = int(rng.randint(0, len(payload) - 3))
                payload[at : at + 4] = MAGIC_BYTES
            payloads.append(bytes(payload))
        framed = [frame(pack(IRHeader(0, lab, key, 0), p)) for key, lab, p in zip(keys, labels, payloads)]
        assert frame_images(keys, labels, payloads) == (b"".join(framed), [len(f) for f in framed]), trial


def test_label_rules_of_pack():
    assert unpack(pack(IRHeader(7, 2.0, 1, 0), b"x"))[0].flag == 0  # scalar forces flag 0
    header, payload = unpack(pack(IRHeader(0, [5.0], 0, 0), b"p"))
    assert header.flag == 1 and header.label.tolist() == [5.0] and payload == b"p"
    header, _ = unpack(pack(IRHeader(0, [], 4, 0), b""))
    assert header.flag == 0 and header.label == 0.0
    header, _ = unpack(pack(IRHeader(0, np.array([0.1, -1.5]), 2, 3), b""))
    assert header.label.dtype == np.float32 and header.label[0] == np.float32(0.1) and header.id2 == 3
    with pytest.raises(ValueError):
        unpack(b"short")


CORRUPT = ["truncated", "bad_magic", "idx_past_end", "idx_inside_record"]


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_files_name_key_and_offset(golden, expected, case):
    info = expected["sets"]["corrupt"][case]
    reader = RecordReader(golden / "corrupt" / f"{case}.rec")
    with pytest.raises(CorruptFileError) as err:
        reader.read(info["bad_key"])
    message = str(err.value)
    assert f"{case}.rec" in message
    assert f"key {info['bad_key']}" in message
    assert f"byte offset {info['bad_offset']}" in message
    good = RecordReader(golden / "flat" / "data.rec")
    for key in info["keys_ok"]:
        if case == "truncated" and key > info["bad_key"]:
            continue
        assert reader.read(key) == good.read(key)
    if case == "truncated":
        for key, offset in info["keys_past_eof"].items():
            with pytest.raises(CorruptFileError, match=f"key {key}: byte offset {offset} is past the end"):
                reader.read(int(key))


def test_scan_of_truncated_file_raises_at_the_cut(golden, expected):
    info = expected["sets"]["corrupt"]["truncated"]
    scanned = []
    with pytest.raises(CorruptFileError, match=f"byte offset {info['bad_offset']}"):
        for offset, _ in RecordReader(golden / "corrupt" / "truncated.rec").scan():
            scanned.append(offset)
    assert len(scanned) == len(info["keys_ok"])


def test_ms1m_layouts_read_like_arcface_torch(golden, expected):
    items = expected["sets"]["ms1m_style"]["arcface_torch_MXFaceDataset_readback"]["items"]
    for folder in ("ms1m_style", "ms1m_face2rec2"):
        keys, labels = read_ms1m_layout(RecordReader(golden / folder / "train.rec"))
        assert keys == [it["key"] for it in items]
        assert labels.dtype == np.int64 and labels.tolist() == [it["label"] for it in items]
        assert read_property(golden / folder) == (4, 112, 112)
    keys, labels = read_ms1m_layout(RecordReader(golden / "flat" / "data.rec"))
    assert keys == list(range(22))
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5 + [4] * 2
    # multipart records (a header split by the magic) take the exact path
    keys, labels = read_ms1m_layout(RecordReader(golden / "multipart" / "data.rec"))
    assert labels.tolist() == [1, 2, -1804698880, 3, 4, 5, 6, 0]


def test_writer_is_atomic_on_error(tmp_path):
    out = tmp_path / "x.rec"
    with pytest.raises(RuntimeError):
        with RecordWriter(out) as writer:
            writer.write(0, b"abc")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with RecordWriter(out) as writer:
        writer.write(5, pack(IRHeader(0, 1.0, 5, 0), b"payload"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.idx", "x.rec"]
    assert (tmp_path / "x.idx").read_text() == "5\t0\n"


def test_reader_pickles_only_paths_and_works_in_dataloader_workers(golden):
    torch = pytest.importorskip("torch")
    reader = RecordReader(golden / "flat" / "data.rec")
    reader.read(0)  # opens the map and the index in this process
    blob = pickle.dumps(reader)
    assert len(blob) < 400
    clone = pickle.loads(blob)
    assert clone.read(21) == reader.read(21)
    expected_sha = [_sha(reader.read(k)) for k in range(22)]

    loader = torch.utils.data.DataLoader(
        _ShaDataset(reader), batch_size=4, num_workers=2, multiprocessing_context="fork", collate_fn=list
    )
    got = [sha for batch in loader for sha in batch]
    assert got == expected_sha


class _ShaDataset:
    """A map-style dataset whose workers re-open the inherited reader's memory map in their own process."""

    def __init__(self, reader: RecordReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> str:
        return _sha(self.reader.read(i))
