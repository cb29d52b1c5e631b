"""RAW and OUT of ``align`` on object storage: fsspec URLs (``s3://``, ``gs://``, ``memory://``, ``file://``).

A value with a scheme (``proto://...``) goes through fsspec (the optional ``[cloud]`` extra, plus the protocol's own
package such as s3fs or gcsfs); everything else is a local path and keeps the local code and its guarantees.

Object stores have no rename and no append, but one PUT is atomic: a crop or a manifest appears whole or not at
all, which is what the local code gets from writing a temporary file and renaming it. So a remote OUT gets each
crop in one PUT, and its manifest is written in a local *stage* folder and then uploaded in one PUT. The journal
(see :mod:`facecli.align.manifest`) cannot be appended to in place; it stays in the stage folder, a fixed folder per
OUT URL under the temporary directory, so a run resumed on the same machine keeps everything an interrupted one
finished. Elsewhere it only costs time: crops without a record are redone, never trusted.

Inputs are read by whichever worker process computes them (the filesystem object travels with the job), except
for ``memory://``, which lives in one process: such runs stay in it.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from facecli.errors import FacecliError, UsageError
from facecli.imageio import ImageReadError, file_size_error

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
INSTALL_HINT = "pip install 'facecli[cloud]'"


def is_url(value: Any) -> bool:
    """True for ``proto://...`` strings (object storage through fsspec); local paths are never URLs."""
    return isinstance(value, str) and bool(_URL.match(value))


def open_url(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and the path inside it for ``url`` (no trailing slash); one-line errors when fsspec
    or the protocol's package (s3fs, gcsfs, ...) is missing, or the protocol is unknown."""
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"{url}: object storage URLs need fsspec: {INSTALL_HINT}") from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as exc:  # fsspec knows the protocol, its package is not installed ("Install s3fs to ...")
        raise UsageError(f"{url}: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"{url}: {exc}") from None
    return fs, path.rstrip("/") or path


def _join(root: str, rel: str) -> str:
    return f"{root}/{rel}" if root else rel


def in_one_process(fs: Any) -> bool:
    """True for filesystems that exist only in this process (``memory://``): worker processes would see none of
    their files."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "memory" in protocols


@dataclass(frozen=True)
class RemoteFile:
    """One input file on object storage: its filesystem, path and size (from the listing)."""

    fs: Any
    path: str
    size: int

    def read_bytes(self, limit: int) -> bytes:
        """The file's bytes; :class:`ImageReadError` (``too_large``, never read; ``unreadable``) otherwise."""
        if self.size > limit:
            raise file_size_error(self.size, limit)
        try:
            return bytes(self.fs.cat_file(self.path))
        except FileNotFoundError:
            raise ImageReadError("unreadable", "file not found") from None
        except PermissionError:
            raise ImageReadError("unreadable", "permission denied") from None
        except Exception as exc:  # the storage's own errors (network, credentials): this file's row says which
            raise ImageReadError("unreadable", f"cannot read file: {type(exc).__name__}: {exc}") from None


class RemoteFolder:
    """RAW or OUT given as a URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") if not url.endswith("://") else url
        self.fs, self.root = open_url(url)
        self._stage: Path | None = None
        self._parents: set[str] = set()

    def __str__(self) -> str:
        return self.url

    def path(self, rel: str) -> str:
        return _join(self.root, rel)

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def contains(self, other: RemoteFolder) -> bool:
        """``other`` is this folder or inside it (same storage)."""
        if type(self.fs) is not type(other.fs):
            return False
        return other.root == self.root or other.root.startswith(self.root.rstrip("/") + "/")

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """One filesystem call; a failure of the storage (network, credentials, a missing bucket) is one line."""
        try:
            return getattr(self.fs, method)(*args, **kwargs)
        except (FacecliError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise FacecliError(f"cannot {what} {self.url}: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------------ as RAW

    def exists(self) -> bool:
        return bool(self._call("read", "exists", self.root))

    def is_dir(self) -> bool:
        return bool(self._call("read", "isdir", self.root))

    def files(self) -> list[tuple[str, RemoteFile]]:
        """Every file under this folder (or this one file): (path relative to the folder, the file), sorted. Hidden
        entries (a name starting with ``.`` anywhere in the path) are left out, as locally."""
        if not self.is_dir():
            info = self._call("read", "info", self.root)
            return [(PurePosixPath(self.root).name, RemoteFile(self.fs, self.root, int(info.get("size") or 0)))]
        found = self._call("list", "find", self.root, detail=True)
        prefix = self.root.rstrip("/") + "/"
        result = []
        for path, info in found.items():
            rel = path[len(prefix):] if path.startswith(prefix) else path
            if info.get("type", "file") != "file" or not rel or any(p.startswith(".") for p in rel.split("/")):
                continue
            result.append((rel, RemoteFile(self.fs, path, int(info.get("size") or 0))))
        return sorted(result, key=lambda item: item[0])

    # ------------------------------------------------------------------ as OUT

    def prepare(self) -> None:
        """OUT must not be a file; it is created where the storage has folders (``file://``)."""
        if self._call("read", "isfile", self.root):
            raise FacecliError(f"output path exists and is not a folder: {self.url}")
        self._call("create", "makedirs", self.root, exist_ok=True)
        self._parents.add(self.root)

    def stage(self) -> Path:
        """The local folder for this OUT's journals and manifests before upload: the same one for every run on this
        machine with this OUT URL, so an interrupted run's journal is found again."""
        if self._stage is not None:
            return self._stage
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / "facecli-align-stage" / digest
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FacecliError(f"cannot create the local stage folder {folder}: {exc.strerror or exc}") from None
        self._stage = folder
        return folder

    def clear_stage(self, name: str) -> None:
        """Remove the staged copy of manifest ``name`` once it is uploaded. The (empty) folder stays: another shard
        of this OUT on this machine may be about to put its journal there."""
        (self.stage() / name).unlink(missing_ok=True)

    def is_file(self, rel: str) -> bool:
        return bool(self._call("read", "isfile", self.path(rel)))

    def download(self, rel: str, target: Path) -> None:
        self._call("read", "get_file", self.path(rel), str(target))

    def upload(self, source: Path, rel: str) -> None:
        self._call("write", "put_file", str(source), self.path(rel))

    def read_bytes(self, rel: str, limit: int) -> bytes | None:
        """A file's bytes, or None when it is missing, larger than ``limit`` or unreadable."""
        try:
            if int(self.fs.size(self.path(rel))) > limit:
                return None
            return bytes(self.fs.cat_file(self.path(rel)))
        except Exception:
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """One PUT (parents created first where the storage has folders). Raises OSError on failure."""
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        try:
            if parent not in self._parents:
                self.fs.makedirs(parent, exist_ok=True)
                self._parents.add(parent)
            self.fs.pipe_file(target, data)
        except OSError:
            raise
        except Exception as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from None

    def remove(self, rel: str) -> None:
        if self.is_file(rel):
            self._call("remove a stale crop in", "rm_file", self.path(rel))

    def names(self) -> list[str]:
        """Names of the files directly in this folder."""
        if not self._call("read", "isdir", self.root):
            return []
        return [PurePosixPath(p).name for p in self._call("list", "ls", self.root, detail=False)]
