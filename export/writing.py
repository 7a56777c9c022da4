"""Where commands write: the one output-path check, atomic files and directories, and the
leftovers of killed runs.

Standard library only (plus focalgraph's manifest reader), so every command, the TensorFlow-free
ones included, writes the same way.

- `check_outputs` is the check every command that writes runs before it starts: each output is
  resolved with ``realpath`` (symlinks followed) and refused, `UsageError` (exit 2), when it is an
  input file, lies inside an input directory or any focalgraph artifact, holds an input, is
  another output of the same command, or cannot be created. The one replacement policy
  (docs/outputs.md): an existing output is replaced only with ``force`` (``--force``), otherwise
  `UsageError` naming the flag and the file; a directory, even with ``force``, only when it is
  empty or focalgraph wrote it (its manifest, and no file that manifest does not list). Nothing
  tells a foreign ``.npy``, ``.json`` or ``.txt`` from one focalgraph wrote, so a file is never
  replaced on the strength of its contents.
- `staged` (a directory) and `StagedFiles` (a group of files) write under a temporary name beside
  the destination and rename into place only once everything is complete; without ``force`` the
  rename never replaces a file that appeared meanwhile (a hard link, which fails if the name exists). On any failure,
  Ctrl-C included, the temporaries are removed; an OSError (a full disk) becomes one
  `OutputError` line (exit 1).
- Temporary names carry their writer (a hash of the host name and boot, the pid and the process
  start time): `remove_abandoned`, run before each write, deletes those whose writer is provably
  gone (SIGKILL, a power cut) and never touches any other.
- Modes are set explicitly (0644 files, 0755 directories). The process umask is never read:
  reading it means setting it, which races with every other thread creating files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import BinaryIO, Iterator

from export.errors import OutputError, UsageError

FILE_MODE = 0o644
DIRECTORY_MODE = 0o755
# A destination name longer than this (in bytes) is shortened in its temporary names, which add
# about 65 bytes: a legal 255-byte name must not become an illegal temporary one.
_LONG_NAME = 150
_TEMPORARY = re.compile(
    r"\.(?P<stem>.+)\.(?P<kind>partial|old)-(?P<host>[0-9a-f]{8})-(?P<boot>[0-9a-f]{8})-(?P<pid>[0-9]+)"
    r"-(?P<start>[0-9]+)-[0-9a-z]{6}", re.DOTALL)


# ---------------------------------------------------------------------------------------------
# The output-path check


def check_outputs(outputs: dict, inputs: dict | None = None, *, directory: bool = False,
                  force: bool = False) -> dict:
    """Check every path a command will write, before it starts; returns ``{flag: resolved Path}``
    (None stays None).

    ``outputs``: ``{flag: path}``; ``inputs``: ``{flag: path or list of paths}`` the command
    reads (files or directories). Outputs are files, or with ``directory`` directories; one that
    exists is replaced only with ``force`` (a directory only if focalgraph wrote it), otherwise
    `UsageError` naming the flag, the path and ``--force`` (`existing_output`). Raises
    `UsageError` naming the flag.
    """
    sources = []
    for flag, value in (inputs or {}).items():
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path is not None:
                sources.append((flag, Path(os.path.realpath(_text(flag, path)))))
    checked: dict = {}
    for flag, path in outputs.items():
        if path is None:
            checked[flag] = None
            continue
        resolved = _check_directory(flag, path, force) if directory else _check_file(flag, path)
        for other, done in checked.items():
            if done == resolved:
                raise UsageError(f"{flag}: {path} is also {other}; write outputs to files of their own")
        for source_flag, source in sources:
            _check_apart(flag, path, resolved, source_flag, source, directory)
        for parent in resolved.parents:
            if _is_artifact(parent):
                raise UsageError(f"{flag}: {path} is inside the artifact {parent}; write it elsewhere "
                                 "(a file added to an artifact fails its manifest check)")
        # last: an output that may never be written anywhere says so rather than asking for --force
        if not directory and not force and os.path.lexists(resolved):
            raise existing_output(flag, path)
        checked[flag] = resolved
    return checked


def _text(flag: str, path) -> str:
    try:
        text = os.fspath(path)
    except TypeError:
        raise UsageError(f"{flag}: expected a path, got {path!r}") from None
    if not isinstance(text, str) or not text or "\0" in text:
        raise UsageError(f"{flag}: expected a path, got {path!r}")
    return text


def existing_output(flag: str, path) -> UsageError:
    """The one refusal of an output that exists (exit 2), for every command."""
    return UsageError(f"{flag}: {path} already exists; pass --force to replace it")


def _check_file(flag: str, path) -> Path:
    text = _text(flag, path)
    if text.endswith(os.sep) or Path(text).name in ("", ".", ".."):
        raise UsageError(f"{flag}: {path} is a directory; name a file")
    resolved = Path(os.path.realpath(text))
    if resolved.is_dir():
        raise UsageError(f"{flag}: {path} is a directory; name a file")
    if os.path.lexists(resolved):
        if not resolved.is_file():
            raise UsageError(f"{flag}: {path} is not a regular file (a device, pipe or socket); name a file")
    if not resolved.parent.is_dir() or not os.access(resolved.parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: {resolved.parent} is not a writable directory")
    return resolved


def _check_directory(flag: str, path, force: bool) -> Path:
    resolved = Path(os.path.realpath(_text(flag, path)))
    working = Path(os.path.realpath(os.getcwd()))
    if resolved == working or resolved in working.parents:
        raise UsageError(f"{flag}: {path} is the working directory or one of its parents; name a new directory")
    if os.path.lexists(resolved):
        if not resolved.is_dir():
            raise UsageError(f"{flag}: {path} exists and is not a directory")
        if not force:
            raise existing_output(flag, path)
        _check_replaceable(flag, path, resolved)
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot create {path}: {parent} is not a writable directory")
    return resolved


def _check_replaceable(flag: str, path, resolved: Path) -> None:
    """`UsageError` naming the first entry of the directory ``resolved`` that focalgraph did not
    write: ``--force`` replaces only such a directory, or an empty one."""
    from export.artifact import first_foreign

    foreign = first_foreign(resolved)
    if foreign is not None:
        name, why = foreign
        raise UsageError(f"{flag}: {Path(path) / name} {why}; --force replaces only a directory focalgraph wrote "
                         "or an empty one, and this one was left untouched")


def _check_apart(flag: str, path, resolved: Path, source_flag: str, source: Path, directory: bool) -> None:
    if resolved == source:
        raise UsageError(f"{flag}: {path} is also {source_flag}; write outputs to files of their own")
    if source in resolved.parents:
        what = f"the artifact {source} ({source_flag})" if _is_artifact(source) else f"{source_flag} {source}"
        raise UsageError(f"{flag}: {path} is inside {what}; write it elsewhere")
    if directory and resolved in source.parents:
        raise UsageError(f"{flag}: {path} holds {source_flag} {source}; replacing it would destroy an input")


def _is_artifact(directory: Path) -> bool:
    from export.artifact import MANIFEST, is_manifest

    return (directory / MANIFEST).is_file() and is_manifest(directory / MANIFEST)


# ---------------------------------------------------------------------------------------------
# Temporary names and the leftovers of killed runs


def _stem(name: str) -> str:
    raw = os.fsencode(name)
    if len(raw) <= _LONG_NAME:
        return name
    # longer than any short name can be, so a shortened stem never equals a real one
    return os.fsdecode(raw[:140]) + "~" + hashlib.sha256(raw).hexdigest()[:16]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _host() -> str:
    return _digest(socket.gethostname())


def _boot() -> str:
    try:
        return _digest(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        return "0" * 8  # unknown: then only the pid and its start time can prove a writer gone


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), telling a reused pid from the writer's."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _temporary(destination: Path, kind: str) -> Path:
    pid = os.getpid()
    token = f"{_host()}-{_boot()}-{pid}-{_start_time(pid) or 0}-{secrets.token_hex(3)}"
    return destination.parent / f".{_stem(destination.name)}.{kind}-{token}"


def _running(pid: int, start: int) -> bool:
    now = _start_time(pid)
    if now is not None and start:
        return now == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def _abandoned(match: re.Match) -> bool:
    """Whether the writer named in a temporary name is provably gone: it ran on this host, and in
    an earlier boot or as a process that no longer runs. A writer on another host (a shared file
    system) cannot be checked, so its temporaries are never touched."""
    if match["host"] != _host():
        return False
    return match["boot"] != _boot() or not _running(int(match["pid"]), int(match["start"]))


def remove_abandoned(destination) -> list[Path]:
    """Remove the temporaries beside ``destination`` that a killed focalgraph run left for it
    (``.NAME.partial-*``, ``.NAME.old-*``) and whose writer is provably gone; returns them. An
    abandoned ``.NAME.old-*`` is the previous ``destination`` moved aside just before the new one
    was renamed in: if ``destination`` is missing, it is put back instead."""
    destination = Path(destination)
    try:
        names = os.listdir(destination.parent)
    except OSError:
        return []
    stem, removed = _stem(destination.name), []
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match is None or match["stem"] != stem or not _abandoned(match):
            continue
        path = destination.parent / name
        if match["kind"] == "old" and not os.path.lexists(destination):
            with contextlib.suppress(OSError):
                os.rename(path, destination)
            continue  # put back, or left as it is: never remove the only copy
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        removed.append(path)
    return removed


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` among focalgraph processes (flock on the directory
    itself: no lock file to leave behind); none where the directory cannot be opened."""
    try:
        import fcntl

        descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------------------------
# A directory, all or nothing


def _state(path: Path):
    """What says a directory was replaced or edited: its inode and modification time."""
    try:
        stat = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns


@contextlib.contextmanager
def staged(out, *, force: bool, flag: str = "--out") -> Iterator[Path]:
    """A temporary directory beside ``out`` (checked by `check_outputs`) that becomes ``out`` only
    if the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary directory, and any parent
    directories created for it, are removed and ``out`` is as it was. An existing ``out`` is
    replaced only with ``force``, only after the new one is complete, and only if it still holds
    nothing focalgraph did not write. If another process created, replaced or edited ``out``
    while this one worked, this one fails (`OutputError`) and leaves that process's result alone.
    """
    out = Path(out)
    created = [parent for parent in reversed(out.parents) if not parent.exists()]
    try:
        for parent in created:
            with contextlib.suppress(FileExistsError):
                os.mkdir(parent)
                os.chmod(parent, DIRECTORY_MODE)
        with _locked(out.parent):
            remove_abandoned(out)
            before = _state(out)
            if before is not None:
                if not force:
                    raise existing_output(flag, out)
                _check_replaceable(flag, out, out)
            stage = _temporary(out, "partial")
            os.mkdir(stage, 0o700)  # private while it is written; DIRECTORY_MODE once complete
    except BaseException as error:
        _remove_created(created)
        if isinstance(error, OSError):
            raise OutputError(f"{flag}: cannot create {out} ({error.strerror or error})") from None
        raise
    try:
        yield stage
        _set_modes(stage)
        with _locked(out.parent):
            if _state(out) != before:
                raise OutputError(f"{flag}: {out} was written or changed by another process while this one worked; "
                                  "this one wrote nothing")
            if before is None:
                _rename_new(flag, stage, out)
            else:
                _swap(flag, stage, out)
    except BaseException as error:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_created(created)
        if isinstance(error, OSError):
            raise OutputError(f"{flag}: cannot write {out} ({error.strerror or error}); nothing was written") from None
        raise


def _rename_new(flag: str, stage: Path, out: Path) -> None:
    try:
        os.rename(stage, out)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise OutputError(f"{flag}: {out} was created by another process while this one worked; "
                              "this one wrote nothing") from None
        raise


def _swap(flag: str, stage: Path, out: Path) -> None:
    """Move ``out`` aside, check it once more (nothing can be added to it by its path now), move
    ``stage`` in, and remove the old one; on any failure ``out`` is put back."""
    old = _temporary(out, "old")
    os.rename(out, old)
    try:
        _check_replaceable(flag, out, old)
        os.rename(stage, out)
    except BaseException:
        if not os.path.lexists(out):
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _set_modes(directory: Path) -> None:
    os.chmod(directory, DIRECTORY_MODE)
    for root, directories, files in os.walk(directory):
        for name in directories:
            os.chmod(os.path.join(root, name), DIRECTORY_MODE, follow_symlinks=False)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, FILE_MODE)


def _remove_created(directories) -> None:
    for directory in reversed(directories):
        with contextlib.suppress(OSError):
            directory.rmdir()


# ---------------------------------------------------------------------------------------------
# Files, all or nothing


class StagedFiles:
    """Files written under temporary names beside their destinations and renamed into place
    together when the ``with`` block ends without an error; on an error every temporary is
    removed and no destination changes. An OSError (a full disk, an unwritable directory) is an
    `OutputError` naming the flag and the file.

        with StagedFiles(force=force) as files:
            losses = files.open("--out", out, size=total_bytes)   # space reserved up front
            ...
            files.write("--summary", summary, data)

    Without ``force`` a destination that exists when the files are renamed into place (one that
    appeared after `check_outputs`) is left alone: `UsageError` (`existing_output`), and the
    destinations already placed by this commit are removed again.
    """

    def __init__(self, *, force: bool = False):
        self.force = force
        self._files: list[tuple[str, Path, Path, BinaryIO]] = []

    def open(self, flag: str, destination, size: int | None = None) -> BinaryIO:
        """A new temporary file for ``destination``, open for writing. With ``size``, that much
        disk space is reserved now, so a full disk fails here, not in a memory-mapped write
        (SIGBUS) or after hours of work."""
        destination = Path(destination)
        with self.reporting(flag, destination):
            remove_abandoned(destination)
            temporary = _temporary(destination, "partial")
            # registered before it exists, so that an interrupt between creating and registering it
            # cannot leave it behind (`discard` unlinks it, file or not)
            self._files.append((flag, destination, temporary, None))
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            file = os.fdopen(descriptor, "wb")
            self._files[-1] = (flag, destination, temporary, file)
            if size:
                _reserve(descriptor, size)
        return file

    def write(self, flag: str, destination, data: bytes) -> None:
        file = self.open(flag, destination, size=len(data))
        with self.reporting(flag, destination):
            file.write(data)

    @contextlib.contextmanager
    def reporting(self, flag: str, destination) -> Iterator[None]:
        """OSErrors raised inside become one `OutputError` line naming ``flag`` and the file."""
        try:
            yield
        except OSError as error:
            raise OutputError(f"{flag}: cannot write {destination} ({error.strerror or error}); "
                              "nothing was written") from None

    def commit(self) -> None:
        for flag, destination, temporary, file in self._files:
            with self.reporting(flag, destination):
                file.flush()
                os.fsync(file.fileno())
                os.fchmod(file.fileno(), FILE_MODE)
                file.close()
        placed = []
        try:
            for flag, destination, temporary, file in self._files:
                with self.reporting(flag, destination):
                    if self.force:
                        os.replace(temporary, destination)
                    else:
                        _place_new(flag, temporary, destination)
                placed.append(destination)
        except BaseException:
            if not self.force:  # all or nothing: what this commit created goes again
                for destination in placed:
                    with contextlib.suppress(OSError):
                        os.unlink(destination)
            raise
        self._files = []

    def discard(self) -> None:
        for _, _, temporary, file in self._files:
            if file is not None:
                with contextlib.suppress(OSError):
                    file.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        self._files = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()
        return False


def _place_new(flag: str, temporary: Path, destination: Path) -> None:
    """Rename ``temporary`` to ``destination`` only if no file has that name: a hard link fails
    if the name exists, where a rename would silently replace it."""
    try:
        os.link(temporary, destination)
    except FileExistsError:
        raise existing_output(flag, destination) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        # a file system without hard links (FAT, some FUSE mounts): checked, then renamed
        if os.path.lexists(destination):
            raise existing_output(flag, destination) from None
        os.replace(temporary, destination)
        return
    os.unlink(temporary)


def _reserve(descriptor: int, size: int) -> None:
    try:
        os.posix_fallocate(descriptor, 0, size)
    except AttributeError:  # not on every platform
        pass
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def write_atomically(flag: str, path, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` to ``path`` (checked by `check_outputs`) via a temporary file, so no
    half-written file ever remains; `OutputError` when it cannot be written. An existing ``path``
    is replaced only with ``force`` (`StagedFiles`)."""
    with StagedFiles(force=force) as files:
        files.write(flag, path, data)
