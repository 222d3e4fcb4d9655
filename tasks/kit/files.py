"""What a step leaves for the evidence pack: files it wrote (StepFile) and the items it hashed (HashedItem: inputs
uploaded, query results read), which the pack's manifest lists."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Literal


@dataclasses.dataclass(frozen=True)
class HashedItem:
    """Something outside the evidence pack whose SHA-256 a step recorded, for the pack's manifest: an uploaded
    input file (``kind="input"``) or a query result (``kind="query_result"``). Build with :meth:`input` or
    :meth:`query_result`."""

    kind: Literal["input", "query_result"]
    location: str
    sha256: str
    size: int | None = None
    local_path: str | None = None
    query_id: str | None = None
    rows: int | None = None

    @classmethod
    def input(cls, *, local_path: str, bucket: str, key: str, size: int, sha256: str) -> HashedItem:
        return cls("input", f"s3://{bucket}/{key}", sha256.lower(), size=size, local_path=local_path)

    @classmethod
    def query_result(cls, *, query_id: str, location: str | None, rows: int, sha256: str,
                     size: int | None = None) -> HashedItem:
        return cls("query_result", location or f"query {query_id}", sha256.lower(), size=size, query_id=query_id,
                   rows=rows)


@dataclasses.dataclass(frozen=True)
class StepFile:
    """A file a step wrote into the run's scratch folder for the evidence pack (e.g. a reconciliation's
    differences as CSV): ``name`` is its path inside the step's folder of the pack, ``local_path`` where it is now,
    with its SHA-256 and size as written. Build with :meth:`of`."""

    name: str
    local_path: str
    sha256: str
    size: int

    @classmethod
    def of(cls, path: Path, name: str | None = None) -> StepFile:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return cls(name or path.name, str(path), digest.hexdigest(), path.stat().st_size)
