"""The evidence pack: a folder that every run leaves, which a reviewer can read offline and verify later.

A pack holds:

    report.json    machine-readable record (models: flows/evidence/report.py; schema:
                   flows/evidence/pack/report.schema.json, ``schema_version`` 1)
    report.md      the same for people (the content of the UI artifacts)
    report.html    one self-contained page (no network, no script), printable; failures first
    junit.xml      one testcase per step, for Jenkins, GitLab and GitHub
    spec.yaml      a copy of the spec file as run (spec.json for a JSON spec), when the run had one
    manifest.json  SHA-256 and size of every other file of the pack, and the SHA-256 the run recorded for
                   every uploaded input file and query result (written last: no manifest, no complete pack)

``pipeline-test verify DIR`` (or ``python -m flows.pipeline_test verify DIR``) checks a pack:
exit 0 when intact, 1 naming every changed, missing or extra file. The manifest cannot hash itself: to
anchor it, keep its SHA-256 elsewhere (the flow logs it and puts it in the link artifact) and pass
``--manifest-sha256 HEX``.

This module verifies and uploads packs and holds the CLI; it re-exports the names of the modules that write
This module verifies and uploads packs and holds the CLI. The pack is named and hashed by files.py, written by
write.py (report.json, report.md, the manifest, ``write_pack``, and how secrets are kept out of the pack) with
html.py and junit.py; folder.py says where a pack goes and how it gets there whole (or not at all), byte-exact and
private on every OS.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TypeGuard

from flows.evidence.pack.files import (
    _SHA256,
    CONTENT_TYPES,
    MANIFEST,
    MANIFEST_SCHEMA,
    REQUIRED_FILES,
    SSE_VALUES,
    manifest_sha256,
    pack_files,
    sha256_file,
)
from flows.evidence.report import SCHEMA_VERSION
from flows.suite.pack import SUITE_REQUIRED_FILES
from tasks.kit import nesting

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client


# ----------------------------------------------------------------------------------------------------- verify
def _load_manifest(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = folder / MANIFEST
    if not path.is_file():
        return None, [f"{MANIFEST}: missing (this folder is not a complete evidence pack)"]
    try:
        data = nesting.loads(path.read_text(encoding="utf-8"), "the manifest")
    except (OSError, ValueError) as exc:
        return None, [f"{MANIFEST}: unreadable ({exc})"]
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        return None, [f"{MANIFEST}: not an evidence pack manifest (schema is not {MANIFEST_SCHEMA!r})"]
    if data.get("schema_version") != SCHEMA_VERSION or not isinstance(data.get("files"), list):
        return None, [f"{MANIFEST}: unsupported schema_version {data.get('schema_version')!r} "
                      f"(this version reads {SCHEMA_VERSION})"]
    return data, []


def _safe_name(name: Any) -> TypeGuard[str]:
    """A manifest entry must be a relative POSIX path inside the pack (no .., no drive, no backslash)."""
    return (isinstance(name, str) and bool(name) and not name.startswith("/") and "\\" not in name
            and ":" not in name and all(part not in ("", ".", "..") for part in name.split("/")))


def _listed(data: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    listed: dict[str, dict[str, Any]] = {}
    problems = []
    for entry in data["files"]:
        name = entry.get("path") if isinstance(entry, dict) else None
        if not _safe_name(name) or name == MANIFEST:
            problems.append(f"{MANIFEST}: bad file entry {entry!r}")
        elif not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
            problems.append(f"{MANIFEST}: bad sha256 for {name}")
        elif name in listed:
            problems.append(f"{MANIFEST}: {name} listed twice")
        else:
            listed[name] = entry
    return listed, problems


def _walk(folder: Path) -> tuple[set[str], list[str]]:
    """The pack's regular files (relative POSIX paths), and what else is in it: links (to a file, a folder or
    nowhere: never followed), folders holding no file, and anything that is not a file or a folder."""
    files: set[str] = set()
    others: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        here = Path(root)
        for name in [*dirs, *names]:
            path = here / name
            rel = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                others.append(f"{rel}: extra (a link, which a pack never holds)")
            elif stat.S_ISREG(mode):
                files.add(rel)
            elif stat.S_ISDIR(mode):
                with os.scandir(path) as entries:
                    if next(entries, None) is None:
                        others.append(f"{rel}/: extra (an empty folder, not in {MANIFEST})")
            else:
                others.append(f"{rel}: extra (not a regular file)")
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
    return files, others


def _check_file(folder: Path, name: str, entry: dict[str, Any], files: set[str]) -> str | None:
    path = folder / name
    if name not in files:
        if os.path.lexists(path):
            return f"{name}: not a regular file of the pack (a link, a folder, or under a link)"
        return f"{name}: missing"
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        return f"{name}: changed (sha256 {actual}, manifest says {entry['sha256']})"
    return None


def verify(folder: Path, manifest_sha256_expected: str | None = None) -> list[str]:
    """Check a pack against its manifest; the problems, each starting with the file's name (empty: intact).

    Reports changed and missing files, files that are not in the manifest (extra), links and empty folders
    (extra: a pack holds only regular files; links are never followed), and a manifest that does not list the
    pack's required files. With ``manifest_sha256_expected`` the manifest itself is checked too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: not a folder"]
    problems: list[str] = []
    if manifest_sha256_expected and (folder / MANIFEST).is_file():
        actual = manifest_sha256(folder)
        if actual != manifest_sha256_expected.strip().lower():
            problems.append(f"{MANIFEST}: changed (sha256 {actual}, expected {manifest_sha256_expected})")
    data, load_problems = _load_manifest(folder)
    if data is None:
        return problems + load_problems
    listed, problems_listed = _listed(data)
    problems += problems_listed
    files, others = _walk(folder)
    problems += [p for name, entry in sorted(listed.items()) if (p := _check_file(folder, name, entry, files))]
    # a suite's pack (flows.suite.pack) has its own required files; its cases' packs are files of it
    required = SUITE_REQUIRED_FILES if data.get("kind") == "suite" else REQUIRED_FILES
    problems += [f"{name}: not listed in {MANIFEST} (every pack has it)" for name in required
                 if name not in listed]
    problems += [f"{name}: extra (not in {MANIFEST})" for name in sorted(files)
                 if name != MANIFEST and name not in listed and name not in required]
    return problems + others


# ------------------------------------------------------------------------------------------------------ upload
def _upload_order(folder: Path) -> list[str]:
    """The pack's files with the manifest last, so a pack cut short by an error has no manifest."""
    names = pack_files(folder)
    return [n for n in names if n != MANIFEST] + [MANIFEST]


def _put_args(name: str, body: bytes, sse: str | None, kms_key_id: str | None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "Body": body,
        "ContentType": CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream"),
        "ChecksumSHA256": base64.b64encode(hashlib.sha256(body).digest()).decode("ascii"),
        "IfNoneMatch": "*",
    }
    if sse:
        args["ServerSideEncryption"] = sse
    if kms_key_id:
        args["SSEKMSKeyId"] = kms_key_id
    return args


def upload_pack(s3_client: S3Client, folder: Path, bucket: str, prefix: str, sse: str | None = "AES256",
                kms_key_id: str | None = None) -> list[str]:
    """Upload an intact pack to ``s3://bucket/prefix/`` with server-side encryption; returns the keys.

    Keys are ``prefix`` + the file's POSIX path in the pack, whatever the OS. Each object goes up with its
    SHA-256 (S3 rejects a body that does not match) and only if the key is new (evidence is never replaced);
    the manifest goes last. A pack that fails :func:`verify` is not uploaded.
    """
    from tasks.kit.errors import AWS_ERRORS, aws_error

    if sse is not None and sse not in SSE_VALUES:
        raise ValueError(f"sse must be one of {', '.join(SSE_VALUES)} (or None), not {sse!r}")
    if kms_key_id and not (sse or "").startswith("aws:kms"):
        raise ValueError("kms_key_id goes with sse='aws:kms' (or 'aws:kms:dsse')")
    folder = Path(folder)
    problems = verify(folder)
    if problems:
        raise ValueError(f"evidence pack {folder} is not intact, not uploading it: " + "; ".join(problems))
    base = prefix.strip("/")
    keys = []
    for name in _upload_order(folder):
        key = f"{base}/{name}" if base else name
        try:
            s3_client.put_object(Bucket=bucket, Key=key, **_put_args(name, (folder / name).read_bytes(), sse,
                                                                     kms_key_id))
        except AWS_ERRORS as exc:
            raise aws_error("S3 PutObject", f"s3://{bucket}/{key}", exc) from None
        keys.append(key)
    return keys


# --------------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None, prog: str = "python -m flows.evidence.ui") -> int:
    """``verify DIR [--manifest-sha256 HEX]``: exit 0 when the pack is intact, 1 (naming the files) when not."""
    from flows.console import safe_output

    safe_output()  # no UnicodeEncodeError on a cp1252 console or pipe (a folder's name may hold any character)
    parser = argparse.ArgumentParser(prog=prog, description="Evidence packs of pipeline-test runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="check that an evidence pack is intact")
    check.add_argument("folder", type=Path, help="the pack's folder (holds manifest.json)")
    check.add_argument("--manifest-sha256", metavar="HEX",
                       help="the manifest's SHA-256 as recorded elsewhere (the run's log or link artifact)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    problems = verify(args.folder, args.manifest_sha256)
    if problems:
        print(f"Evidence pack {args.folder} is NOT intact:")
        print("\n".join(f"  - {p}" for p in problems))
        return 1
    count = len(pack_files(args.folder)) - 1
    print(f"Evidence pack {args.folder} is intact: {count} file(s) match {MANIFEST} "
          f"(manifest sha256 {manifest_sha256(args.folder)}).")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m flows.evidence.pack.verify"))
