"""Uploading a file to S3 and putting it back: digests and checksums, multipart with parallel parts and a conditional
completion, the upload's record and its undo (delete, or a leftover the journal can redo)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping
from urllib.parse import urlencode

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from s3transfer.utils import ChunksizeAdjuster, ReadFileChunk

from tasks.kit.errors import (
    AWS_ERRORS,
    AWS_PRECONDITION_FAILED,
    CHECKSUM_MISMATCH,
    StepError,
    aws_error,
    error_code,
    request_id,
)
from tasks.kit.step import undo_kind
from tasks.s3.keys import MIB, content_type, s3_uri
from tasks.s3.objects import head_object

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

    from tasks.kit.aws import ClientFactory


@dataclass
class FileDigest:
    """SHA-256 of a whole file, and S3's composite form when it goes up in parts."""

    size: int
    sha256_hex: str
    sha256_b64: str
    parts: int = 1
    composite_b64: str | None = None


def digest_file(path: Path, part_size: int | None = None) -> FileDigest:
    """Hash a file in one pass; with ``part_size``, also the per-part hashes S3 combines for multipart uploads."""
    whole = hashlib.sha256()
    part_digests: list[bytes] = []
    size = 0
    chunk = part_size or 4 * MIB
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            whole.update(block)
            size += len(block)
            if part_size:
                part_digests.append(hashlib.sha256(block).digest())
    digest = whole.digest()
    result = FileDigest(size, digest.hex(), base64.b64encode(digest).decode())
    if part_size and len(part_digests) > 1:
        result.parts = len(part_digests)
        result.composite_b64 = base64.b64encode(hashlib.sha256(b"".join(part_digests)).digest()).decode()
    return result


# -------------------------------------------------------------------------------------------------- upload
@dataclass
class UploadRecord:
    """One uploaded file, for the evidence and for clean-up."""

    local_path: str
    bucket: str
    key: str
    size: int
    sha256: str
    content_type: str
    etag: str
    version_id: str | None
    request_id: str | None
    multipart: bool
    parts: int
    checksum_verified: bool | None
    seconds: float


@contextlib.contextmanager
def _conditional_completion(client: S3Client, bucket: str, key: str) -> Iterator[None]:
    """While the block runs, the multipart upload of (bucket, key) on this client completes only if no object is
    there yet: ``If-None-Match: *`` on CompleteMultipartUpload.

    boto3's transfer manager does not pass ``IfNoneMatch`` through, so an event handler adds it, for this key
    only (parallel uploads on one client each register their own), and is removed when the upload ends.
    """

    def add_if_none_match(params: dict[str, Any], **_: Any) -> None:
        if (params.get("Bucket"), params.get("Key")) == (bucket, key):
            params["IfNoneMatch"] = "*"

    event = "before-parameter-build.s3.CompleteMultipartUpload"
    unique_id = f"pipeline-test-if-none-match-{id(add_if_none_match)}"
    client.meta.events.register(event, add_if_none_match, unique_id=unique_id)
    try:
        yield
    finally:
        client.meta.events.unregister(event, unique_id=unique_id)


def digest_for_upload(path: Path, multipart_threshold: int, multipart_chunksize: int) -> FileDigest:
    """The file's SHA-256, and for a multipart upload its parts' (in the parts boto3 will send)."""
    size = path.stat().st_size
    multipart = size >= multipart_threshold
    return digest_file(path, part_size_for(size, multipart_threshold, multipart_chunksize) if multipart else None)


def part_size_for(size: int, multipart_threshold: int, multipart_chunksize: int) -> int:
    """The part size of a multipart upload of ``size`` bytes (S3's limits of 10,000 parts and 5 GiB a part)."""
    return int(ChunksizeAdjuster().adjust_chunksize(multipart_chunksize, size))


#: parts being sent at once
UPLOAD_WORKERS = 4


def multipart_upload(client: Any, path: Path, bucket: str, key: str, extra: dict[str, Any], part_size: int, *,
                     overwrite: bool, before_complete: Callable[[FileDigest], None],
                     workers: int = UPLOAD_WORKERS) -> str | None:
    """Upload a file in parts, hashing it once: each part's SHA-256 (sent with it, so S3 checks it) and the whole
    file's are computed on one read, 1 MiB at a time; each part is then sent from the file (as boto3 does, a
    streamed range: the OS's cache serves it), up to ``workers`` at once, so memory stays small whatever the
    part size. A part changed on disk in between is refused by S3 (its checksum no longer matches).
    ``before_complete`` gets the file's digest (whole and composite) once every part is sent, before
    CompleteMultipartUpload makes the object (with If-None-Match unless ``overwrite``). On any failure the
    multipart upload is aborted. Returns the completion's request id."""
    uri = s3_uri(bucket, key)
    create_args = {k: v for k, v in extra.items() if k != "ChecksumAlgorithm"}
    try:
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256",
                                                   **create_args)["UploadId"]
    except AWS_ERRORS as exc:
        raise aws_error("S3 multipart upload (CreateMultipartUpload)", uri, exc) from None

    def send(number: int, start: int, length: int, checksum: str) -> dict[str, Any]:
        with ReadFileChunk.from_filename(str(path), start, length, enable_callbacks=False) as body:
            response = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                          Body=body, ContentLength=length, ChecksumSHA256=checksum)
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

    whole = hashlib.sha256()
    part_digests: list[bytes] = []
    size = 0
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool, path.open("rb") as fh:
            pending: list[Future[dict[str, Any]]] = []
            while True:
                part, length = hashlib.sha256(), 0
                while length < part_size and (block := fh.read(min(MIB, part_size - length))):
                    whole.update(block)
                    part.update(block)
                    length += len(block)
                if not length:
                    break
                part_digests.append(part.digest())
                running = [f for f in pending if not f.done()]
                if len(running) >= workers:
                    wait(running, return_when=FIRST_COMPLETED)
                for done in [f for f in pending if f.done()]:
                    done.result()  # a failed part stops the upload at once
                pending.append(pool.submit(send, len(part_digests), size, length,
                                           base64.b64encode(part_digests[-1]).decode()))
                size += length
            parts = [f.result() for f in pending]
        digest_bytes = whole.digest()
        digest = FileDigest(size, digest_bytes.hex(), base64.b64encode(digest_bytes).decode(), parts=len(parts),
                            composite_b64=base64.b64encode(hashlib.sha256(b"".join(part_digests)).digest()).decode())
        before_complete(digest)
        complete: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id,
                                    "MultipartUpload": {"Parts": parts}}
        if not overwrite:
            complete["IfNoneMatch"] = "*"
        response = client.complete_multipart_upload(**complete)
        return request_id(response)
    except BaseException as exc:
        with contextlib.suppress(*AWS_ERRORS):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        if isinstance(exc, ClientError):
            if error_code(exc) == "PreconditionFailed":
                raise StepError(f"{uri} already exists (it appeared during the upload); it was left untouched. "
                                "Set overwrite: true to replace it.", code=AWS_PRECONDITION_FAILED) from None
            raise aws_error(f"S3 multipart upload ({exc.operation_name})", uri, exc) from None
        if isinstance(exc, AWS_ERRORS):
            raise aws_error("S3 multipart upload", uri, exc) from None
        if isinstance(exc, Exception) and not isinstance(exc, StepError):  # e.g. a connection reset mid-part
            raise StepError(f"S3 multipart upload to {uri} failed: {exc}") from None
        raise


def upload_file(
    client: S3Client,
    path: Path,
    bucket: str,
    key: str,
    *,
    overwrite: bool = False,
    sse: str | None = None,
    kms_key_id: str | None = None,
    tags: dict[str, str] | None = None,
    multipart_threshold: int = 16 * MIB,
    multipart_chunksize: int = 16 * MIB,
    display_path: str | None = None,
    digest: FileDigest | None = None,
    on_digest: Callable[[FileDigest], None] | None = None,
) -> UploadRecord:
    """Upload one file with a SHA-256 checksum; refuse to replace an existing object unless ``overwrite``.

    Small files go up in one PutObject carrying the whole-file SHA-256 (S3 rejects a mismatch with BadDigest);
    large ones in parts (:func:`multipart_upload`), each with its SHA-256, computed on the same read as the
    whole file's: each file is read and hashed once, with memory bounded by a few parts. Either way the
    checksum is read back with HEAD and compared with the local one. ``digest``: a small file's, from
    :func:`digest_for_upload` with the same sizes, when the caller needed it first (e.g. to register the
    upload's undo before it); a large file's is known only once its parts are read: ``on_digest`` gets it
    before the upload is completed (before the object exists), e.g. to record it in the upload's undo.
    """
    started = time.monotonic()
    size = path.stat().st_size
    multipart = size >= multipart_threshold
    if not multipart:
        digest = digest or digest_for_upload(path, multipart_threshold, multipart_chunksize)
    ctype = content_type(path)
    extra: dict[str, Any] = {"ContentType": ctype, "ChecksumAlgorithm": "SHA256"}
    if sse:
        extra["ServerSideEncryption"] = sse
    if kms_key_id:
        extra["SSEKMSKeyId"] = kms_key_id
    if tags:
        extra["Tagging"] = urlencode(tags)
    sent: list[FileDigest] = [digest] if digest is not None and not multipart else []

    def hashed(found: FileDigest) -> None:
        sent.append(found)
        if on_digest is not None:
            on_digest(found)

    try:
        if multipart:
            rid = multipart_upload(client, path, bucket, key, extra,
                                   part_size_for(size, multipart_threshold, multipart_chunksize),
                                   overwrite=overwrite, before_complete=hashed)
        else:
            assert digest is not None
            rid = _send(client, path, bucket, key, extra, digest, overwrite=overwrite, multipart=False,
                        config=TransferConfig(multipart_threshold=multipart_threshold,
                                              multipart_chunksize=multipart_chunksize))
        digest = sent[-1]
        verified, head = verify_checksum(client, bucket, key, digest)
    except StepError as exc:
        # the object may be there all the same (a lost response, a failed read-back): the evidence says what was
        # sent and whether it went up in parts (the upload's undo, registered before, deletes only that content)
        if sent:
            exc.details.setdefault("checksum_sha256", sent[-1].composite_b64 or sent[-1].sha256_b64)
        exc.details.setdefault("multipart", multipart)
        raise
    return UploadRecord(
        local_path=display_path or path.as_posix(), bucket=bucket, key=key, size=size, sha256=digest.sha256_hex,
        content_type=ctype, etag=head.get("ETag", "").strip('"'), version_id=head.get("VersionId"),
        request_id=rid or request_id(head), multipart=multipart, parts=digest.parts,
        checksum_verified=verified, seconds=round(time.monotonic() - started, 3),
    )


def _send(client: S3Client, path: Path, bucket: str, key: str, extra: dict[str, Any], digest: FileDigest, *,
          overwrite: bool, multipart: bool, config: TransferConfig) -> str | None:
    """PutObject (returns its request id), or the transfer manager's multipart upload (returns None)."""
    uri = s3_uri(bucket, key)
    action = "S3 multipart upload" if multipart else "S3 PutObject"
    try:
        if not multipart:
            if not overwrite:
                extra["IfNoneMatch"] = "*"
            with path.open("rb") as body:
                resp = client.put_object(Bucket=bucket, Key=key, Body=body, ChecksumSHA256=digest.sha256_b64,
                                         **extra)
            return request_id(resp)
        with _conditional_completion(client, bucket, key) if not overwrite else contextlib.nullcontext():
            client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=config)
        return None
    except ClientError as exc:
        failed = exc
    except AWS_ERRORS as exc:
        raise aws_error(action, uri, exc) from None
    except Exception as exc:  # the transfer manager wraps the failed call's ClientError in S3UploadFailedError
        if not isinstance(exc.__context__, ClientError):
            raise StepError(f"{action} to {uri} failed: {exc}") from None
        failed = exc.__context__
    if error_code(failed) == "PreconditionFailed":
        raise StepError(f"{uri} already exists (it appeared during the upload); it was left untouched. "
                        "Set overwrite: true to replace it.", code=AWS_PRECONDITION_FAILED) from None
    raise aws_error(f"{action} ({failed.operation_name})" if multipart else action, uri, failed) from None


def verify_checksum(client: S3Client, bucket: str, key: str,
                    digest: FileDigest) -> tuple[bool | None, Mapping[str, Any]]:
    """Read the object's SHA-256 back with HEAD and compare it with the local file's.

    Returns (True, head) on a match, (None, head) when S3 reports no checksum; raises on a mismatch.
    A multipart object's checksum is S3's composite (hash of part hashes, ``-N`` suffix).
    """
    uri = s3_uri(bucket, key)
    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except AWS_ERRORS as exc:
        raise aws_error("S3 HeadObject", uri, exc) from None
    remote = head.get("ChecksumSHA256")
    if not remote:
        return None, head
    expected = digest.composite_b64 or digest.sha256_b64
    if remote.split("-")[0] != expected:
        raise StepError(f"checksum mismatch after upload to {uri}: S3 has SHA-256 {remote}, the local file "
                        f"{expected}", code=CHECKSUM_MISMATCH)
    return True, head


def upload_resource(bucket: str, prefix: str) -> str:
    """What a run locks (and journals under) when it uploads under ``prefix`` in ``bucket``."""
    return f"s3:{bucket}/{prefix}"


def delete_uploaded(client: S3Client, record: UploadRecord) -> dict[str, Any]:
    """Remove exactly what an upload put there: only if the object is still the one uploaded (same ETag)."""
    uri = s3_uri(record.bucket, record.key)
    current = head_object(client, record.bucket, record.key)
    if current is None:
        return {"object": uri, "action": "already gone"}
    if current.etag != record.etag and not record.version_id:
        return {"object": uri, "action": f"kept: changed since the upload (ETag {current.etag})"}
    return {"object": uri, "action": _delete_object(client, record.bucket, record.key, record.version_id)}


LEFTOVER_KIND = "s3_leftover"


@undo_kind(LEFTOVER_KIND)
def redo_delete_leftover(clients: ClientFactory, record: dict[str, Any]) -> dict[str, Any]:
    """Remove what a failed upload left, from its journal record (in another process, e.g. ``recover``)."""
    return delete_leftover(clients.client("s3"), record["bucket"], record["key"], record["checksum_sha256"],
                           bool(record.get("multipart")))


def delete_leftover(client: S3Client, bucket: str, key: str, checksum_sha256: str,
                    multipart: bool = False) -> dict[str, Any]:
    """Remove what a failed upload may have left at ``key``: only an object with the content that was sent (its
    SHA-256 as S3 reports it), never another writer's. After a failed multipart upload, also abort the unfinished
    multipart uploads of exactly this key (the step's own target): one whose CreateMultipartUpload response was
    lost has no id the transfer manager could abort it by, and its parts would be billed unseen."""
    uri = s3_uri(bucket, key)
    aborted = _abort_uploads(client, bucket, key) if multipart else 0
    also = f"; aborted {aborted} unfinished multipart upload(s)" if aborted else ""
    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if error_code(exc) in ("NotFound", "NoSuchKey"):
            return {"object": uri, "action": "nothing to delete: the failed upload left no object" + also}
        raise aws_error("S3 HeadObject", uri, exc) from None
    except AWS_ERRORS as exc:
        raise aws_error("S3 HeadObject", uri, exc) from None
    remote = str(head.get("ChecksumSHA256") or "").split("-")[0]
    if remote != checksum_sha256:
        why = "S3 reports no checksum to tell it apart from" if not remote else "its content differs from"
        return {"object": uri, "action": f"kept: {why} the failed upload's" + also}
    return {"object": uri, "action": _delete_object(client, bucket, key, head.get("VersionId")) + also}


def _abort_uploads(client: S3Client, bucket: str, key: str) -> int:
    """Abort the unfinished multipart uploads of exactly ``key``; returns how many."""
    uri = s3_uri(bucket, key)
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    except AWS_ERRORS as exc:
        raise aws_error("S3 ListMultipartUploads", uri, exc) from None
    ours = [u for u in uploads if u.get("Key") == key]
    for upload in ours:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
        except AWS_ERRORS as exc:
            raise aws_error("S3 AbortMultipartUpload", uri, exc) from None
    return len(ours)


def _delete_object(client: S3Client, bucket: str, key: str, version_id: str | None) -> str:
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    try:
        client.delete_object(**kwargs)
    except AWS_ERRORS as exc:
        raise aws_error("S3 DeleteObject", s3_uri(bucket, key), exc) from None
    return "deleted" + (f" (version {version_id})" if version_id else "")
