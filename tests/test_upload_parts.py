"""Tests of upload's multipart path: each file read and hashed once, parts' SHA-256 sent, memory bounded, undo."""

from __future__ import annotations

import base64
import hashlib
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tasks.kit.errors import StepError
from tasks.kit.step import UndoAction, UndoLog
from tasks.s3.steps import _upload_undo
from tasks.s3.upload import FileDigest, multipart_upload, upload_file

MIB = 1024 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_multipart_upload_hashes_the_file_once_and_sends_each_parts_sha256(s3: Any, bucket: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(11 * MIB)
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    opened: list[str] = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self.name) or real_open(self, *a, **k))
    sent: list[dict[str, Any]] = []
    s3.meta.events.register("before-parameter-build.s3.UploadPart", lambda params, **_: sent.append(dict(params)))
    seen: list[FileDigest] = []
    rec = upload_file(s3, big, bucket, "big.bin", multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB,
                      on_digest=seen.append)
    assert opened == ["big.bin"]  # hashed on one read (the parts are then sent from the file, as boto3 does)
    assert rec.multipart and rec.parts == 3 and rec.checksum_verified is True
    assert rec.sha256 == hashlib.sha256(data).hexdigest()
    parts = [data[i:i + 5 * MIB] for i in range(0, len(data), 5 * MIB)]
    assert sorted((p["PartNumber"], p["ChecksumSHA256"]) for p in sent) == [
        (n, b64(hashlib.sha256(part).digest())) for n, part in enumerate(parts, 1)]
    [digest] = seen
    assert digest.composite_b64 == b64(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest())


class DiscardingS3:
    """A client that takes parts and keeps nothing, to measure what the upload itself holds."""

    def __init__(self) -> None:
        self.parts = 0
        self.completed: dict[str, Any] = {}
        self.aborted = False

    def create_multipart_upload(self, **_: Any) -> dict[str, Any]:
        return {"UploadId": "u-1"}

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        body = kwargs["Body"]
        digest = hashlib.sha256()
        while block := body.read(256 * 1024):
            digest.update(block)
        assert kwargs["ChecksumSHA256"] == b64(digest.digest())
        self.parts += 1
        if kwargs["PartNumber"] == -1:
            raise RuntimeError("never")
        return {"ETag": f'"e{kwargs["PartNumber"]}"'}

    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self.completed = kwargs
        return {"ResponseMetadata": {"RequestId": "r-1"}}

    def abort_multipart_upload(self, **_: Any) -> dict[str, Any]:
        self.aborted = True
        return {}


def test_memory_is_bounded_by_a_few_parts(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:
        for _ in range(64):
            out.write(os.urandom(MIB))
    client = DiscardingS3()
    tracemalloc.start()
    try:
        multipart_upload(client, big, "b", "k", {}, 2 * MIB, overwrite=False, before_complete=lambda d: None,
                         workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert client.parts == 32 and len(client.completed["MultipartUpload"]["Parts"]) == 32
    assert client.completed["IfNoneMatch"] == "*"
    assert peak < 4 * MIB, f"peak {peak / MIB:.1f} MiB for 64 MiB in 2 MiB parts"  # read 1 MiB at a time


def test_a_failed_part_aborts_the_upload(tmp_path: Path) -> None:
    class Failing(DiscardingS3):
        def upload_part(self, **kwargs: Any) -> dict[str, Any]:
            raise ConnectionResetError("peer went away")

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * MIB))
    client = Failing()
    with pytest.raises(StepError, match="S3 multipart upload to s3://b/k failed"):
        multipart_upload(client, big, "b", "k", {}, MIB, overwrite=True, before_complete=lambda d: None)
    assert client.aborted and not client.completed


class Journal:
    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.n = 0

    def write(self, action: UndoAction) -> None:
        self.n += 1
        action.journal_id = f"e{self.n}"
        self.entries[action.journal_id] = dict(action.record or {})

    def remove(self, action: UndoAction) -> None:
        self.entries.pop(action.journal_id or "", None)


def test_undo_of_a_multipart_upload_learns_its_checksum_before_completion(s3: Any, bucket: str,
                                                                          tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * MIB))
    journal = Journal()
    log = UndoLog(journal=journal)
    undo = _upload_undo(s3, bucket, "big.bin", None, True, "upload", f"s3:{bucket}/big.bin")
    log.add(undo.action)
    assert list(journal.entries.values()) == [{"kind": undo.action.record["kind"], "bucket": bucket,
                                               "key": "big.bin", "checksum_sha256": "", "multipart": True}]
    at_completion: list[list[dict[str, Any]]] = []
    s3.meta.events.register("before-call.s3.CompleteMultipartUpload",
                            lambda **_: at_completion.append(list(journal.entries.values())))
    rec = upload_file(s3, big, bucket, "big.bin", multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB,
                      on_digest=lambda d: undo.sent(d, log))
    [entries] = at_completion  # journaled anew before the object exists, the old entry gone
    assert len(entries) == 1 and entries[0]["checksum_sha256"] == undo.checksum_sha256 != ""
    undo.record = rec
    assert "deleted" in str(undo.run()) and not s3.list_objects_v2(Bucket=bucket).get("Contents")
