"""Output directories: written aside, swapped in atomically, owned by the stage that wrote them.

Every stage that writes a directory (prepare, export, index build, fetch, synth) does it as::

    with replacing(cfg.paths.index, "index", key="paths.index") as tmp:
        ...write every file into tmp...
    # here the finished tmp has replaced paths.index in one step

What :func:`replacing` guarantees:

* **Atomic swap.** The new output is written into a hidden sibling (``.NAME.tmp-XXXX``) and
  exchanged with the old one by ``renameat2(RENAME_EXCHANGE)``: at every instant ``dest`` is
  either the complete previous output or the complete new one, so a process killed between
  any two steps leaves a loadable output. Where the kernel or filesystem cannot exchange, the
  old output is renamed aside first and the next run puts it back if the swap never finished.
* **Ownership.** A marker file (:data:`MARKER`, JSON naming the stage) goes into every output.
  An existing ``dest`` is replaced only when it is empty or carries the same stage's marker (or,
  for outputs written before markers existed, the stage's own signature file, e.g.
  ``manifest.json`` for prepare); any other folder stops the stage with one error naming it.
* **One writer.** An exclusive ``flock`` on ``.NAME.lock`` beside ``dest`` is taken before any
  work starts; a second run writing the same output stops at once with one error. Leftovers of
  a killed run (``.NAME.tmp-*``, ``.NAME.old-*``) are removed by the next run, under the lock.

The environment variable ``RECSYS_CRASH_AT`` (``written``, ``swapped`` or ``moved-aside``)
kills the process with SIGKILL at that step; the tests use it to check the guarantees above.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import uuid
from pathlib import Path
from typing import Iterator

from recsys.errors import ArtifactError

MARKER = ".recsys-output.json"
CRASH_ENV = "RECSYS_CRASH_AT"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _crash_point(step: str) -> None:
    """Die here, like a killed process would, when ``RECSYS_CRASH_AT`` names this step (tests)."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _exchange_fn():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_EXCHANGE = _exchange_fn()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the kernel/filesystem cannot."""
    if _EXCHANGE is None:
        return False
    if _EXCHANGE(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def owner(dest: str | Path) -> str | None:
    """The stage named by ``dest``'s marker, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(dest) / MARKER).read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return None


def check_replaceable(dest: str | Path, stage: str, key: str | None = None, signature: tuple[str, ...] = ()) -> None:
    """Raise :class:`ArtifactError` unless ``stage`` may replace ``dest`` whole.

    Args:
        key: the config key or option that named ``dest`` (for the message), e.g. ``paths.index``.
        signature: files that mark an output of this stage written before markers existed.
    """
    dest = Path(dest)
    where = f"{key} ({dest})" if key else str(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    if not dest.is_dir():
        raise ArtifactError(f"{where} exists and is not a directory; the {stage} output must be a directory")
    found = owner(dest)
    if found == stage:
        return
    if found is not None:
        raise ArtifactError(f"{where} holds the output of recsys {found}, not {stage}; {stage} will not replace it: "
                            "give each stage its own directory")
    entries = sorted(p.name for p in dest.iterdir())
    if not entries or any((dest / s).is_file() for s in signature):
        return
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise ArtifactError(f"{where} is not empty and was not written by recsys {stage} ({len(entries)} entries: "
                        f"{shown}); {stage} replaces its output directory whole, so it leaves this one alone: "
                        "point it at a new or empty directory")


@contextlib.contextmanager
def _locked(dest: Path, stage: str, where: str) -> Iterator[None]:
    lock = dest.parent / f".{dest.name}.lock"
    for _ in range(20):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise ArtifactError(f"{where} is being written by another recsys run (pid {holder}, lock {lock}); "
                                "wait for it to finish, or write elsewhere") from None
        try:  # the holder before us may have removed the lock file after we opened it: retry on a fresh one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:  # pragma: no cover - needs twenty lost races in a row
        raise ArtifactError(f"could not lock {lock}; another run keeps replacing it")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {stage}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _recover_and_clean(dest: Path) -> None:
    """Put back an output a killed fallback swap left aside; remove a killed run's leftovers.

    Called only under the lock, so no other run is writing these siblings."""
    aside = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not dest.exists() and aside:
        aside[-1].rename(dest)
        aside = aside[:-1]
    for leftover in aside + list(dest.parent.glob(f".{dest.name}.tmp-*")):
        shutil.rmtree(leftover, ignore_errors=True)


def _swap_in(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        tmp.rename(dest)
    elif _exchange(tmp, dest):
        _crash_point("swapped")  # dest: the new output; tmp: the previous one, removed below
    else:  # no atomic exchange here: old aside, new in; _recover_and_clean undoes a half swap
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        dest.rename(old)
        _crash_point("moved-aside")
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(dest.parent)


@contextlib.contextmanager
def replacing(dest: str | Path, stage: str, key: str | None = None,
              signature: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty directory to write ``stage``'s output into; swap it in for ``dest`` on success.

    On an exception the new files are removed and ``dest`` is left as it was. Raises
    :class:`ArtifactError` before any work when ``dest`` is another stage's or a user's
    folder (see :func:`check_replaceable`) or another run holds its lock.
    """
    dest = Path(dest)
    where = f"{key} ({dest})" if key else str(dest)
    check_replaceable(dest, stage, key, signature)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest, stage, where):
        _recover_and_clean(dest)
        check_replaceable(dest, stage, key, signature)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"stage": stage}) + "\n")
            _crash_point("written")
            _swap_in(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
