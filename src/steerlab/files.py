"""Atomic writes of files and folders: the one place steerlab replaces anything on disk.

Every output (steer files, GGUF, sweep folders, report folders, orthogonalised models, the GGUF cache) goes
through `write_file` or `write_folder`, so a writer killed at any moment (kill -9, power loss after the final
fsync) leaves the target as it was before or as the complete new output, never partial or missing.

Temporaries live beside the target, named `.<target name>.<writer pid>.<random><TEMP_SUFFIX>`, so they are on
the same file system (rename is atomic only there) and say whose they are. The next write to the same target
removes those whose writer no longer runs (`remove_stale_temporaries`); a running writer's are left alone.

Folders are swapped with Linux's `renameat2(RENAME_EXCHANGE)`: one system call exchanges the complete new
folder (built and fsynced under a temporary name) with the old one, so at every moment the target's name
points to one complete folder, for readers too, and a kill before the call leaves the old, after it the new
(the old one then sits under the temporary name, for the next write to remove). A symlink swap was the other
candidate; it changes what the target is (a link instead of the folder users asked for) and cannot replace a
folder that is already there. Where renameat2 is missing (not Linux, or a file system without it) the swap is
two renames, old -> `.<name>.<pid>.backup<TEMP_SUFFIX>` then new -> target; a kill between them leaves only the
backup, which the next write to the target (`recover`) renames back before anything else, so the old output
comes back complete. New targets are moved in with `RENAME_NOREPLACE` (else `link` for files), so a writer
not asked to overwrite never replaces what another process wrote meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputExistsError

TEMP_SUFFIX = ".steerlab-tmp"
BACKUP = "backup"
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def write_file(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`.

    The file gets the usual permissions (0666 less the umask, so 0644 by default), not the 0600 of a
    temporary file. Refuses an existing `path` unless `overwrite`.
    """
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the path appeared meanwhile, so a concurrent writer is not clobbered.
            os.link(tmp, path)
            tmp.unlink()
        _fsync_dir(path.parent)
    except BaseException:
        _remove(tmp)
        raise
    return path


def write_folder(folder: str | os.PathLike, fill: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    """Build a folder with `fill(tmp)` under a temporary name beside `folder`, fsync it, then swap it in.

    `folder` is at every moment the complete old folder or the complete new one (see the module's docstring).
    Refuses an existing `folder` unless `overwrite`, and never replaces the folder the process runs in (or one
    holding it).
    """
    folder = Path(folder)
    refuse_existing(folder, overwrite)
    if folder.exists() and _holds_cwd(folder):
        raise OutputExistsError(f"{folder} holds the current folder; choose another --out")
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(folder), suffix=TEMP_SUFFIX, dir=folder.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; outputs are for others to read too
        fill(tmp)
        _fsync_tree(tmp)
        _swap_in(tmp, folder, overwrite)
    except BaseException:
        _remove(tmp)
        raise
    _remove(tmp)  # after an exchange the old folder sits here; a kill now leaves it to the next write
    _fsync_dir(folder.parent)
    return folder


def write_text_files(folder: str | os.PathLike, files: dict[str, str], *, overwrite: bool = False) -> Path:
    """A folder of UTF-8 text files, `{name: text}`, written with `write_folder`."""

    def fill(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")

    return write_folder(folder, fill, overwrite=overwrite)


def _swap_in(new: Path, target: Path, overwrite: bool) -> None:
    try:
        if _renameat2(new, target, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        if not overwrite:  # another writer put it there meanwhile
            raise OutputExistsError(f"{target} already exists; choose another path or pass overwrite=True") from None
    else:  # no renameat2 here
        if not (target.exists() or target.is_symlink()):
            os.rename(new, target)
            return
        if not overwrite:
            _exists(target)
    if _renameat2(new, target, _RENAME_EXCHANGE):
        return
    backup = target.parent / f"{_prefix(target)}{BACKUP}{TEMP_SUFFIX}"
    os.rename(target, backup)  # a kill from here ...
    os.rename(new, target)  # ... to here leaves only the backup, which `recover` puts back
    os.rename(backup, new)  # the caller removes `new`, now the old folder


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """True when renameat2 did it; False when this system or file system lacks it; raises other errors."""
    func = getattr(_libc(), "renameat2", None)
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    if err == errno.EEXIST:
        _exists(dst)
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


_LIBC: list[ctypes.CDLL | None] = []


def _libc() -> ctypes.CDLL | None:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def _exists(path: Path) -> None:
    raise OutputExistsError(f"{path} already exists; choose another path or pass overwrite=True (--overwrite)")


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> None:
    """The one refusal of an existing output not asked to be replaced (call it before long work, too)."""
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):
        _exists(path)


def recover(path: str | os.PathLike) -> Path | None:
    """Put back a backup left by a killed two-rename swap (`path` missing, its backup there); returns it."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return None
    for pid, tag, backup in _temporaries(path):
        if tag == BACKUP and not _running(pid):
            try:
                os.rename(backup, path)
            except FileNotFoundError:
                continue  # another writer put it back first
            return path
    return None


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Restore `path` from a dead writer's backup if it is missing, then delete the temporary files and folders
    that writers which no longer run left beside it; returns what was deleted."""
    path = Path(path)
    recover(path)
    removed = []
    for pid, _, tmp in _temporaries(path):
        if not _running(pid):
            _remove(tmp)
            removed.append(tmp)
    return removed


def temporaries(path: str | os.PathLike) -> list[Path]:
    """Every temporary beside `path` that belongs to it, whoever its writer (for tests and checks)."""
    return [tmp for _, _, tmp in _temporaries(Path(path))]


def _temporaries(path: Path) -> list[tuple[int, str, Path]]:
    """(writer pid, tag, path) of `path`'s temporaries: `.<name>.<pid>.<tag><TEMP_SUFFIX>`, tag a mkstemp
    name or BACKUP (neither holds a dot, so another target's temporaries never match, e.g. those of `out.1`)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.([0-9]+)\.([a-z0-9_]+){re.escape(TEMP_SUFFIX)}", re.ASCII)
    found = []
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*{TEMP_SUFFIX}"):
        match = pattern.fullmatch(tmp.name)
        if match:
            found.append((int(match[1]), match[2], tmp))
    return sorted(found, key=lambda t: t[2])


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # alive under another user (or not a pid at all): leave its file alone
    return True


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # another writer cleaned it first
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _holds_cwd(folder: Path) -> bool:
    try:
        here, there = Path.cwd().resolve(), folder.resolve()
    except OSError:
        return False
    return here == there or there in here.parents


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk, so the swap never publishes unwritten data."""
    for folder, _, names in os.walk(root):
        for name in names:
            if os.path.islink(os.path.join(folder, name)):
                continue  # a link's target is not this write's to flush
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # not every system opens folders; the data itself was flushed
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def current_umask() -> int:
    """The process umask, read without changing it (Linux reports it in /proc); else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
