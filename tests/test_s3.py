"""S3 steps and functions against moto: uploads that are checked and never clobber, waits that never download."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from tasks.kit.aws import ClientFactory
from tasks.kit.errors import StepError
from tasks.kit.polling import PollSettings
from tasks.kit.step import StepContext, UndoLog
from tasks.s3.keys import posix_key, resolve_files
from tasks.s3.objects import head_object
from tasks.s3.steps import ExpectObjectsStep, UploadStep, expect_objects, run_expect_objects, run_upload
from tasks.s3.upload import delete_uploaded, upload_file
from tests.helpers import FakeClock


def ctx_for(clients: ClientFactory, folder: Path) -> StepContext:
    return StepContext(clients=clients, case_name="Orders ingest", run_id="run-123", label="step", spec_dir=folder,
                       undo=UndoLog())


def count_calls(client: Any) -> list[str]:
    """Record the operation name of every call the client makes."""
    calls: list[str] = []
    client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    return calls


# ------------------------------------------------------------------------------------------------- keys
def test_windows_style_local_path_yields_posix_key() -> None:
    assert posix_key("incoming/2026-11-21/", PureWindowsPath(r"C:\Users\ana\data\orders.csv")) == \
        "incoming/2026-11-21/orders.csv"
    assert posix_key(r"incoming\raw", PurePosixPath("d/orders.csv")) == "incoming/raw/orders.csv"
    assert posix_key("", PureWindowsPath(r"data\orders.csv")) == "orders.csv"


def test_resolve_files_with_globs_and_backslashes(data_dir: Path) -> None:
    files = resolve_files([r"data\*.csv", "data/orders.csv"], data_dir)
    assert [f.name for f in files] == ["customers.csv", "orders.csv"]
    with pytest.raises(StepError, match="no local file matches"):
        resolve_files(["data/*.parquet"], data_dir)
    with pytest.raises(StepError, match="not found"):
        resolve_files(["data/nope.csv"], data_dir)


# ----------------------------------------------------------------------------------------------- upload
def test_upload_sends_and_verifies_sha256_tags_and_encryption(clients, s3, bucket, data_dir) -> None:
    step = UploadStep(files=["data/orders.csv"], bucket=bucket, key_prefix="in/", sse="AES256")
    ctx = ctx_for(clients, data_dir)
    out = run_upload(step, ctx)
    (up,) = out.details["uploads"]
    body = (data_dir / "data" / "orders.csv").read_bytes()
    assert up["key"] == "in/orders.csv" and up["sha256"] == hashlib.sha256(body).hexdigest()
    assert up["checksum_verified"] is True and up["content_type"] == "text/csv"
    head = s3.head_object(Bucket=bucket, Key="in/orders.csv")
    assert head["ServerSideEncryption"] == "AES256" and head["ContentType"] == "text/csv"
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key="in/orders.csv")["TagSet"]}
    assert tags == {"pipeline-test-run": "run-123", "pipeline-test-case": "Orders ingest"}
    assert "in/orders.csv" in out.markdown and "✅ PASS: verified by S3" in out.markdown
    assert out.details["uploads"][0]["sha256"] in out.markdown  # the full SHA-256: it is evidence
    assert ctx.undo.actions == []  # no cleanup unless asked


def test_upload_refuses_to_overwrite_and_leaves_the_object_as_it_was(clients, s3, bucket, data_dir) -> None:
    s3.put_object(Bucket=bucket, Key="in/orders.csv", Body=b"production data")
    before = s3.head_object(Bucket=bucket, Key="in/orders.csv")["ETag"]
    step = UploadStep(files=["data/*.csv"], bucket=bucket, key_prefix="in/")
    calls = count_calls(s3)
    with pytest.raises(StepError) as info:
        run_upload(step, ctx_for(clients, data_dir))
    assert "refusing to overwrite" in info.value.message and "s3://test-bucket/in/orders.csv" in info.value.message
    assert s3.get_object(Bucket=bucket, Key="in/orders.csv")["Body"].read() == b"production data"
    assert s3.head_object(Bucket=bucket, Key="in/orders.csv")["ETag"] == before
    assert "PutObject" not in calls  # checked before the first upload: customers.csv was not uploaded either
    assert head_object(s3, bucket, "in/customers.csv") is None


def test_conditional_write_catches_an_object_that_appears_meanwhile(s3, bucket, data_dir) -> None:
    s3.put_object(Bucket=bucket, Key="k.csv", Body=b"theirs")
    with pytest.raises(StepError, match="already exists") as info:
        upload_file(s3, data_dir / "data" / "orders.csv", bucket, "k.csv")
    assert info.value.code == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="k.csv")["Body"].read() == b"theirs"


def test_upload_summaries_show_the_posix_keys_not_the_local_separators(clients, s3, bucket, data_dir) -> None:
    ctx = ctx_for(clients, data_dir)
    many = run_upload(UploadStep(files=[r"data\*.csv"], bucket=bucket, key_prefix="in\\x\\"), ctx)
    one = run_upload(UploadStep(files=[r"data\orders.csv"], bucket=bucket, key="single\\one.csv"), ctx)
    assert [u["key"] for u in many.details["uploads"]] == ["in/x/customers.csv", "in/x/orders.csv"]
    assert many.summary == "uploaded 2 file(s), 34 B, to s3://test-bucket/in/x/"
    assert one.summary == "uploaded data/orders.csv (20 B) to s3://test-bucket/single/one.csv"
    assert head_object(s3, bucket, "single/one.csv") is not None
    assert "\\" not in many.markdown + one.markdown


def test_overwrite_true_replaces(clients, s3, bucket, data_dir) -> None:
    s3.put_object(Bucket=bucket, Key="one.csv", Body=b"old")
    step = UploadStep(files=["data/orders.csv"], bucket=bucket, key="one.csv", overwrite=True, tags={})
    run_upload(step, ctx_for(clients, data_dir))
    assert s3.get_object(Bucket=bucket, Key="one.csv")["Body"].read().startswith(b"id,amount")
    assert s3.get_object_tagging(Bucket=bucket, Key="one.csv")["TagSet"] == []


def test_large_file_goes_multipart_with_composite_checksum_and_guard(s3, bucket, tmp_path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    mib = 1024 * 1024
    rec = upload_file(s3, big, bucket, "big.bin", multipart_threshold=5 * mib, multipart_chunksize=5 * mib)
    assert rec.multipart and rec.parts == 3 and rec.checksum_verified is True
    with pytest.raises(StepError, match="already exists"):
        upload_file(s3, big, bucket, "big.bin", multipart_threshold=5 * mib, multipart_chunksize=5 * mib)
    rec2 = upload_file(s3, big, bucket, "big.bin", overwrite=True, multipart_threshold=5 * mib,
                       multipart_chunksize=5 * mib)
    assert rec2.checksum_verified is True


def test_checksum_mismatch_is_reported(s3, bucket, data_dir) -> None:
    path = data_dir / "data" / "orders.csv"
    with Stubber(s3) as stub:
        stub.add_response("put_object", {"ETag": '"e"'})
        stub.add_response("head_object", {"ETag": '"e"', "ChecksumSHA256": "AAAA", "ContentLength": 1})
        with pytest.raises(StepError, match="checksum mismatch"):
            upload_file(s3, path, bucket, "x.csv")


def test_cleanup_removes_only_what_the_case_uploaded(clients, s3, bucket, data_dir) -> None:
    s3.put_object(Bucket=bucket, Key="in/keep.csv", Body=b"not ours")
    ctx = ctx_for(clients, data_dir)
    run_upload(UploadStep(files=["data/*.csv"], bucket=bucket, key_prefix="in/", cleanup=True), ctx)
    s3.put_object(Bucket=bucket, Key="in/orders.csv", Body=b"replaced by the pipeline")
    actions = {r["object"]: r["action"] for r in (a.run() for a in ctx.undo.pending())}
    assert actions["s3://test-bucket/in/customers.csv"] == "deleted"
    assert actions["s3://test-bucket/in/orders.csv"].startswith("kept: changed since the upload")
    assert head_object(s3, bucket, "in/customers.csv") is None
    assert head_object(s3, bucket, "in/keep.csv") is not None
    assert s3.get_object(Bucket=bucket, Key="in/orders.csv")["Body"].read() == b"replaced by the pipeline"


def test_delete_uploaded_of_a_vanished_object(s3, bucket, data_dir) -> None:
    rec = upload_file(s3, data_dir / "data" / "orders.csv", bucket, "gone.csv")
    s3.delete_object(Bucket=bucket, Key="gone.csv")
    assert delete_uploaded(s3, rec)["action"] == "already gone"


# ------------------------------------------------------------------------------------------ expect_objects
def test_expect_keys_found_with_head_only(clients, s3, bucket, tmp_path) -> None:
    s3.put_object(Bucket=bucket, Key="out/a.csv", Body=b"12345")
    calls = count_calls(s3)
    out = run_expect_objects(ExpectObjectsStep(bucket=bucket, keys=["out/a.csv"], min_size=5),
                             ctx_for(clients, tmp_path))
    assert out.details["found"][0]["key"] == "out/a.csv"
    assert set(calls) == {"HeadObject"}


def test_expect_prefix_waits_until_objects_appear(s3, bucket) -> None:
    pipeline = boto3.client("s3", region_name="us-east-1")  # the pipeline's own client: its calls don't count

    def land(t: float) -> None:
        if t >= 3 and not landed:
            pipeline.put_object(Bucket=bucket, Key="out/2026/part-0.parquet", Body=b"x" * 10)
            pipeline.put_object(Bucket=bucket, Key="out/2026/_SUCCESS", Body=b"")
            landed.append(t)

    landed: list[float] = []

    fake = FakeClock(on_sleep=land)
    calls = count_calls(s3)
    step = ExpectObjectsStep(bucket=bucket, prefix="out/", pattern="*.parquet", count=1, min_size=1)
    obs, checks, elapsed = expect_objects(s3, step, clock=fake.clock)
    assert [o.key for o in obs.matched] == ["out/2026/part-0.parquet"]
    assert 3 <= elapsed <= 3 * 1.25 + 0.5 and checks > 1
    assert set(calls) == {"ListObjectsV2"}


def test_timeout_lists_what_was_found(s3, bucket) -> None:
    s3.put_object(Bucket=bucket, Key="out/a.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="out/b.csv", Body=b"")
    step = ExpectObjectsStep(bucket=bucket, prefix="out/", pattern="*.csv", min_size=1,
                             wait=PollSettings(timeout=5))
    with pytest.raises(StepError) as info:
        expect_objects(s3, step, clock=FakeClock().clock)
    msg = info.value.message
    assert msg.startswith("timed out after 5 s")
    assert "out/a.json (2 B, does not match '*.csv')" in msg and "out/b.csv (0 B, smaller than 1 B)" in msg
    assert info.value.code == "Timeout"


def test_timeout_on_keys_lists_neighbours(s3, bucket) -> None:
    s3.put_object(Bucket=bucket, Key="out/2026/other.csv", Body=b"1")
    step = ExpectObjectsStep(bucket=bucket, keys=["out/2026/a.csv", "out/2026/b.csv"], wait=PollSettings(timeout=1))
    with pytest.raises(StepError) as info:
        expect_objects(s3, step, clock=FakeClock().clock)
    assert ("Found under s3://test-bucket/out/2026/: out/2026/other.csv (1 B, not one of the expected keys); "
            "missing: out/2026/a.csv, out/2026/b.csv") in info.value.message
    assert info.value.details["found"] == []


def test_timeout_on_keys_lists_each_object_once_with_why_it_did_not_count(s3, bucket) -> None:
    s3.put_object(Bucket=bucket, Key="out/a.csv", Body=b"12345")
    s3.put_object(Bucket=bucket, Key="out/b.csv", Body=b"12")
    s3.put_object(Bucket=bucket, Key="out/other.csv", Body=b"123456")
    step = ExpectObjectsStep(bucket=bucket, keys=["out/a.csv", "out/b.csv", "out/c.csv"], min_size=5,
                             wait=PollSettings(timeout=1))
    with pytest.raises(StepError) as info:
        expect_objects(s3, step, clock=FakeClock().clock)
    msg, details = info.value.message, info.value.details
    assert msg.endswith("Found under s3://test-bucket/out/: out/a.csv (5 B); out/b.csv (2 B, smaller than 5 B); "
                        "out/other.csv (6 B, not one of the expected keys); missing: out/c.csv")
    assert [o["key"] for o in details["found"]] == ["out/a.csv"]  # only what counted towards the check
    assert [(o["key"], o["why"]) for o in details["not_counted"]] == [
        ("out/b.csv", "smaller than 5 B"), ("out/other.csv", "not one of the expected keys")]
    assert details["missing"] == ["out/c.csv"]


def test_exact_count_exceeded_fails_at_once(s3, bucket) -> None:
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"out/{i}.csv", Body=b"1")
    fake = FakeClock()
    with pytest.raises(StepError, match="expected exactly 2 object.*found 3") as err:
        expect_objects(s3, ExpectObjectsStep(bucket=bucket, prefix="out/", count=2), clock=fake.clock)
    assert fake.t == 0
    [check] = err.value.checks
    assert (check.name, check.verdict) == ("objects", "failed") and check.actual.startswith("3 found: out/0.csv")


def test_access_denied_is_reported_as_such_not_as_not_found(s3) -> None:
    step = ExpectObjectsStep(bucket="locked-bucket", keys=["a.csv"])
    with Stubber(s3) as stub:
        stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
        with pytest.raises(StepError) as info:
            expect_objects(s3, step, clock=FakeClock().clock)
    assert info.value.code == "AccessDenied"
    assert "S3 HeadObject on s3://locked-bucket/a.csv failed: AccessDenied" in info.value.message
    assert "s3:ListBucket" in info.value.message
    step = ExpectObjectsStep(bucket="locked-bucket", prefix="p/")
    with Stubber(s3) as stub:
        stub.add_client_error("list_objects_v2", service_error_code="AccessDenied", service_message="Access Denied",
                              http_status_code=403)
        with pytest.raises(StepError, match="S3 ListObjectsV2 on s3://locked-bucket/p/ failed: AccessDenied"):
            expect_objects(s3, step, clock=FakeClock().clock)


def test_missing_bucket_fails_at_once(s3) -> None:
    fake = FakeClock()
    with pytest.raises(StepError, match="NoSuchBucket"):
        expect_objects(s3, ExpectObjectsStep(bucket="no-such-bucket", prefix="x/"), clock=fake.clock)
    assert fake.t == 0


def test_missing_bucket_fails_at_once_with_keys_too(emulated_s3) -> None:
    """Over HTTP (moto's server, as S3), a HEAD of a key in a missing bucket is a bare 404, as for a missing key:
    the bucket is checked then. (moto's in-process mock answers NoSuchBucket, which S3 cannot for a HEAD.)"""
    fake = FakeClock()
    with pytest.raises(StepError) as info:
        expect_objects(emulated_s3, ExpectObjectsStep(bucket="no-such-bucket-keys", keys=["x/a.csv"]),
                       clock=fake.clock)
    assert info.value.code == "NoSuchBucket" and "s3://no-such-bucket-keys/" in info.value.message
    assert fake.t == 0


def test_bucket_is_checked_once_while_waiting_for_keys(s3, bucket) -> None:
    calls = count_calls(s3)
    step = ExpectObjectsStep(bucket=bucket, keys=["a.csv"], wait=PollSettings(timeout=3))
    with pytest.raises(StepError, match="timed out"):
        expect_objects(s3, step, clock=FakeClock().clock)
    assert calls.count("HeadBucket") == 1 and calls.count("HeadObject") > 3


def test_a_refused_bucket_check_does_not_end_the_wait(s3) -> None:
    step = ExpectObjectsStep(bucket="locked-bucket", keys=["a.csv"], wait=PollSettings(timeout=0.1))
    with Stubber(s3) as stub:
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        stub.add_client_error("head_bucket", service_error_code="403", http_status_code=403)
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        stub.add_response("list_objects_v2", {"KeyCount": 0})  # what is near the key, for the message
        with pytest.raises(StepError) as info:
            expect_objects(s3, step, clock=FakeClock().clock)
        stub.assert_no_pending_responses()
    assert info.value.code == "Timeout"
