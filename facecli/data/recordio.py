"""MXNet RecordIO (``.rec`` + ``.idx``) read and written byte for byte as MXNet 1.9.1 does, without MXNet.

Why here and not ``import mxnet``: MXNet is unmaintained and no longer installs on current Python/numpy, yet
insightface's trainers, DALI and every published face dataset still use its record files.

The format (dmlc-core ``recordio.cc`` + ``mx.recordio``):

* A record is stored as one or more *chunks*. Each chunk is ``uint32 LE magic 0xced7230a``, ``uint32 LE lrecord``
  (``cflag << 29 | length``), ``length`` data bytes, zero padding to a multiple of 4.
* Because a reader re-synchronises on the magic, a writer must never store the magic at a 4-aligned offset: every
  aligned occurrence inside a record ends the current chunk and is dropped (cflag 1 = first chunk, 2 = middle,
  3 = last; 0 = a whole record). The reader re-joins the chunks with the magic between them.
* The ``.idx`` file is text, ``key<TAB>offset`` per record in write order, the offset of the first chunk header.
* :func:`pack`/:func:`unpack` add the ``IRHeader`` (``'<IfQQ'``: flag, label, id, id2); a list/array label is
  stored as ``flag`` float32 values after the header, a scalar label in the header itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import mmap
import numbers
import os
import queue
import struct
import sys
import threading
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple, Sequence

import numpy as np

from facecli.errors import CorruptFileError, UsageError
from facecli.fileio import atomic_path

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_CHUNK_HEADER = struct.Struct("<II")
_LENGTH_MASK = (1 << 29) - 1
_IR_HEADER = struct.Struct("<IfQQ")
IR_HEADER_SIZE = _IR_HEADER.size  # 24
_WHOLE_SCALAR_HEAD = struct.Struct("<IIIfQQ")  # a whole-record chunk header, then an IRHeader with a scalar label
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")  # zeros after data of length % 4 == 0, 1, 2, 3

CFLAG_WHOLE, CFLAG_FIRST, CFLAG_MIDDLE, CFLAG_LAST = 0, 1, 2, 3


class IRHeader(NamedTuple):
    """The image-record header of ``mx.recordio``; ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


# ---------------------------------------------------------------------------------------------------------------
# IRHeader packing (mx.recordio.pack / unpack semantics)


def pack(header: IRHeader | Sequence, payload: bytes) -> bytes:
    """Prefix ``payload`` with an IRHeader exactly as ``mx.recordio.pack`` does.

    A scalar label forces ``flag = 0`` and lives in the header; a list/array label (any length, including 1) sets
    ``flag`` to its size, zeroes the header label and is stored as float32 before the payload. An empty list gives
    ``flag = 0`` and label ``0.0``.
    """
    flag, label, id_, id2 = header
    if type(label) in (float, int) or isinstance(label, numbers.Number):  # exact types first: ABC checks are slow
        prefix = _IR_HEADER.pack(0, float(label), int(id_), int(id2))
        return prefix + bytes(payload)
    values = np.asarray(label, dtype="<f4").ravel()
    prefix = _IR_HEADER.pack(int(values.size), 0.0, int(id_), int(id2))
    return prefix + values.tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record into its IRHeader and payload (``mx.recordio.unpack`` semantics).

    Raises ValueError when the record is too short for its header; callers that know the file and key turn it
    into a CorruptFileError.
    """
    header, start = unpack_header(record)
    return header, bytes(record[start:])


def unpack_header(record: bytes | memoryview) -> tuple[IRHeader, int]:
    """The IRHeader of ``record`` and the offset where its payload starts (no payload copy)."""
    if len(record) < IR_HEADER_SIZE:
        raise ValueError(f"record of {len(record)} bytes is shorter than the {IR_HEADER_SIZE}-byte IRHeader")
    flag, label, id_, id2 = _IR_HEADER.unpack_from(record, 0)
    if flag == 0:
        return IRHeader(0, label, id_, id2), IR_HEADER_SIZE
    end = IR_HEADER_SIZE + 4 * flag
    if len(record) < end:
        raise ValueError(f"IRHeader flag {flag} needs {4 * flag} label bytes but the record has {len(record) - 24}")
    values = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_HEADER_SIZE).astype(np.float32)
    return IRHeader(flag, values, id_, id2), end


def first_label(label: float | np.ndarray) -> float:
    """The class label of an image record: the scalar, or ``label[0]`` of an array label (face2rec2 layout)."""
    if isinstance(label, np.ndarray):
        return float(label[0])
    return float(label)


# ---------------------------------------------------------------------------------------------------------------
# Framing


def _padding(length: int) -> int:
    return -length & 3


def frame(record: bytes) -> bytes:
    """The bytes MXNet's writer stores for one record: chunk header(s), data, zero padding.

    Every 4-aligned occurrence of the magic ends a chunk and is dropped (see the module docstring).
    """
    record = bytes(record)
    cuts = []
    pos = record.find(MAGIC_BYTES)
    while pos != -1:
        if pos & 3 == 0:
            cuts.append(pos)
            pos = record.find(MAGIC_BYTES, pos + 4)
        else:
            pos = record.find(MAGIC_BYTES, pos + 1)
    if not cuts:
        return _chunk(CFLAG_WHOLE, record)
    parts = []
    start = 0
    for i, cut in enumerate(cuts):
        parts.append(_chunk(CFLAG_FIRST if i == 0 else CFLAG_MIDDLE, record[start:cut]))
        start = cut + 4
    parts.append(_chunk(CFLAG_LAST, record[start:]))
    return b"".join(parts)


def frame_images(keys: Sequence[int], labels: Sequence[float], payloads: Sequence[bytes]) -> tuple[bytes, list[int]]:
    """The framed bytes of the records ``pack(IRHeader(0, label, key, 0), payload)``, and each one's framed size.

    Byte for byte ``frame(pack(...))`` of each record, concatenated, without building every record and scanning
    it for the magic one at a time: the batch is framed as if no record held the magic, then one vectorised count
    of the magic at 4-aligned offsets checks that. Framing keeps every record 4-aligned, so each record's aligned
    offsets are aligned in the batch; a chunk's length word is below 2**29 and its padding is zeros, so neither
    can equal the magic; hence exactly one magic per record (its chunk header) means no record needs cutting.
    Otherwise the batch is framed again record by record.
    """
    pieces: list[bytes] = []
    sizes: list[int] = []
    head = _WHOLE_SCALAR_HEAD.pack
    for key, label, payload in zip(keys, labels, payloads):
        length = IR_HEADER_SIZE + len(payload)
        pad = _PADDING[length & 3]
        pieces += (head(MAGIC, length & _LENGTH_MASK, 0, label, key, 0), payload, pad)  # too long: see below
        sizes.append(8 + length + len(pad))
    block = b"".join(pieces)
    fits = not sizes or max(sizes) <= _LENGTH_MASK  # a longer record would need chunks (or fail) as frame() says
    if fits and np.count_nonzero(np.frombuffer(block, dtype="<u4") == MAGIC) == len(sizes):
        return block, sizes
    framed = [frame(pack(IRHeader(0, label, key, 0), payload)) for key, label, payload in zip(keys, labels, payloads)]
    return b"".join(framed), [len(f) for f in framed]


def _chunk(cflag: int, data: bytes) -> bytes:
    length = len(data)
    if length > _LENGTH_MASK:
        raise ValueError(f"record chunk of {length} bytes exceeds RecordIO's 2**29-1 limit")
    return _CHUNK_HEADER.pack(MAGIC, cflag << 29 | length) + data + b"\0" * _padding(length)


def read_framed(buf, offset: int, *, path: str | os.PathLike = "?", key: object = None) -> tuple[bytes, int]:
    """Read the record whose first chunk header is at ``offset`` of ``buf``; return it and the end offset.

    ``buf`` is any bytes-like object (an mmap, bytes). Bad magic, a chunk running past the end, an out-of-range
    offset or an impossible chunk sequence raise CorruptFileError naming ``path``, ``key`` and the byte offset.
    """
    size = len(buf)
    where = f"{path}" + (f", key {key}" if key is not None else "")
    if offset < 0 or offset + 8 > size:
        raise CorruptFileError(
            f"{where}: byte offset {offset} is past the end of the file ({size} bytes); the .idx does not match the .rec"
        )
    parts: list[bytes] = []
    pos = offset
    first = True
    while True:
        if pos + 8 > size:
            raise CorruptFileError(f"{where}: record at byte offset {offset} is truncated at byte {pos} (file ends)")
        magic, lrecord = _CHUNK_HEADER.unpack_from(buf, pos)
        if magic != MAGIC:
            raise CorruptFileError(
                f"{where}: bad magic {magic:#010x} at byte offset {pos} (expected {MAGIC:#010x}); "
                "not the start of a record"
            )
        cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
        data_end = pos + 8 + length
        if data_end + _padding(length) > size:
            raise CorruptFileError(
                f"{where}: record at byte offset {offset} is truncated: its chunk at byte {pos} needs {length} "
                f"bytes but the file ends at {size}"
            )
        if first and cflag in (CFLAG_MIDDLE, CFLAG_LAST):
            raise CorruptFileError(
                f"{where}: byte offset {pos} is in the middle of a multipart record (chunk flag {cflag})"
            )
        if not first and cflag in (CFLAG_WHOLE, CFLAG_FIRST):
            raise CorruptFileError(
                f"{where}: multipart record at byte offset {offset} is interrupted by a new record at byte {pos}"
            )
        if cflag > CFLAG_LAST:
            raise CorruptFileError(f"{where}: invalid chunk flag {cflag} at byte offset {pos}")
        data = buf[pos + 8 : data_end]
        pos = data_end + _padding(length)
        if cflag == CFLAG_WHOLE:
            return bytes(data), pos
        parts.append(bytes(data))
        if cflag == CFLAG_LAST:
            return MAGIC_BYTES.join(parts), pos
        first = False


# ---------------------------------------------------------------------------------------------------------------
# Index files


def read_index(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse an ``.idx`` file into (keys, offsets) int64 arrays in file order."""
    idx_path = Path(idx_path)
    try:
        text = idx_path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"index file not found: {idx_path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read index file {idx_path}: {exc.strerror or exc}") from None
    lines = text.splitlines()
    if all(len(line.split()) == 2 for line in lines if not line.isspace() and line):
        fields = text.split()
        try:  # fast path: every line is two integers
            pairs = np.array(fields, dtype=np.bytes_).astype(np.int64).reshape(-1, 2)
            return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])
        except (ValueError, OverflowError):
            pass  # the line-by-line pass below names the bad line
    keys = np.empty(len(lines), dtype=np.int64)
    offsets = np.empty(len(lines), dtype=np.int64)
    n = 0
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            keys[n] = int(fields[0])
            offsets[n] = int(fields[1])
        except (ValueError, OverflowError):
            raise CorruptFileError(
                f"{idx_path}: line {lineno} is not 'key<TAB>offset': {line[:60]!r}"
            ) from None
        n += 1
    return keys[:n], offsets[:n]


# ---------------------------------------------------------------------------------------------------------------
# Reader


def default_idx_path(rec_path: str | os.PathLike) -> Path:
    return Path(rec_path).with_suffix(".idx")


class _Index(NamedTuple):
    """A ``.idx`` file read: keys and offsets in file order, and the keys sorted for lookups (last line wins)."""

    keys: np.ndarray
    offsets: np.ndarray
    sorted_keys: np.ndarray
    sorted_pos: np.ndarray


class RecordReader:
    """Random access (through the ``.idx``) and sequential scans of a ``.rec`` file, memory-mapped.

    Safe in PyTorch DataLoader workers: pickling keeps only the paths, and the index and the memory map are
    (re)opened lazily in whichever process uses the reader.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else default_idx_path(rec_path)
        if not self.rec_path.is_file():
            raise UsageError(f"record file not found: {self.rec_path}")
        self._reset()

    def _reset(self) -> None:
        self._pid: int | None = None
        self._file: BinaryIO | None = None
        self._mm: mmap.mmap | bytes | None = None
        self._idx: _Index | None = None

    # pickling: only the paths travel to worker processes
    def __getstate__(self) -> dict:
        return {"rec_path": self.rec_path, "idx_path": self.idx_path}

    def __setstate__(self, state: dict) -> None:
        self.rec_path = state["rec_path"]
        self.idx_path = state["idx_path"]
        self._reset()

    @property
    def buffer(self) -> mmap.mmap | bytes:
        """The memory-mapped file (opened on first use in the current process)."""
        if self._mm is None or self._pid != os.getpid():
            return self._open()
        return self._mm

    def _open(self) -> mmap.mmap | bytes:
        self._close_map()
        try:
            fh = open(self.rec_path, "rb")
        except OSError as exc:
            raise UsageError(f"cannot open {self.rec_path}: {exc.strerror or exc}") from None
        size = os.fstat(fh.fileno()).st_size
        mapped: mmap.mmap | bytes
        if size == 0:
            fh.close()
            mapped = b""
        else:
            self._file = fh
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._mm = mapped
        self._pid = os.getpid()
        return mapped

    def _index(self) -> _Index:
        if self._idx is not None:
            return self._idx
        if not self.idx_path.is_file():
            raise UsageError(f"index file not found: {self.idx_path} (random access needs the .idx; scan() does not)")
        keys, offsets = read_index(self.idx_path)
        # like MXNet's dict, a key listed twice resolves to its last line
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
        self._idx = _Index(keys, offsets, sorted_keys[last], order[last])
        return self._idx

    @property
    def keys(self) -> list[int]:
        """Every key in ``.idx`` order."""
        return self._index().keys.tolist()

    @property
    def key_array(self) -> np.ndarray:
        """The keys as an int64 array (``.idx`` order); cheaper than :attr:`keys` for millions of records."""
        return self._index().keys

    @property
    def offset_array(self) -> np.ndarray:
        """Byte offsets matching :attr:`key_array`."""
        return self._index().offsets

    def __len__(self) -> int:
        return len(self._index().keys)

    def __contains__(self, key: int) -> bool:
        sorted_keys = self._index().sorted_keys
        i = np.searchsorted(sorted_keys, key)
        return bool(i < len(sorted_keys) and sorted_keys[i] == key)

    def offset(self, key: int) -> int:
        """The byte offset of ``key``; KeyError when the index does not list it."""
        index = self._index()
        i = int(np.searchsorted(index.sorted_keys, key))
        if i >= len(index.sorted_keys) or index.sorted_keys[i] != key:
            raise KeyError(key)
        return int(index.offsets[index.sorted_pos[i]])

    def offsets_of(self, keys: np.ndarray) -> np.ndarray:
        """Byte offsets of many keys at once (vectorised); KeyError naming the first key the index lacks."""
        index = self._index()
        keys = np.asarray(keys, dtype=np.int64)
        pos = np.searchsorted(index.sorted_keys, keys)
        found = pos < len(index.sorted_keys)
        found[found] = index.sorted_keys[pos[found]] == keys[found]
        if not found.all():
            raise KeyError(f"{self.rec_path}: key {int(keys[~found][0])} is not in {self.idx_path.name}")
        return index.offsets[index.sorted_pos[pos]]

    def read(self, key: int) -> bytes:
        """The record stored under ``key`` (chunks re-joined); CorruptFileError when the file is damaged."""
        try:
            offset = self.offset(key)
        except KeyError:
            raise KeyError(f"{self.rec_path}: key {key} is not in {self.idx_path.name}") from None
        return self.read_at(offset, key=key)

    def read_at(self, offset: int, key: object = None) -> bytes:
        """The record whose first chunk header is at byte ``offset``."""
        record, _ = read_framed(self.buffer, offset, path=self.rec_path, key=key)
        return record

    def read_header(self, key: int) -> tuple[IRHeader, bytes]:
        """``unpack(read(key))`` with a clear error for records too short for an IRHeader."""
        record = self.read(key)
        try:
            return unpack(record)
        except ValueError as exc:
            raise CorruptFileError(f"{self.rec_path}, key {key}, byte offset {self.offset(key)}: {exc}") from None

    def scan(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Every record in file order as ``(offset, record)``, without the ``.idx``; stops at the end of file."""
        buf = self.buffer
        pos = start
        size = len(buf)
        while pos < size:
            record, end = read_framed(buf, pos, path=self.rec_path)
            yield pos, record
            pos = end

    @property
    def size(self) -> int:
        return len(self.buffer)

    def _close_map(self) -> None:
        if isinstance(self._mm, mmap.mmap) and self._pid == os.getpid():
            with contextlib.suppress(BufferError):
                self._mm.close()
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._mm = None
        self._file = None

    def close(self) -> None:
        self._close_map()

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# ---------------------------------------------------------------------------------------------------------------
# Writer


class RecordWriter:
    """Write records and their ``.idx`` atomically: temp files beside the targets, renamed at :meth:`close`.

    On an exception inside ``with RecordWriter(...)`` both temp files are removed and no target is touched.
    Output is a pure function of the ``write`` calls, so the same input gives byte-identical files.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else default_idx_path(rec_path)
        self._stack = contextlib.ExitStack()
        try:
            tmp_rec = self._stack.enter_context(atomic_path(self.rec_path))
            tmp_idx = self._stack.enter_context(atomic_path(self.idx_path))
            self._rec = _BackgroundSink(self._stack.enter_context(open(tmp_rec, "wb", buffering=0)))
            self._stack.callback(self._rec.close)
            self._idx = self._stack.enter_context(open(tmp_idx, "w", encoding="ascii", newline="\n"))
        except BaseException:
            self._stack.__exit__(*sys.exc_info())
            raise
        self.tell = 0
        self.count = 0
        self._closed = False
        self._idx_hash = hashlib.sha256()

    def write(self, key: int, record: bytes) -> int:
        """Append ``record`` under ``key``; returns its byte offset."""
        return self.write_framed(key, frame(record))

    def write_images(self, keys: Sequence[int], labels: Sequence[float], payloads: Sequence[bytes]) -> None:
        """``write(key, pack(IRHeader(0, label, key, 0), payload))`` for a batch: framing, ``.idx`` lines and
        hashing once per batch instead of once per image."""
        self._append(keys, *frame_images(keys, labels, payloads))

    def write_framed(self, key: int, framed: bytes) -> int:
        """Append bytes that are already framed (copied from another ``.rec``); returns the offset."""
        offset = self.tell
        self._append([key], framed, [len(framed)])
        return offset

    def _append(self, keys: Sequence[int], framed: bytes, sizes: Sequence[int]) -> None:
        """Write framed records of the given sizes, in order, and their ``.idx`` lines (key, byte offset)."""
        offsets = itertools.accumulate(sizes, initial=self.tell)
        lines = "".join([f"{int(key)}\t{offset}\n" for key, offset in zip(keys, offsets)])
        self._rec.write(framed)
        self._idx.write(lines)
        self._idx_hash.update(lines.encode("ascii"))
        self.tell += len(framed)
        self.count += len(sizes)

    @property
    def rec_sha256(self) -> str:
        """sha256 of the ``.rec`` (computed while writing, no re-read); final once the writer is closed."""
        return self._rec.hexdigest()

    @property
    def idx_sha256(self) -> str:
        return self._idx_hash.hexdigest()

    def close(self) -> None:
        """Flush and rename both files into place."""
        if not self._closed:
            self._closed = True
            self._stack.__exit__(None, None, None)

    def abort(self) -> None:
        """Remove the temp files; the targets are left as they were."""
        if not self._closed:
            self._closed = True
            try:
                raise _Aborted
            except _Aborted:
                self._stack.__exit__(*sys.exc_info())

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _BackgroundSink:
    """Writes and hashes the ``.rec`` on a thread, handed over in lists of about 1 MiB.

    File writes, sha256 and joining large buffers release the GIL, so they overlap with reading and checking the
    next images; the queue is bounded, so memory stays at a few MiB whatever the dataset size.
    """

    BLOCK = 1 << 20

    def __init__(self, fh) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._pending: list[bytes] = []
        self._size = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="facecli-rec-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            pieces = self._queue.get()
            if pieces is None:
                return
            if self._error is None:
                try:
                    if len(pieces) > 16:  # small records (identity records, merges): one joined write
                        pieces = [b"".join(pieces)]
                    for piece in pieces:  # batches of images: written as they are, no joined copy
                        self._fh.write(piece)
                        self._hash.update(piece)
                except BaseException as exc:  # reported to the producer on its next write or close
                    self._error = exc

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._size += len(data)
        if self._size >= self.BLOCK:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._error is not None:
            raise self._error
        if self._pending:
            self._queue.put(self._pending)
            self._pending, self._size = [], 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._hand_over()
        finally:
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _Aborted(Exception):
    """Raised inside the writer only to make the atomic contexts discard their temp files."""


# ---------------------------------------------------------------------------------------------------------------
# insightface layouts


def read_ms1m_layout(reader: RecordReader) -> tuple[list[int], np.ndarray]:
    """The image keys and int64 class labels of a record file, in the order a trainer should index them.

    * insightface MS1M layout (``MXFaceDataset``): record 0 has ``flag > 0`` and label ``[a, b]``; the images
      are keys ``1 .. a-1``. Image labels may be scalars or arrays (face2rec2: ``[label, aligned]``), the class
      is ``label[0]``.
    * flat layout (im2rec, ``--layout-out flat``): every key in ``.idx`` order, the label from its header.
    """
    image_keys = ms1m_image_keys(reader)
    labels = _labels_of(reader, image_keys)
    return image_keys.tolist(), labels


def ms1m_image_keys(reader: RecordReader) -> np.ndarray:
    """The image keys of :func:`read_ms1m_layout`, from record 0's header alone (no image record is read)."""
    if 0 in reader:
        header, _ = reader.read_header(0)
        if header.flag > 0:
            return np.arange(1, int(first_label(header.label)), dtype=np.int64)
    return reader.key_array


def _labels_of(reader: RecordReader, image_keys: np.ndarray) -> np.ndarray:
    """Class labels of many records, vectorised over the common single-chunk case."""
    buf = reader.buffer
    n = len(image_keys)
    labels = np.empty(n, dtype=np.int64)
    if n == 0:
        return labels
    try:
        offsets = reader.offsets_of(image_keys)
    except KeyError as exc:
        raise CorruptFileError(f"{exc.args[0]} (the header record promises it)") from None
    size = len(buf)
    arr = np.frombuffer(buf, dtype=np.uint8)
    fast = offsets + 8 + IR_HEADER_SIZE + 4 <= size
    fast_idx = np.nonzero(fast)[0]
    if len(fast_idx):
        base = offsets[fast_idx]
        gather = base[:, None] + np.arange(8 + IR_HEADER_SIZE + 4)[None, :]
        head = arr[gather]  # (m, 36): chunk header, IRHeader, first label float
        magic = head[:, 0:4].copy().view("<u4")[:, 0]
        lrec = head[:, 4:8].copy().view("<u4")[:, 0]
        flag = head[:, 8:12].copy().view("<u4")[:, 0]
        hlabel = head[:, 12:16].copy().view("<f4")[:, 0]
        alabel = head[:, 32:36].copy().view("<f4")[:, 0]
        length = lrec & _LENGTH_MASK
        ok = (magic == MAGIC) & (lrec >> 29 == 0) & (length >= IR_HEADER_SIZE + 4 * np.minimum(flag, 1))
        ok &= base + 8 + length <= size
        value = np.where(flag > 0, alabel, hlabel)
        labels[fast_idx[ok]] = value[ok].astype(np.int64)
        fast[fast_idx[~ok]] = False
    for i in np.nonzero(~fast)[0]:  # multipart, damaged or tiny records: the exact path, with its clear errors
        header, _ = reader.read_header(int(image_keys[i]))
        labels[i] = int(first_label(header.label))
    return labels


#: The record file name insightface (``MXFaceDataset``), DALI recipes and arcface_torch configs expect.
DEFAULT_REC_NAME = "train"


def sidecar_path(rec_path: str | os.PathLike, base: str) -> Path:
    """The file ``base`` (``property``, ``labels.csv``, ``records.csv``, ``pack.json``) that belongs to a record file.

    ``train.rec`` keeps insightface's fixed names (``property`` beside it), so every tool that reads
    ``train.rec/train.idx/property`` works unchanged; a pack with another name, ``NAME.rec``, gets ``NAME.base``.
    One folder can then hold several packs without one overwriting another's labels.
    """
    rec_path = Path(rec_path)
    stem = rec_path.name[: -len(".rec")] if rec_path.name.endswith(".rec") else rec_path.name
    return rec_path.parent / (base if stem == DEFAULT_REC_NAME else f"{stem}.{base}")


def read_property(folder: str | os.PathLike) -> tuple[int, int, int]:
    """``(num_classes, height, width)`` from the ``property`` file of an insightface dataset folder."""
    path = Path(folder)
    if path.is_dir():
        path = path / "property"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UsageError(f"property file not found: {path}") from None
    try:
        fields = [int(v) for v in text.split(",")]
        if len(fields) != 3:
            raise ValueError
    except ValueError:
        raise CorruptFileError(f"{path}: expected 'num_classes,height,width', found {text[:60]!r}") from None
    return fields[0], fields[1], fields[2]


def write_property(folder: str | os.PathLike, num_classes: int, height: int, width: int,
                   name: str = DEFAULT_REC_NAME) -> Path:
    """Write ``num_classes,H,W\\n`` (insightface's format) atomically for the pack ``name``; returns the path."""
    from facecli.fileio import atomic_write_text

    path = sidecar_path(Path(folder) / f"{name}.rec", "property")
    atomic_write_text(path, f"{num_classes},{height},{width}\n")
    return path
