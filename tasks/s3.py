"""S3 steps: ``upload`` (put test files where the pipeline picks them up) and ``expect_objects`` (wait for what
the pipeline writes). Plain functions take a boto3 S3 client; the runners at the bottom wire them to the spec.

Uploads are checked end to end: a SHA-256 is sent with each upload (S3 rejects a body that does not match)
and read back afterwards; an existing object is never replaced unless the step says ``overwrite: true``
(checked before the first upload, and enforced atomically with S3's conditional write ``If-None-Match: *``).
Waiting uses HEAD or LIST, never a download, with a growing interval. ``content`` then reads each object found,
streamed (:mod:`tasks.object_content`); ``absent: true`` watches for a hold time that nothing appears.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import functools
import hashlib
import mimetypes
import posixpath
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Iterator, Literal, Mapping
from urllib.parse import urlencode

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from pydantic import AfterValidator, Field, model_validator
from s3transfer.utils import ChunksizeAdjuster, ReadFileChunk

from tasks import markdown
from tasks.base import (
    RESOURCE_NAME,
    Link,
    StepBase,
    StepContext,
    StepOutcome,
    UndoAction,
    UndoLog,
    format_bytes,
    is_template,
    step_kind,
    template_aware,
    undo_kind,
)
from tasks.console_links import s3_link
from tasks.errors import (
    AWS_ERRORS,
    AWS_NO_SUCH_BUCKET,
    AWS_PRECONDITION_FAILED,
    CHECKSUM_MISMATCH,
    OBJECT_EXISTS,
    TIMED_OUT,
    AwsCallError,
    CheckFailed,
    HashedItem,
    StepError,
    aws_error,
    error_code,
    request_id,
)
from tasks.iam import Arns, Footprint
from tasks.object_content import (
    MAX_OBJECTS,
    LocalFile,
    ObjectContent,
    ObjectReport,
    check_object,
    content_markdown,
)
from tasks.polling import MAX_WAIT_SECONDS, Clock, PollSettings, poll
from tasks.status import check_verdict

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

    from tasks.aws import ClientFactory

for _ext, _type in {".csv": "text/csv", ".jsonl": "application/x-ndjson", ".ndjson": "application/x-ndjson",
                    ".parquet": "application/vnd.apache.parquet", ".avro": "application/avro",
                    ".orc": "application/octet-stream", ".gz": "application/gzip"}.items():
    mimetypes.add_type(_type, _ext)

MIB = 1024 * 1024
#: S3's limit on a key, in UTF-8 bytes
MAX_KEY_BYTES = 1024
#: an S3 bucket name (S3's rules: 3 to 63 lowercase letters, digits, dots and dashes, starting and ending with a
#: letter or digit, no '..', '.-' or '-.', not shaped like an IP address), checked once templates are rendered
BucketName = Annotated[str, template_aware(
    r"(?!\d+\.\d+\.\d+\.\d+$)(?!xn--)(?!.*(\.\.|\.-|-\.))[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
    "an S3 bucket name is 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or "
    "digit, without '..' and not shaped like an IP address"), RESOURCE_NAME]
_DRIVE = re.compile(r"^[A-Za-z]:([\\/]|$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _safe_key(value: str) -> str:
    """An S3 key (or prefix): ``\\`` read as ``/`` (the one normalisation of every key field), no drive letter,
    no ``..`` segment, no leading ``/``, no control character, at most MAX_KEY_BYTES bytes of UTF-8 (checked as
    written and again once rendered; a template is normalised once rendered)."""
    if not is_template(value):
        value = value.replace("\\", "/")
    if _DRIVE.match(value):
        raise ValueError(f"an S3 key must not start with a drive letter ({value[:3]!r}: a local Windows path?); "
                         "write the key relative to the bucket, e.g. in/a.csv")
    if value.startswith(("/", "\\")):
        raise ValueError("an S3 key must not start with '/' (S3 keys are relative: write in/a.csv, not /in/a.csv)")
    if ".." in value.replace("\\", "/").split("/"):
        raise ValueError("an S3 key must not hold a '..' segment (S3 does not resolve it; the object would land "
                         "under a key with '..' in it)")
    if _CONTROL.search(value):
        raise ValueError("an S3 key must not hold a control character (newline, tab, NUL, ...)")
    if not is_template(value) and len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"an S3 key is at most {MAX_KEY_BYTES:,} bytes of UTF-8 (this one is "
                         f"{len(value.encode('utf-8', 'surrogatepass')):,})")
    return value


def check_glob(pattern: str) -> str:
    """A glob whose character classes are well formed: ``[z-a]`` (a reversed range) matches nothing, so a wait
    on it would only ever time out; refused (checked as written and once rendered)."""
    if is_template(pattern):
        return pattern
    for match in re.finditer(r"\[!?(\]?[^\]]*)\]", pattern):
        body = match.group(1)
        for low, high in re.findall(r"(.)-(.)", body):
            if low > high:
                raise ValueError(f"the glob {pattern!r} has a reversed range {low}-{high} in {match.group()!r}, "
                                 "which matches nothing (write it low to high, e.g. [a-z])")
    return pattern


def _safe_uri_key(value: str | None) -> str | None:
    """An ``s3://bucket/key`` URI whose key part is a safe key (see :func:`_safe_key`)."""
    if value and value.startswith("s3://"):
        _safe_key(value[len("s3://"):].partition("/")[2])
    return value


#: an S3 key or prefix: no '..' segment, no leading '/', checked as written and again once rendered
S3Key = Annotated[str, AfterValidator(_safe_key), RESOURCE_NAME]
#: the same check on the key part of an s3:// URI (use in an Annotated string field, with RESOURCE_NAME)
S3_URI_KEY = AfterValidator(_safe_uri_key)
#: the most objects a count may name (a LIST of a million keys already takes minutes)
MAX_COUNT = 1_000_000
#: S3's largest object (5 TiB)
MAX_OBJECT_BYTES = 5 * 1024 ** 4
TAG_RUN = "pipeline-test-run"
TAG_CASE = "pipeline-test-case"


# ---------------------------------------------------------------------------------------------- keys & files
def s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"


def posix_key(prefix: str, local: PurePath) -> str:
    """The object key for a local file under a key prefix: always POSIX, whatever the local OS's separator."""
    prefix = prefix.replace("\\", "/")
    return posixpath.join(prefix, local.name) if prefix else local.name


def resolve_files(patterns: list[str], base: Path) -> list[Path]:
    """Local files named by paths or glob patterns, relative to ``base`` (the spec's folder); sorted, unique.

    Backslashes in patterns are read as separators, so a spec written on Windows works everywhere.
    """
    found: dict[Path, None] = {}
    for raw in patterns:
        pattern = raw.replace("\\", "/")
        path = Path(pattern)
        if any(ch in pattern for ch in "*?["):
            root = Path(path.anchor) if path.is_absolute() else base
            rel = pattern[len(path.anchor):] if path.is_absolute() else pattern
            matches = sorted(p for p in root.glob(rel) if p.is_file())
            if not matches:
                raise StepError(f"no local file matches {raw!r} (relative to {base})")
            found.update(dict.fromkeys(matches))
        else:
            full = path if path.is_absolute() else base / path
            if not full.is_file():
                raise StepError(f"local file {raw!r} not found (looked for {full})")
            found[full] = None
    return list(found)


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


def content_type(path: PurePath) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def tag_value(text: str) -> str:
    """S3 tag values allow letters, digits, spaces and ``+ - = . _ : / @``; anything else becomes ``-``."""
    cleaned = "".join(ch if ch.isalnum() or ch in " +-=._:/@" else "-" for ch in text)
    return cleaned[:256]


# ------------------------------------------------------------------------------------------------- objects
@dataclass
class ObjectInfo:
    """What HEAD or LIST says of an object (never its content)."""

    key: str
    size: int
    etag: str
    last_modified: str = ""
    version_id: str | None = None


def head_object(client: S3Client, bucket: str, key: str) -> ObjectInfo | None:
    """HEAD an object: its info, or None when it does not exist. AccessDenied and other errors raise.

    Note: without ``s3:ListBucket``, S3 answers a HEAD on a missing key with 403, not 404; the error
    message says so, because "not found yet" would hide a permissions problem forever.
    """
    try:
        resp = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("NotFound", "NoSuchKey"):
            return None
        err = aws_error("S3 HeadObject", s3_uri(bucket, key), exc)
        if code == "AccessDenied":
            err.message += (" (the caller lacks s3:GetObject on the key, or lacks s3:ListBucket so that S3 "
                            "reports a missing key as 403)")
            err.args = (err.message,)
        raise err from None
    except AWS_ERRORS as exc:
        raise aws_error("S3 HeadObject", s3_uri(bucket, key), exc) from None
    return ObjectInfo(key, int(resp.get("ContentLength", 0)), resp.get("ETag", "").strip('"'),
                      str(resp.get("LastModified", "")), resp.get("VersionId"))


def require_bucket(client: S3Client, bucket: str) -> None:
    """Raise NoSuchBucket when the bucket does not exist (HeadBucket).

    S3 answers a HEAD of a key in a missing bucket with a bare 404, as for a missing key, so a wait for exact
    keys asks this once a HEAD says 404. A HeadBucket refused with 403 proves nothing either way: the wait goes on.
    """
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("NotFound", "NoSuchBucket"):
            rid = request_id(exc.response)
            raise AwsCallError(f"S3 HeadBucket on {s3_uri(bucket)} failed: NoSuchBucket: the bucket does not exist"
                               + (f" (request id {rid})" if rid else ""), code=AWS_NO_SUCH_BUCKET) from None
        if code != "AccessDenied":
            raise aws_error("S3 HeadBucket", s3_uri(bucket), exc) from None
    except AWS_ERRORS as exc:
        raise aws_error("S3 HeadBucket", s3_uri(bucket), exc) from None


def list_objects(client: S3Client, bucket: str, prefix: str, limit: int | None = None) -> list[ObjectInfo]:
    """LIST objects under a prefix through the paginator (all pages, or the first ``limit`` objects)."""
    out: list[ObjectInfo] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out.append(ObjectInfo(obj["Key"], int(obj["Size"]), obj.get("ETag", "").strip('"'),
                                      str(obj.get("LastModified", ""))))
                if limit and len(out) >= limit:
                    return out
    except AWS_ERRORS as exc:
        raise aws_error("S3 ListObjectsV2", s3_uri(bucket, prefix), exc) from None
    return out


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


# ------------------------------------------------------------------------------------------------- waiting
@dataclass
class Observation:
    """One look at the bucket: what matches, what is there but does not count, what is missing."""

    matched: list[ObjectInfo]
    others: list[tuple[ObjectInfo, str]]
    missing: list[str]

    def describe(self) -> str:
        text = f"{len(self.matched)} matching"
        if self.missing:
            text += f", missing {', '.join(self.missing[:5])}" + (" ..." if len(self.missing) > 5 else "")
        return text


def observe_keys(client: S3Client, bucket: str, keys: list[str], min_size: int) -> Observation:
    """HEAD each expected key."""
    obs = Observation([], [], [])
    for key in keys:
        info = head_object(client, bucket, key)
        if info is None:
            obs.missing.append(key)
        elif info.size < min_size:
            obs.others.append((info, f"smaller than {min_size} B"))
        else:
            obs.matched.append(info)
    return obs


def observe_prefix(client: S3Client, bucket: str, prefix: str, pattern: str, min_size: int) -> Observation:
    """LIST the prefix; keys are matched to ``pattern`` by their part after the prefix (glob, ``*`` spans ``/``)."""
    obs = Observation([], [], [])
    for info in list_objects(client, bucket, prefix):
        rest = info.key[len(prefix):]
        if not fnmatch.fnmatchcase(rest, pattern):
            obs.others.append((info, f"does not match {pattern!r}"))
        elif info.size < min_size:
            obs.others.append((info, f"smaller than {min_size} B"))
        else:
            obs.matched.append(info)
    return obs



# ------------------------------------------------------------------------------------------------ the steps
class UploadStep(StepBase):
    """Upload local test files to S3, where the pipeline under test picks them up."""

    local_files: ClassVar[frozenset[str]] = frozenset({"files"})

    kind: Literal["upload"] = "upload"
    files: list[str] = Field(..., min_length=1, description="Local files: paths or glob patterns, relative to "
                             "the spec file (``/`` or ``\\`` as separator).")
    bucket: BucketName = Field(..., description="Target bucket.")
    key: S3Key | None = Field(None, description="Full object key, for a single file.")
    key_prefix: S3Key | None = Field(None, description="Key prefix; each file goes to prefix + its file name.")
    content_type: str | None = Field(None, description="Content-Type; guessed from the file name when unset.")
    sse: Literal["AES256", "aws:kms"] | None = Field(None, description="Server-side encryption.")
    kms_key_id: str | None = Field(None, description="KMS key id or ARN, with sse: aws:kms.")
    overwrite: bool = Field(False, description="Replace an existing object. Without it an existing key fails "
                            "the step before anything is uploaded, and the object stays as it was.")
    tags: dict[str, str] | None = Field(None, description="Object tags. Default: pipeline-test-run (the flow "
                                        "run id) and pipeline-test-case, so test data can be found; {} for none.")
    cleanup: bool = Field(False, description="Delete the uploaded objects when the case ends (only those this "
                          "case uploaded, and only if unchanged since).")
    multipart_threshold_mb: int = Field(16, ge=5, le=5120,
                                        description="Files of this size (MiB) or more go up in parts.")

    def resources(self, spec_dir: Path) -> list[str]:
        """The key prefix (or key) this step uploads under: locked for the whole case run."""
        target = (self.key if self.key is not None else self.key_prefix or "").replace("\\", "/")
        return [upload_resource(self.bucket, target)]

    @model_validator(mode="after")
    def _one_key_form(self) -> "UploadStep":
        if (self.key is None) == (self.key_prefix is None):
            raise ValueError("give exactly one of 'key' (one file) or 'key_prefix' (one or more files)")
        if self.key is not None and (len(self.files) != 1 or any(c in self.files[0] for c in "*?[")):
            raise ValueError("'key' names one object, so 'files' must be exactly one path (no glob); "
                             "use 'key_prefix' for several files")
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError("'kms_key_id' needs sse: aws:kms")
        return self


class ExpectObjectsStep(StepBase):
    """Wait for the pipeline to write objects (HEAD or LIST), and check what they hold; or that none appear."""

    kind: Literal["expect_objects"] = "expect_objects"
    bucket: BucketName = Field(..., description="Bucket to look in.")
    keys: list[S3Key] | None = Field(None, min_length=1, description="Exact keys that must exist.")
    prefix: S3Key | None = Field(None, description="Key prefix to list (instead of keys).")
    pattern: Annotated[str, AfterValidator(check_glob)] = Field(
        "*", description="Glob on the key's part after the prefix (``*`` also spans ``/``).")
    count: int | None = Field(None, ge=0, le=MAX_COUNT, description="Exactly this many matching objects (with "
                              "prefix).")
    min_count: int | None = Field(None, ge=1, le=MAX_COUNT, description="At least this many matching objects (with "
                                  "prefix; default 1).")
    min_size: int = Field(0, ge=0, le=MAX_OBJECT_BYTES, description="Minimum size in bytes of each matching object "
                          "(at most S3's 5 TiB).")
    wait: PollSettings = Field(default_factory=PollSettings, description="How long and how often to look.")
    content: ObjectContent | None = Field(None, description="Check what each matching object holds (read "
                                          f"streamed, at most {MAX_OBJECTS} objects): format, rows, columns, a "
                                          "copy of an uploaded file, column conditions.")
    absent: bool = Field(False, description="The negative form: nothing matching `keys` (or `prefix` + `pattern`) "
                         "may appear for `hold` seconds; the step passes only after the whole hold.")
    hold: float | None = Field(None, gt=0, le=MAX_WAIT_SECONDS, description="With absent: how long (seconds) "
                               "nothing may appear; `wait` sets how often to look (its timeout does not apply).")

    @model_validator(mode="after")
    def _one_form(self) -> "ExpectObjectsStep":
        if (self.keys is None) == (self.prefix is None):
            raise ValueError("give exactly one of 'keys' (exact keys) or 'prefix' (with optional 'pattern')")
        if self.keys is not None and (self.count is not None or self.min_count is not None
                                      or self.pattern != "*"):
            raise ValueError("'count', 'min_count' and 'pattern' go with 'prefix', not with 'keys'")
        if self.count is not None and self.min_count is not None:
            raise ValueError("give 'count' (exact) or 'min_count' (minimum), not both")
        if self.absent:
            if self.hold is None:
                raise ValueError("absent: true needs 'hold' (how many seconds nothing may appear)")
            clashing = [f for f in ("count", "min_count", "content") if getattr(self, f) is not None]
            clashing += ["min_size"] if self.min_size else []
            clashing += ["wait.timeout"] if "timeout" in self.wait.model_fields_set else []
            if clashing:
                raise ValueError(f"{', '.join(repr(f) for f in clashing)} cannot go with absent: true (nothing may "
                                 "appear; the hold time is 'hold')")
        elif self.hold is not None:
            raise ValueError("'hold' goes with absent: true")
        if self.content is not None and self.count is not None and self.count > MAX_OBJECTS:
            raise ValueError(f"content checks read at most {MAX_OBJECTS} objects (count is {self.count})")
        return self

    def case_checks(self, case: Any) -> list[str]:
        return self.content.upload_check(case) if self.content is not None else []


def object_link(ctx: StepContext, bucket: str, key: str) -> Link:
    """A link to an object: the S3 console on AWS, the emulator's URL elsewhere."""
    return s3_link(ctx.clients.endpoint_url("s3"), ctx.clients.region, bucket, key)


def upload_footprint(step: UploadStep, arns: Arns) -> Footprint:
    """Checks the keys (HEAD), puts the objects (tagged unless ``tags: {}``), verifies their checksums; the undo
    reads each object again and deletes it (its version, on a versioned bucket) or aborts its unfinished parts."""
    fp = Footprint()
    target = (step.key if step.key is not None else step.key_prefix or "").replace("\\", "/")
    objects = arns.s3_objects(step.bucket, target, prefix=step.key is None)
    fp.change("S3 " + ("object" if step.key is not None else "prefix"), f"s3://{step.bucket}/{target}",
              f"upload {', '.join(step.files)}" + (", overwrite" if step.overwrite else ""))
    fp.need(objects, "s3:GetObject", "s3:PutObject")
    if step.tags != {}:
        fp.need(objects, "s3:PutObjectTagging")
    if step.content_type:  # a Content-Type set by copying the object onto itself, with its tags
        fp.need(objects, "s3:GetObjectTagging")
    if step.sse == "aws:kms":
        fp.need_kms(arns, "s3", "kms:GenerateDataKey", "kms:Decrypt")
    if step.cleanup:
        fp.undo("S3 " + ("object" if step.key is not None else "prefix"), f"s3://{step.bucket}/{target}",
                "delete what this case uploaded (if unchanged since)")
        fp.need(objects, "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:AbortMultipartUpload")
        fp.need(arns.s3_bucket(step.bucket), "s3:ListBucketMultipartUploads")
    return fp


@step_kind(UploadStep, footprint=upload_footprint)
def run_upload(step: UploadStep, ctx: StepContext) -> StepOutcome:
    """Upload the step's files; every key is checked for existence before the first byte goes up."""
    client = ctx.clients.client("s3")
    files = resolve_files(step.files, ctx.spec_dir)
    keys = [step.key.replace("\\", "/")] if step.key else [posix_key(step.key_prefix or "", f) for f in files]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise StepError(f"several files map to the same key: {', '.join(dupes)}")
    if not step.overwrite:
        existing = [(k, info) for k in keys if (info := head_object(client, step.bucket, k)) is not None]
        if existing:
            listing = "; ".join(f"{s3_uri(step.bucket, k)} ({format_bytes(i.size)}, ETag {i.etag}, "
                                f"modified {i.last_modified})" for k, i in existing)
            raise StepError(f"refusing to overwrite existing object(s): {listing}. Nothing was uploaded and the "
                            "objects are untouched; set overwrite: true to replace them.", code=OBJECT_EXISTS,
                            details={"existing": [asdict(i) for _, i in existing]})
    tags = step.tags if step.tags is not None else {TAG_RUN: tag_value(ctx.run_id), TAG_CASE: tag_value(ctx.case_name)}
    records: list[UploadRecord] = []
    for path, key in zip(files, keys):
        display = _display_path(path, ctx.spec_dir)
        ctx.logger.info("Uploading %s to %s (%s)", display, s3_uri(step.bucket, key), format_bytes(path.stat().st_size))
        threshold = chunksize = step.multipart_threshold_mb * MIB
        multipart = path.stat().st_size >= threshold
        # a small file is hashed first (its PutObject carries the SHA-256); a large one while it goes up in parts
        digest = None if multipart else digest_for_upload(path, threshold, chunksize)
        undo = _upload_undo(client, step.bucket, key, digest, multipart, ctx.label,
                            step.resources(ctx.spec_dir)[0]) if step.cleanup else None
        if undo is not None:
            ctx.undo.add(undo.action)  # before the first byte goes up: journaled, so even a kill is undone
        try:
            record = upload_file(client, path, step.bucket, key, overwrite=step.overwrite, sse=step.sse,
                                 kms_key_id=step.kms_key_id, tags=tags, multipart_threshold=threshold,
                                 multipart_chunksize=chunksize, display_path=display, digest=digest,
                                 on_digest=functools.partial(undo.sent, log=ctx.undo) if undo else None)
            if undo is not None:
                undo.record = record
            if step.content_type and step.content_type != record.content_type:
                record = _retype(client, record, step.content_type)
                if undo is not None:
                    undo.record = record
        except StepError as exc:
            if undo is not None and exc.code == AWS_PRECONDITION_FAILED:
                ctx.undo.done(undo.action)  # another writer's object is there, not ours: nothing to undo
            raise
        records.append(record)
    total = sum(r.size for r in records)
    prefix = (step.key_prefix or "").replace("\\", "/")
    summary = f"uploaded {len(records)} file(s), {format_bytes(total)}, to {s3_uri(step.bucket, prefix)}"
    if step.key:
        summary = f"uploaded {records[0].local_path} ({format_bytes(total)}) to {s3_uri(step.bucket, records[0].key)}"
    checksum = {True: f"{check_verdict(True)}: verified by S3", None: "sent (not reported back)",
                False: f"{check_verdict(False)}: mismatch"}
    items = [markdown.Md(
        f"**{markdown.text(r.local_path)}** → {markdown.code(r.key)} ({format_bytes(r.size)})  \n"
        f"SHA-256 {markdown.code(r.sha256)}; checksum {checksum[r.checksum_verified]}  \n"
        f"ETag {markdown.code(r.etag)}; version {markdown.code(r.version_id or '–')}; "
        f"request id {markdown.code(r.request_id or '–')}") for r in records]
    md = "\n".join([
        f"Uploaded **{len(records)}** file(s) to bucket {markdown.code(step.bucket)}"
        + (f", encrypted with {markdown.code(step.sse)}" if step.sse else "")
        + (", overwriting allowed" if step.overwrite else ", refusing to overwrite") + ".",
        "",
        "\n".join(f"- {item}" for item in items),
        "",
        f"Tags: {', '.join(markdown.code(f'{k}={v}') for k, v in tags.items()) or 'none'}."
        + (" Clean-up: these objects are deleted when the case ends." if step.cleanup else ""),
    ])
    return StepOutcome(
        summary=summary,
        details={"bucket": step.bucket, "uploads": [asdict(r) for r in records], "tags": tags,
                 "cleanup": step.cleanup},
        markdown=md,
        links=[object_link(ctx, r.bucket, r.key) for r in records[:10]],
        request_ids=[r.request_id for r in records if r.request_id],
        hashed_items=[HashedItem.input(local_path=r.local_path, bucket=r.bucket, key=r.key, size=r.size,
                                       sha256=r.sha256) for r in records],
    )


@dataclass
class _UploadUndo:
    """The undo of one upload, registered before it: deletes the object the upload put there. Once the upload
    is known (ETag, version) exactly that; before (a kill, a lost response, a failed read-back), whatever is at
    the key only if it has the content that was sent (see :func:`delete_leftover`); never another writer's.
    The journal keeps the second form, which is right in both cases."""

    client: S3Client = field(repr=False)
    bucket: str
    key: str
    checksum_sha256: str
    multipart: bool
    record: UploadRecord | None = None
    action: UndoAction = field(init=False, repr=False)

    def sent(self, digest: FileDigest, log: UndoLog) -> None:
        """A multipart upload's checksum, known once its parts are read and sent, before the object exists: from
        now on the undo deletes an object at the key that has this content (journaled anew)."""
        self.checksum_sha256 = digest.composite_b64 or digest.sha256_b64
        assert self.action.record is not None
        self.action.record["checksum_sha256"] = self.checksum_sha256
        log.rewrite(self.action)

    def run(self) -> dict[str, Any]:
        if self.record is not None:
            return delete_uploaded(self.client, self.record)
        return delete_leftover(self.client, self.bucket, self.key, self.checksum_sha256, self.multipart)


def _upload_undo(client: S3Client, bucket: str, key: str, digest: FileDigest | None, multipart: bool, label: str,
                 resource: str) -> _UploadUndo:
    """The undo of one upload. A multipart upload's content is not known yet (``digest`` None): until it is
    (:meth:`_UploadUndo.sent`), the undo aborts the key's unfinished multipart uploads and deletes no object."""
    sent = (digest.composite_b64 or digest.sha256_b64) if digest is not None else ""
    undo = _UploadUndo(client, bucket, key, sent, multipart)
    undo.action = UndoAction(f"delete {s3_uri(bucket, key)}", undo.run, label,
                             record={"kind": LEFTOVER_KIND, "bucket": bucket, "key": key, "checksum_sha256": sent,
                                     "multipart": multipart}, resource=resource)
    return undo


def _retype(client: S3Client, record: UploadRecord, ctype: str) -> UploadRecord:
    """Apply an explicit Content-Type by copying the object onto itself (keeps the checksum)."""
    try:
        resp = client.copy_object(Bucket=record.bucket, Key=record.key, ContentType=ctype,
                                  MetadataDirective="REPLACE", ChecksumAlgorithm="SHA256",
                                  CopySource={"Bucket": record.bucket, "Key": record.key})
    except AWS_ERRORS as exc:
        raise aws_error("S3 CopyObject", s3_uri(record.bucket, record.key), exc) from None
    record.content_type = ctype
    record.etag = resp.get("CopyObjectResult", {}).get("ETag", record.etag).strip('"')
    record.version_id = resp.get("VersionId", record.version_id)
    return record


def _display_path(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def expect_objects(client: S3Client, step: ExpectObjectsStep, *, logger: Any = None,
                   clock: Clock | None = None) -> tuple[Observation, int, float]:
    """Wait until the expected objects exist; returns the last observation, the checks made and seconds waited.

    Raises StepError on timeout (listing what was found under the prefix), at once when an exact count is
    exceeded (waiting cannot fix that), and on any AWS error such as AccessDenied or NoSuchBucket.
    """
    if step.keys is not None:
        bucket_checked = False

        def check() -> Observation:
            nonlocal bucket_checked
            obs = observe_keys(client, step.bucket, step.keys or [], step.min_size)
            if obs.missing and not bucket_checked:  # a 404 may mean no bucket: that fails at once, not at timeout
                require_bucket(client, step.bucket)
                bucket_checked = True
            return obs

        def done(o: Observation) -> bool:
            return not o.missing and not o.others
        where = _where(step)
        what = f"{len(step.keys)} key(s) in s3://{step.bucket}"
    else:
        prefix = step.prefix or ""
        wanted = step.count if step.count is not None else (step.min_count or 1)

        def check() -> Observation:
            return observe_prefix(client, step.bucket, prefix, step.pattern, step.min_size)

        def done(o: Observation) -> bool:
            return len(o.matched) >= wanted
        where = s3_uri(step.bucket, prefix)
        what = (f"{'exactly' if step.count is not None else 'at least'} {wanted} object(s) matching "
                f"{step.pattern!r} under {where}")
    outcome = poll(check, done, step.wait, describe=Observation.describe, what=what, logger=logger, clock=clock)
    obs = outcome.value
    if outcome.done and step.count is not None and len(obs.matched) != step.count:
        raise CheckFailed(f"expected exactly {step.count} object(s) matching {step.pattern!r} under {where}, "
                          f"found {len(obs.matched)}: {_listing(obs)}",
                        details={"found": [asdict(o) for o in obs.matched]})
    if not outcome.done:
        found = obs
        if step.keys is not None:  # also show what *is* there near the expected keys, and that it does not count
            prefix = where[len(f"s3://{step.bucket}/"):]
            nearby = [(o, "not one of the expected keys")
                      for o in list_objects(client, step.bucket, prefix, limit=20 + len(step.keys))
                      if o.key not in step.keys][:20]
            found = Observation(obs.matched, obs.others + nearby, obs.missing)
        # what the step waits for is what it checks: not there in time is a check that did not hold
        raise CheckFailed(
            f"timed out after {outcome.elapsed:.0f} s ({outcome.checks} checks) waiting for {what}. "
            f"Found under {where}: {_listing(found)}",
            code=TIMED_OUT,
            details={"found": [asdict(o) for o in found.matched],
                     "not_counted": [{**asdict(o), "why": why} for o, why in found.others],
                     "missing": found.missing},
        )
    return obs, outcome.checks, outcome.elapsed


def _where(step: ExpectObjectsStep) -> str:
    """Where the step looks: its prefix, or the folder its keys share."""
    if step.keys is None:
        return s3_uri(step.bucket, step.prefix or "")
    common = posixpath.commonprefix(step.keys)
    return s3_uri(step.bucket, common[: common.rfind("/") + 1])


def expect_absent(client: S3Client, step: ExpectObjectsStep, *, logger: Any = None,
                  clock: Clock | None = None) -> tuple[Observation, int, float]:
    """Watch for ``step.hold`` seconds that nothing matching the step appears; returns the last observation, the
    polls made and the seconds watched. Raises CheckFailed at once when something matching is there."""
    hold = step.hold or 0.0
    if step.keys is not None:
        require_bucket(client, step.bucket)  # a HEAD in a missing bucket is a 404 too: "absent" would prove nothing
        target = f"any of {len(step.keys)} key(s) in s3://{step.bucket}"

        def check() -> Observation:
            return observe_keys(client, step.bucket, step.keys or [], 0)
    else:
        target = f"objects matching {step.pattern!r} under {_where(step)}"

        def check() -> Observation:
            return observe_prefix(client, step.bucket, step.prefix or "", step.pattern, 0)

    settings = step.wait.model_copy(update={"timeout": hold})
    outcome = poll(check, lambda o: bool(o.matched), settings, describe=lambda o: f"{len(o.matched)} there",
                   what=f"no {target} for {hold:g} s", logger=logger, clock=clock)
    obs = outcome.value
    if outcome.done:
        found = Observation(obs.matched, [], [])
        rows = [[check_verdict(False), "absent", f"no {target} for {hold:g} s",
                 f"{_listing(found)} after {outcome.elapsed:.1f} s (poll {outcome.checks})"]]
        raise CheckFailed(
            f"{_listing(found)} appeared after {outcome.elapsed:.1f} s (poll {outcome.checks}): expected no "
            f"{target} for {hold:g} s",
            details={"found": [asdict(o) for o in obs.matched], "polls": outcome.checks,
                     "watched_seconds": round(outcome.elapsed, 3), "hold_seconds": hold},
            markdown=markdown.Md(f"Watched {markdown.text(target)} for a hold of {hold:g} s: "
                                 f"{markdown.text(_listing(found))} appeared after {outcome.elapsed:.1f} s "
                                 f"(poll {outcome.checks}).\n\n"
                                 + markdown.table(["verdict", "check", "expected", "actual"], rows)))
    return obs, outcome.checks, outcome.elapsed


def _absent_outcome(ctx: StepContext, step: ExpectObjectsStep) -> StepOutcome:
    client = ctx.clients.client("s3")
    obs, polls, elapsed = expect_absent(client, step, logger=ctx.logger, clock=ctx.clock)
    hold = step.hold or 0.0
    target = (", ".join(markdown.code(k) for k in step.keys) if step.keys else
              f"objects matching {markdown.code(step.pattern)} under {markdown.code(_where(step))}")
    how = "HEAD" if step.keys else "LIST"
    rows = [[check_verdict(True), "absent", f"nothing for {hold:g} s",
             f"nothing in {polls} poll(s) over {elapsed:.1f} s"]]
    lines = [f"Watched {target} for **{elapsed:.1f} s** (hold {hold:g} s): {polls} poll(s) ({how}; no object was "
             "downloaded), nothing appeared.", "", markdown.table(["verdict", "check", "expected", "actual"], rows)]
    if obs.others:
        lines += ["", "There, but not matching (not counted): "
                  + ", ".join(f"{markdown.code(o.key)} ({markdown.text(why)})" for o, why in obs.others[:20])]
    return StepOutcome(
        summary=f"nothing appeared in s3://{step.bucket} for {elapsed:.1f} s ({polls} polls)",
        details={"bucket": step.bucket, "absent": True, "hold_seconds": hold, "polls": polls,
                 "watched_seconds": round(elapsed, 3), "not_counted": [o.key for o, _ in obs.others[:20]]},
        markdown="\n".join(lines),
    )


def _content_reports(ctx: StepContext, step: ExpectObjectsStep, found: list[ObjectInfo]) -> list[ObjectReport]:
    """The content checks of every object found (at most MAX_OBJECTS)."""
    content = step.content
    assert content is not None
    if len(found) > MAX_OBJECTS:
        raise StepError(f"content checks read at most {MAX_OBJECTS} objects, and {len(found)} match under "
                        f"{_where(step)}: narrow the prefix or pattern")
    upload = None
    if content.same_as_upload is not None:
        (path,) = resolve_files([content.same_as_upload.file], ctx.spec_dir)
        upload = LocalFile.of(path, content.same_as_upload.file)
    client = ctx.clients.client("s3")
    reports = []
    for info in found:
        ctx.logger.info("Checking the content of %s (%s)", s3_uri(step.bucket, info.key), format_bytes(info.size))
        reports.append(check_object(client, step.bucket, info.key, info.size, content, upload=upload, stop=ctx.stop))
    return reports


def _listing(obs: Observation, limit: int = 20) -> str:
    items = [f"{o.key} ({format_bytes(o.size)})" for o in obs.matched]
    items += [f"{o.key} ({format_bytes(o.size)}, {why})" for o, why in obs.others]
    if obs.missing:
        items += [f"missing: {', '.join(obs.missing)}"]
    if not items:
        return "nothing"
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def expect_objects_footprint(step: ExpectObjectsStep, arns: Arns) -> Footprint:
    """HEAD of exact keys, or a LIST of the prefix; GETs of the objects whose content is checked."""
    fp = Footprint()
    if step.keys is not None:
        for key in step.keys:
            fp.read("S3 object", f"s3://{step.bucket}/{key}", "absent" if step.absent else "exists")
            fp.need(arns.s3_objects(step.bucket, key, prefix=False), "s3:GetObject")
        fp.need(arns.s3_bucket(step.bucket), "s3:ListBucket")  # a missing key: what is there instead
    else:
        prefix = step.prefix or ""
        fp.read("S3 prefix", f"s3://{step.bucket}/{prefix}", ("absent " if step.absent else "list ") + step.pattern)
        fp.need(arns.s3_bucket(step.bucket), "s3:ListBucket")
        if step.content is not None:
            fp.need(arns.s3_objects(step.bucket, prefix), "s3:GetObject")
    return fp


@step_kind(ExpectObjectsStep, footprint=expect_objects_footprint)
def run_expect_objects(step: ExpectObjectsStep, ctx: StepContext) -> StepOutcome:
    """Wait for and check the objects the pipeline writes (or, with absent, that none appear)."""
    if step.absent:
        return _absent_outcome(ctx, step)
    client = ctx.clients.client("s3")
    obs, checks, elapsed = expect_objects(client, step, logger=ctx.logger, clock=ctx.clock)
    rows = [[markdown.code(o.key), format_bytes(o.size), markdown.code(o.etag), o.last_modified]
            for o in obs.matched[:50]]
    target = ", ".join(markdown.code(k) for k in step.keys) if step.keys else (
        f"{'exactly' if step.count is not None else 'at least'} "
        f"{step.count if step.count is not None else (step.min_count or 1)} object(s) matching "
        f"{markdown.code(step.pattern)} under {markdown.code(step.prefix)}")
    md = "\n".join([
        f"Expected {target} in bucket {markdown.code(step.bucket)}"
        + (f", each at least {step.min_size} B" if step.min_size else "") + ".",
        "",
        f"Found **{len(obs.matched)}** after {elapsed:.1f} s and {checks} check(s) "
        f"({'HEAD' if step.keys else 'LIST'}" + ("; then each read for its content)." if step.content else
                                                 "; no object was downloaded)."),
        "",
        markdown.table(["key", "size", "ETag", "last modified"], rows),
    ])
    details: dict[str, Any] = {"bucket": step.bucket, "found": [asdict(o) for o in obs.matched], "checks": checks,
                               "waited_seconds": round(elapsed, 3)}
    summary = f"found {len(obs.matched)} object(s) in s3://{step.bucket} after {elapsed:.1f} s ({checks} checks)"
    if step.content is not None:
        reports = _content_reports(ctx, step, obs.matched)
        md += "\n\n" + content_markdown(reports)
        details["content"] = [r.to_dict() for r in reports]
        failed = [(r.key, c) for r in reports for c in r.checks if not c.passed]
        if failed:
            shown = "; ".join(f"{key}: {c.line()}" for key, c in failed[:5])
            more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
            raise CheckFailed(f"{len(failed)} content check(s) did not hold: {shown}{more}", details=details,
                              markdown=md)
        summary += f"; {sum(len(r.checks) for r in reports)} content check(s) held"
    return StepOutcome(
        summary=summary,
        details=details,
        markdown=md,
        links=[object_link(ctx, step.bucket, o.key) for o in obs.matched[:10]],
    )
