"""S3 steps: ``upload`` (put test files where the pipeline picks them up) and ``expect_objects`` (wait for what
the pipeline writes). Plain functions take a boto3 S3 client; the runners at the bottom wire them to the spec.

Uploads are checked end to end: a SHA-256 is sent with each upload (S3 rejects a body that does not match)
and read back afterwards; an existing object is never replaced unless the step says ``overwrite: true``
(checked before the first upload, and enforced atomically with S3's conditional write ``If-None-Match: *``).
Waiting uses HEAD or LIST, never a download, with a growing interval. ``content`` then reads each object found,
streamed (:mod:`tasks.s3.content`); ``absent: true`` watches for a hold time that nothing appears.
"""

from __future__ import annotations

import functools
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from tasks.kit import baseline, markdown
from tasks.kit.checks import CheckRecord
from tasks.kit.console_links import s3_link
from tasks.kit.errors import (
    AWS_ERRORS,
    AWS_PRECONDITION_FAILED,
    OBJECT_EXISTS,
    TIMED_OUT,
    CheckFailed,
    StepError,
    aws_error,
    failed_checks,
)
from tasks.kit.files import HashedItem
from tasks.kit.iam import Arns, Footprint
from tasks.kit.polling import MAX_WAIT_SECONDS, Clock, PollSettings, poll
from tasks.kit.status import check_verdict
from tasks.kit.step import (
    Baseline,
    Link,
    StepBase,
    StepContext,
    StepOutcome,
    UndoAction,
    UndoLog,
    format_bytes,
    step_kind,
)
from tasks.s3.content import MAX_OBJECTS, LocalFile, ObjectReport, check_object, content_markdown
from tasks.s3.content_spec import ObjectContent
from tasks.s3.keys import (
    MAX_COUNT,
    MAX_OBJECT_BYTES,
    MIB,
    TAG_CASE,
    TAG_RUN,
    BucketName,
    S3Key,
    check_glob,
    posix_key,
    resolve_files,
    s3_uri,
    tag_value,
)
from tasks.s3.objects import ObjectInfo, head_object, list_objects, require_bucket
from tasks.s3.observe import Observation, observe_keys, observe_prefix
from tasks.s3.upload import (
    LEFTOVER_KIND,
    FileDigest,
    UploadRecord,
    delete_leftover,
    delete_uploaded,
    digest_for_upload,
    upload_file,
    upload_resource,
)

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client


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
                          details={"found": [asdict(o) for o in obs.matched]},
                          checks=[CheckRecord.of("objects", False, what, f"{len(obs.matched)} found: {_listing(obs)}")])
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
            checks=[CheckRecord.of("objects", False, what,
                                   f"after {outcome.elapsed:.0f} s, found under {where}: {_listing(found)}")],
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
            checks=[CheckRecord.of("absent", False, rows[0][2], rows[0][3])],
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
        checks=[CheckRecord.of("absent", True, f"nothing matching {step.keys or step.pattern} under {_where(step)} "
                               f"for {hold:g} s", rows[0][3])],
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
    expected = (f"{len(step.keys)} key(s) in {_where(step)}" if step.keys else
                f"{'exactly' if step.count is not None else 'at least'} "
                f"{step.count if step.count is not None else (step.min_count or 1)} object(s) matching "
                f"{step.pattern!r} under {_where(step)}")
    expected += f", each at least {step.min_size} B" if step.min_size else ""
    records = [CheckRecord.of("objects", True, expected, f"{len(obs.matched)} found after {elapsed:.1f} s")]
    if step.content is not None:
        reports = _content_reports(ctx, step, obs.matched)
        md += "\n\n" + content_markdown(reports)
        details["content"] = [r.to_dict() for r in reports]
        records += [record for r in reports for record in r.records()]
        failed = [(c.severity or "error", f"{r.key}: {c.check}: expected {c.expected}, got {c.actual}")
                  for r in reports for c in r.checks if not c.passed]
        total = sum(len(r.checks) for r in reports)
        if isinstance(step.content.row_count, Baseline):  # the rows of every object checked, against past runs
            read = sum(r.stats.rows or 0 for r in reports)
            checked = baseline.check(step.content.row_count, ctx.label, "row_count", read, ctx.history,
                                     step.content.severity)
            details["baselines"] = {"row_count": checked.record()}
            md += "\n\n" + markdown.text(f"{checked.mark} {checked.text()}")
            records.append(CheckRecord.of("row_count (baseline)", checked.passed, checked.expected(),
                                          f"{checked.value:g}", severity=checked.severity))
            total += 1
            if not checked.passed:
                failed.append((checked.severity, checked.text()))
        failure = failed_checks(failed, total, "content checks", details=details, markdown=md, checks=records)
        if failure is not None:
            raise failure
        summary += f"; {sum(len(r.checks) for r in reports)} content check(s) held"
    return StepOutcome(
        summary=summary,
        details=details,
        markdown=md,
        links=[object_link(ctx, step.bucket, o.key) for o in obs.matched[:10]],
        checks=records,
    )
