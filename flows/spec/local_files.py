"""Local files a case names (upload ``files``, ``payload_file``, ``sql_file``, ...): confined and present.

A step declares its local-path fields (``StepBase.local_files`` and ``template_files``). Before the run the
validator checks, for every such path:

* **confined**: resolved (``..`` and symlinks followed) it lies under the spec's folder, or under the root the
  user names (``--files-root DIR``, flow parameter ``files_root``); an absolute path elsewhere is refused too;
* **present** when the path holds no template: a file exists, a glob matches at least one file (and every file
  it matches is confined too). A path with a template is checked once rendered, for confinement only, since
  its run-time value (e.g. the run date) may differ.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from flows.spec.template_sandbox import MAX_TEXT

#: files one glob may match
MAX_MATCHES = 10_000
#: bytes of a local file whose content is a template (payload_file, sql_file)
MAX_TEMPLATE_FILE_BYTES = MAX_TEXT

GLOB_CHARS = "*?["


class LocalPathError(ValueError):
    """A local path is outside the allowed roots, missing, or unreadable; the message says how to fix it."""


def roots(spec_dir: Path, files_root: str | Path | None) -> tuple[Path, ...]:
    """The folders local files may lie under: the spec's folder, and the user's root when given."""
    found = [spec_dir.resolve()]
    if files_root:
        found.append(Path(files_root).expanduser().resolve())
    return tuple(dict.fromkeys(found))


def _shown_roots(allowed: tuple[Path, ...]) -> str:
    return " or ".join(str(r) for r in allowed)


def confine(path: Path, raw: str, allowed: tuple[Path, ...]) -> Path:
    """``path`` resolved; LocalPathError unless it lies under one of ``allowed``."""
    resolved = path.resolve()
    if not any(resolved == r or resolved.is_relative_to(r) for r in allowed):
        raise LocalPathError(
            f"local path {raw!r} resolves to {resolved}, outside {_shown_roots(allowed)}; files a step names must "
            "lie under the spec's folder. To allow another folder, name it with --files-root DIR (flow parameter "
            "files_root; for a suite, --files-root DIR or the suite file's files_root)")
    return resolved


def _full(raw: str, base: Path) -> Path:
    path = Path(raw.replace("\\", "/"))
    return path if path.is_absolute() else base / path


def check_path(raw: str, base: Path, allowed: tuple[Path, ...], *, must_exist: bool, glob: bool) -> list[Path]:
    """Check one local path or glob (relative to ``base``); returns the files it names (when checked for)."""
    pattern = raw.replace("\\", "/")
    if glob and any(ch in pattern for ch in GLOB_CHARS):
        cut = min(pattern.find(ch) for ch in GLOB_CHARS if ch in pattern)
        folder = pattern[: pattern.rfind("/", 0, cut) + 1] or "."
        confine(_full(folder, base), raw, allowed)
        if not must_exist:
            return []
        full = _full(pattern, base)
        anchor = Path(full.anchor)
        matches = list(itertools.islice((p for p in anchor.glob(str(full.relative_to(anchor))) if p.is_file()),
                                        MAX_MATCHES + 1))
        if len(matches) > MAX_MATCHES:
            raise LocalPathError(f"{raw!r} matches more than {MAX_MATCHES:,} files")
        if not matches:
            raise LocalPathError(f"no local file matches {raw!r} (relative to {base})")
        return [confine(m, f"{raw} -> {m}", allowed) for m in matches]
    full = _full(pattern, base)
    resolved = confine(full, raw, allowed)
    if must_exist:
        if resolved.is_dir():
            raise LocalPathError(f"local path {raw!r} is a directory, not a file (looked at {full})")
        if not resolved.is_file():
            raise LocalPathError(f"local file {raw!r} not found (looked for {full})")
    return [resolved]


def read_template_file(path: Path, raw: str) -> str:
    """The text of a local template file: refused when too big, binary or not UTF-8."""
    size = path.stat().st_size
    if size > MAX_TEMPLATE_FILE_BYTES:
        raise LocalPathError(f"local file {raw!r} is {size:,} bytes; at most {MAX_TEMPLATE_FILE_BYTES:,} are allowed")
    data = path.read_bytes()
    if b"\x00" in data:
        raise LocalPathError(f"local file {raw!r} is binary (it holds NUL bytes), not a text template")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LocalPathError(f"local file {raw!r} is not UTF-8 text (byte {exc.start})") from None
