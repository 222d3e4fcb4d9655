"""Where an evidence pack goes, and how it gets there whole or not at all.

A pack folder is claimed before the run changes anything (:func:`claim`): it must be new or empty, and a
temporary sibling folder (``.<name>.pipeline-test-writing``) is created exclusively and a probe file written in
it, so a read-only folder, a full disk, or a second run given the same folder is refused then (exit 3), not
after the run. The pack is written into that sibling and renamed into place at the end
(:meth:`PackClaim.commit`): a reader never sees half a pack, and a pack that could not be written leaves
nothing behind (:meth:`PackClaim.abandon`).

Every file is written in binary mode (``O_BINARY`` where the OS has it: Windows would otherwise write CRLF), so
a pack's bytes, and so its hashes, are the same on every OS. A private pack's folders are 0700 and files 0600
on POSIX; on Windows, where NTFS ignores those bits, the folder gets an owner-only access list
(:func:`restrict_to_owner`, through ``icacls``), or a warning naming the folder when that fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: where the claim's temporary folder is: ``<parent>/.<name><STAGING_SUFFIX>``
STAGING_SUFFIX = ".pipeline-test-writing"
#: the probe written into a claimed folder (a full disk or a read-only folder fails it before the run)
PROBE_NAME = ".probe"
PROBE_BYTES = 4096

log = logging.getLogger(__name__)


class PackFolderError(Exception):
    """The pack's folder cannot take a pack (not new, not writable, full, claimed by another run)."""


def write_flags() -> int:
    """os.open's flags for every pack file: binary where the OS knows the difference (Windows: without O_BINARY
    it writes text mode, every LF as CRLF), not inherited by child processes."""
    return os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)


def open_for_write(path: Path, private: bool) -> BinaryIO:
    """A new (or emptied) file of a pack, opened in binary mode: 0600 when private."""
    fd = os.open(path, write_flags(), 0o600 if private else 0o666)
    try:
        if private and os.name != "nt":
            os.fchmod(fd, 0o600)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def write_bytes(path: Path, data: bytes, private: bool = True) -> None:
    """Write a pack file's exact bytes (no newline translation on any OS)."""
    with open_for_write(path, private) as handle:
        handle.write(data)


def staging_dir(folder: Path) -> Path:
    """The temporary sibling a pack for ``folder`` is written into before its rename."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}{STAGING_SUFFIX}")


def _nearest_existing(folder: Path) -> Path:
    path = Path(os.path.abspath(folder))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unwritable(folder: Path, exc: OSError, where: Path | None = None) -> PackFolderError:
    reason = exc.strerror or type(exc).__name__
    return PackFolderError(f"evidence folder {folder} cannot be written ({f'{where}: ' if where else ''}{reason})")


def _taken(folder: Path) -> PackFolderError:
    staging = staging_dir(folder)
    return PackFolderError(f"another run is writing an evidence pack to {folder} (its temporary folder {staging} "
                           f"exists); give another folder, or remove {staging} if no run is writing")


def check_new(folder: Path) -> None:
    """The folder must be new or an empty folder, and no other run may be writing a pack for it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PackFolderError(f"evidence folder {folder} is not a folder; give a new or empty folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise PackFolderError(f"evidence folder {folder} is not empty; give a new or empty folder")
    if staging_dir(folder).exists():
        raise _taken(folder)


def probe_writable(folder: Path) -> None:
    """Write (and remove) a small probe file where the pack's folders will be created: its nearest existing
    ancestor. A read-only folder or a full disk fails here, before the run."""
    where = _nearest_existing(folder)
    if not where.is_dir():
        raise PackFolderError(f"evidence folder {folder}: {where} is not a folder")
    probe = where / f".pipeline-test-probe-{os.getpid()}-{id(folder):x}"
    try:
        write_bytes(probe, b"\0" * PROBE_BYTES)
    except OSError as exc:
        raise _unwritable(folder, exc, where) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def restrict_to_owner(folder: Path, log_to: logging.Logger | logging.LoggerAdapter | None = None,
                      shown: Path | None = None) -> bool:
    """Make a folder readable by its owner only. POSIX: mode 0700. Windows (NTFS ignores mode bits): an access list
    granting the current user (by SID) full control, inherited by everything created inside, and nothing
    inherited from the parent. False, with a warning naming the folder (``shown``, else ``folder``), when that
    could not be done."""
    if os.name != "nt":
        os.chmod(folder, 0o700)
        return True
    who = _windows_user()
    command = ["icacls", str(folder), "/inheritance:r", "/grant:r", f"{who}:(OI)(CI)F", "/q"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        problem = None if done.returncode == 0 else (done.stderr or done.stdout or f"exit {done.returncode}").strip()
    except (OSError, subprocess.SubprocessError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        return True
    (log_to or log).warning("The evidence pack %s could not be made private (icacls: %s): other users of this "
                            "machine may be able to read it", shown or folder, problem[:300])
    return False


def _windows_user() -> str:
    """The current user for icacls: ``*<SID>`` (from ``whoami /user``), else the user's name."""
    try:
        done = subprocess.run(["whoami", "/user", "/fo", "csv", "/nh"], capture_output=True, text=True, timeout=30,
                              check=False)
        sid = done.stdout.strip().rsplit(",", 1)[-1].strip().strip('"') if done.returncode == 0 else ""
        if sid.startswith("S-1-"):
            return f"*{sid}"
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("USERNAME") or os.environ.get("USER") or "%USERNAME%"


def _make_dirs(folder: Path, private: bool) -> None:
    """Create the folder's missing parents (0700 when private)."""
    for path in reversed([p for p in folder.parents if not p.exists()]):
        path.mkdir(mode=0o700 if private else 0o777, exist_ok=True)


@dataclass
class PackClaim:
    """A pack folder claimed for one run: its temporary sibling exists and is this run's alone."""

    folder: Path
    staging: Path
    private: bool

    def commit(self) -> Path:
        """Rename the written pack into place (an empty folder there is replaced); the folder."""
        try:
            os.rename(self.staging, self.folder)
        except OSError:
            # Windows does not rename onto an existing folder; POSIX does not onto one that is not empty
            if not self.folder.exists():
                raise  # e.g. the staging folder or the parent went away: the OS says what
            if not self.folder.is_dir() or any(self.folder.iterdir()):
                raise PackFolderError(f"evidence folder {self.folder} was filled by something else during the "
                                      "run; the pack was not put there") from None
            self.folder.rmdir()
            os.rename(self.staging, self.folder)
        return self.folder

    def abandon(self) -> None:
        """Remove the temporary folder and whatever was written into it (nothing is left of a failed pack)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def claim(folder: Path, private: bool, logger: logging.Logger | logging.LoggerAdapter | None = None) -> PackClaim:
    """Claim ``folder`` for a pack before the run: new or empty, writable, not claimed by another run.
    PackFolderError says why not."""
    check_new(Path(folder))
    return claim_staging(folder, private, logger)


def claim_staging(folder: Path, private: bool, logger: logging.Logger | logging.LoggerAdapter | None = None
                  ) -> PackClaim:
    """Create ``folder``'s temporary sibling exclusively (the claim: a second run fails here) and prove it
    writable with a probe file; ``folder`` itself may already hold something (a suite's cases)."""
    folder = Path(folder)
    staging = staging_dir(folder)
    try:
        _make_dirs(folder, private)
        os.mkdir(staging, 0o700 if private else 0o777)
    except FileExistsError:
        raise _taken(folder) from None
    except OSError as exc:
        raise _unwritable(folder, exc) from None
    taken = PackClaim(folder, staging, private)
    try:
        write_bytes(staging / PROBE_NAME, b"\0" * PROBE_BYTES)
        (staging / PROBE_NAME).unlink()
    except OSError as exc:
        taken.abandon()
        raise _unwritable(folder, exc) from None
    if private:
        restrict_to_owner(staging, logger, shown=folder)
    return taken
