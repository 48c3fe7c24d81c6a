"""Every file soundloc writes goes through here, under one rule that never destroys a user's file:

1. an output is never one of the run's inputs (the same file, also through a symlink, a hard
   link or a path through a folder that does not exist), nor a file inside an input folder (a
   dataset's CSV and videos, an export's manifest and graphs), nor the same file as another
   output; an output folder never holds an input (``check_outputs``, called before any work).
   Every output is identified exactly as ``Staged`` will write it: its path with symlinks
   resolved and ``..`` applied (``os.path.realpath``), then stat-ed;
2. a path is replaced only once the run has produced what replaces it: the new content goes to
   a temporary file beside the real file (symlinks followed) and is renamed over it when
   complete (``Staged``), so a reader, a crash or a failed run sees the old file or the new one;
3. nothing but a regular file is ever renamed over: a FIFO or a character device (a pipe to
   another program, /dev/null) is written into directly, never replaced.

Also file checksums.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any
from .errors import SoundlocError

PathLike = str | os.PathLike


class OutputError(SoundlocError, ValueError):
    """An output that would destroy an input or another output, or cannot be one; one line."""


def check_outputs(outputs: Iterable[PathLike | None], inputs: Iterable[PathLike | None] = (),
                  *, dirs: Iterable[PathLike | None] = (), updates: Iterable[PathLike | None] = ()) -> None:
    """Refuse, before any work, outputs that are inputs or each other, and outputs of the wrong kind.

    ``outputs`` are files (an existing directory there is refused), ``dirs`` output folders (an
    existing non-directory there is refused); ``None`` entries are skipped. An input folder
    protects every file already inside it; an output folder may not hold an input (what the
    command writes there could replace it). ``updates`` are outputs the command also reads and
    rewrites on purpose (annotate's resumable ``--out``): they may lie inside an input folder.
    Inputs that do not exist (URLs, device specs such as ``v4l2:/dev/video0``) cannot collide
    and are ignored.
    """
    files = [Path(p) for p in outputs if p is not None]
    folders = [Path(p) for p in dirs if p is not None]
    rewritten = {_target(Path(p)) for p in updates if p is not None}
    for path in files:
        if os.path.isdir(_target(path)):
            raise OutputError(f"{path} is a directory; give a file name to write")
    for path in folders:
        if os.path.exists(_target(path)) and not os.path.isdir(_target(path)):
            raise OutputError(f"{path} exists and is not a directory; give a folder to write into")
    seen: dict[Any, Path] = {}
    for path in (p for p in files if not _is_char_device(p)):  # /dev/null may take several
        key = _identity(path)
        if key in seen:
            raise OutputError(f"{seen[key]} and {path} are the same file; give each output its own name")
        seen[key] = path
    for source in (Path(p) for p in inputs if p is not None):
        if not os.path.exists(_target(source)):
            continue
        for path in files:
            _refuse_file_over_input(path, source, exempt=_target(path) in rewritten)
        for folder in folders:
            _refuse_folder_over_input(folder, source)


def _refuse_file_over_input(path: Path, source: Path, *, exempt: bool) -> None:
    if _identity(source) == _identity(path):
        raise OutputError(f"output {path} is the input {source}; writing it would destroy the input")
    target, folder = _target(path), _target(source)
    if (not exempt and os.path.isdir(folder) and os.path.lexists(target) and not _is_char_device(path)
            and _inside(target, folder)):
        raise OutputError(f"output {path} would replace a file inside the input folder {source}; "
                          "write it elsewhere")


def _refuse_folder_over_input(folder: Path, source: Path) -> None:
    out, read = _target(folder), _target(source)
    if out == read or _inside(read, out):
        raise OutputError(f"output folder {folder} holds the input {source}; writing into it could "
                          "destroy the input, give another folder")


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies (at any depth) under ``folder``; both already resolved."""
    return path != folder and os.path.commonpath([path, folder]) == folder


def _target(path: Path) -> str:
    """The path ``Staged`` writes for ``path``: symlinks followed, ``..`` applied, absolute."""
    return os.path.realpath(path)


def _identity(path: Path) -> Any:
    """What makes two paths the same file: device and inode of the path as ``Staged`` will
    write it when that exists (links resolved, also through folders that do not exist), else
    that resolved path (two new outputs of one name)."""
    target = _target(path)
    try:
        st = os.stat(target)
    except OSError:
        return target
    return (st.st_dev, st.st_ino)


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


class Staged:
    """The new content of ``path`` while it is being written, published by ``commit()``.

    ``temp`` is where to write: a fresh temporary file beside the real file (same filesystem,
    so the rename is atomic; ``prefix + random + suffix``), or, for a FIFO or a character
    device, the node itself. ``commit()`` fsyncs the file, renames it (keeping an existing file's
    permissions) and fsyncs the folder; ``discard()`` deletes the temporary file; a node is left
    as it is by both. As a context manager: commit when the block ends, discard if it raises.
    A path that cannot be written raises ``OSError`` (a directory, a missing folder with
    ``make_parent=False``, no permission), as ``open`` would.
    """

    def __init__(self, path: PathLike, *, prefix: str | None = None, suffix: str = ".tmp",
                 make_parent: bool = True) -> None:
        self.path = Path(path)
        self.target = Path(os.path.realpath(self.path))
        try:
            st: os.stat_result | None = os.stat(self.target)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "it is a directory", str(self.path))
        self.direct = st is not None and not stat.S_ISREG(st.st_mode)
        self._mode = stat.S_IMODE(st.st_mode) if st is not None else 0o644
        if self.direct:
            self.temp = self.target
            return
        parent = self.target.parent
        if make_parent:
            parent.mkdir(parents=True, exist_ok=True)
        elif not parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, f"directory {parent} does not exist", str(self.path))
        self.temp = _temp_file(parent, f".{self.target.name}." if prefix is None else prefix, suffix, self._mode)

    def commit(self) -> Path:
        """Make ``temp`` the file at ``path`` (durably); a no-op for a node written directly."""
        if not self.direct:
            fsync_path(self.temp)
            os.replace(self.temp, self.target)
            _fsync_dir(self.target.parent)
        return self.path

    def discard(self) -> None:
        """Forget the new content: the temporary file goes, the old ``path`` stays as it was."""
        if not self.direct:
            self.temp.unlink(missing_ok=True)

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Publish when the block ends normally; discard on any exception (Ctrl-C too)."""
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()


def _temp_file(folder: Path, prefix: str, suffix: str, mode: int) -> Path:
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.fchmod(fd, mode)  # mkstemp makes 0600; outputs are ordinary files
    os.close(fd)
    return Path(name)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a staged file for ``path`` (see ``Staged``), then publish it."""
    with Staged(path) as staged, open(staged.temp, "wb") as f:
        write(f)
    return staged.path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def fsync_path(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make the rename durable; some filesystems refuse fsync on directories (EINVAL)."""
    try:
        fsync_path(path)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.EISDIR, errno.EACCES):
            raise


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
