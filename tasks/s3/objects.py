"""S3 objects as a step sees them: head, list, the bucket's presence (ObjectInfo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from tasks.kit.errors import (
    AWS_ERRORS,
    AWS_NO_SUCH_BUCKET,
    AwsCallError,
    aws_error,
    error_code,
    request_id,
)
from tasks.s3.keys import s3_uri

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client



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
