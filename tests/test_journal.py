"""The durable undo journal (moto): written before each change, encrypted like what it restores, forgotten once
undone, and enough on its own to undo a run that died (what `recover` does, without the locks)."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from flows.run.recover import Recovered, redo_entries
from tasks.kit.errors import StepError
from tasks.kit.journal import DEFAULT_PREFIX, Heartbeat, SsmJournal, read_claims, read_entries, this_process
from tasks.kit.step import StepContext, UndoLog
from tasks.s3.steps import UploadStep, run_upload
from tasks.ssm import DeleteParametersStep, SetParametersStep, run_delete_parameters, run_set_parameters

SECRET = "before-Secret-31a9c4"


@pytest.fixture
def ssm(clients):
    client = clients.client("ssm")
    key = clients.client("kms").create_key()["KeyMetadata"]["KeyId"]
    client.put_parameter(Name="/j/source", Value="prod-bucket", Type="String", Description="prod")
    client.put_parameter(Name="/j/token", Value=SECRET, Type="SecureString", KeyId=key)
    return client


def context(clients, tmp_path: Path, run_id: str = "run-1") -> StepContext:
    journal = SsmJournal(clients.client("ssm"), run_id=run_id, case="Journal case", lease_id=lambda: "lease-1")
    return StepContext(clients=clients, case_name="Journal case", run_id=run_id, label="step", spec_dir=tmp_path,
                       undo=UndoLog(journal=journal))


def state(ssm) -> dict[str, Any]:
    out = {}
    for name in ("/j/source", "/j/token"):
        try:
            param = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
            out[name] = (param["Value"], param["Type"])
        except ClientError:
            out[name] = None
    return out


def test_each_change_is_journaled_before_it_is_made_encrypted_like_its_parameter(ssm, clients, tmp_path) -> None:
    ctx = context(clients, tmp_path)
    run_set_parameters(SetParametersStep.model_validate({"kind": "set_parameters", "parameters": [
        {"name": "/j/source", "value": "test-bucket"},
        {"name": "/j/token", "value": "test-Secret-value", "type": "SecureString"}]}), ctx)
    entries = read_entries(ssm)
    assert sorted(e.resource for e in entries) == ["ssm:/j/source", "ssm:/j/token"]
    assert all(e.run_id == "run-1" and e.case == "Journal case" and e.lease_id == "lease-1" for e in entries)
    metas = {m["Name"]: m for m in ssm.describe_parameters(ParameterFilters=[
        {"Key": "Path", "Option": "Recursive", "Values": [DEFAULT_PREFIX]}])["Parameters"]}
    token_entry = next(e for e in entries if e.resource == "ssm:/j/token")
    token_key = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": ["/j/token"]}])[
        "Parameters"][0]["KeyId"]
    assert {m["Type"] for m in metas.values()} == {"SecureString"}
    assert metas[token_entry.name]["KeyId"] == token_key  # the same KMS key as the secret it keeps
    # (that SSM returns it encrypted without WithDecryption is AWS's part: moto only prefixes the key id)
    # the undo, done in the run, forgets the entries
    for action in ctx.undo.pending():
        action.run()
        ctx.undo.done(action)
    assert read_entries(ssm) == []
    assert state(ssm) == {"/j/source": ("prod-bucket", "String"), "/j/token": (SECRET, "SecureString")}


def test_the_journal_alone_undoes_a_run_that_died(ssm, clients, tmp_path) -> None:
    """The run changes, deletes a SecureString and uploads, then dies: its process-local undo is gone. Redoing
    the journal (what `recover` does under the resources' locks) puts everything back, the deleted secret too."""
    before = state(ssm)
    s3 = clients.client("s3")
    s3.create_bucket(Bucket="journal")
    (tmp_path / "a.csv").write_text("id\n1\n")
    ctx = context(clients, tmp_path, run_id="dead-run")
    run_set_parameters(SetParametersStep.model_validate({"kind": "set_parameters", "parameters": [
        {"name": "/j/source", "value": "test-bucket"}]}), ctx)
    run_delete_parameters(DeleteParametersStep.model_validate({"kind": "delete_parameters",
                                                               "names": ["/j/token"]}), ctx)
    run_upload(UploadStep.model_validate({"kind": "upload", "files": ["a.csv"], "bucket": "journal",
                                          "key": "in/a.csv", "cleanup": True}), ctx)
    assert state(ssm) != before and s3.list_objects_v2(Bucket="journal")["KeyCount"] == 1
    del ctx  # the run died: only the journal is left

    report = Recovered()
    redo_entries(clients, read_entries(ssm), _quiet(), report)
    assert not report.failed and len(report.done) == 3
    assert state(ssm) == before
    assert s3.list_objects_v2(Bucket="journal")["KeyCount"] == 0
    assert read_entries(ssm) == []
    assert SECRET not in json.dumps(report.done)


def test_a_change_is_not_made_when_its_undo_cannot_be_kept(ssm, clients, tmp_path) -> None:
    """AccessDenied on the journal: the step fails naming it, before the parameter is touched."""
    ctx = context(clients, tmp_path)

    def deny(params: dict[str, Any], **_: Any) -> None:
        if str(params.get("Name", "")).startswith(DEFAULT_PREFIX):
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "PutParameter")

    clients.client("ssm").meta.events.register("before-parameter-build.ssm.PutParameter", deny)
    with pytest.raises(StepError) as caught:
        run_set_parameters(SetParametersStep.model_validate({"kind": "set_parameters", "parameters": [
            {"name": "/j/source", "value": "test-bucket"}]}), ctx)
    assert "undo journal" in caught.value.message and "AccessDeniedException" in caught.value.message
    assert "nothing was changed" in caught.value.message
    assert state(ssm)["/j/source"] == ("prod-bucket", "String")


def test_an_entry_too_large_for_ssm_is_refused_before_the_change(ssm, clients, tmp_path) -> None:
    ssm.put_parameter(Name="/j/big", Value="x" * 8000, Type="String", Tier="Advanced")
    with pytest.raises(StepError) as caught:
        run_set_parameters(SetParametersStep.model_validate({"kind": "set_parameters", "parameters": [
            {"name": "/j/big", "value": "small"}]}), context(clients, tmp_path))
    assert caught.value.code == "JournalEntryTooLarge"
    assert ssm.get_parameter(Name="/j/big")["Parameter"]["Value"] == "x" * 8000


def _quiet() -> Any:
    import logging

    return logging.getLogger("test-journal")


# ------------------------------------------------------------------------ claims and their lease (fake wall clock)
class WallClock:
    """A fake wall clock (UTC): time moves only when the test says so."""

    def __init__(self) -> None:
        self.t = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


def heartbeat(clients, clock: WallClock, run_id: str = "run-1", **kwargs: Any) -> Heartbeat:
    return Heartbeat(clients.client("ssm"), run_id=run_id, case="Lease case", resources=["ssm:/j/source"],
                     logger=_quiet(), lease_s=120, now=clock, **kwargs)


def test_a_claim_says_who_holds_what_until_when_and_is_renewed_while_the_run_lives(ssm, clients) -> None:
    clock = WallClock()
    with heartbeat(clients, clock) as beat:
        (claim,) = read_claims(ssm)
        assert claim.run_id == "run-1" and claim.case == "Lease case" and claim.resources == ["ssm:/j/source"]
        assert claim.owner == this_process() and claim.lease_until == clock() + timedelta(seconds=120)
        assert claim.shares(["ssm:/j/source", "ssm:/j/other"]) == ["ssm:/j/source"]
        assert beat.next_wait() == 20  # renewed every lease / 6
        clock.advance(20)
        assert beat.beat()
        (renewed,) = read_claims(ssm)
        assert renewed.lease_until == clock() + timedelta(seconds=120)
        assert renewed.live(clock()) and not renewed.live(clock() + timedelta(seconds=121))
        assert read_entries(ssm) == []  # a claim is not an undo
    assert read_claims(ssm) == []  # removed when the run ends


def test_failed_renewals_are_retried_and_a_lease_about_to_run_out_stops_the_run(ssm, clients, caplog) -> None:
    """The lease runs until t+120. Renewals fail from t+20 on (retried every 10 s, each logged); when no more than
    one renewal interval of the lease is left, the run is told to stop (once), so it undoes its changes itself
    before a recover elsewhere may take it for dead. A renewal that works again is said so."""
    from tests.helpers import failing_calls

    clock = WallClock()
    lost: list[datetime] = []
    beat = heartbeat(clients, clock, on_lost=lambda: lost.append(clock()))
    beat.claim()
    start = clock()
    with failing_calls(clients.client("ssm"), {"PutParameter": "ThrottlingException"}), caplog.at_level("INFO"):
        while clock() < start + timedelta(seconds=130):
            clock.advance(beat.next_wait())
            assert not beat.beat()
    assert beat.next_wait() == 10 and beat.failures == 12
    assert lost == [start + timedelta(seconds=100)]  # 20 s left (one interval): the undo still has time
    assert "Could not renew this run's lease in the undo journal" in caplog.text and "ThrottlingException" in caplog.text
    assert "stopping the run" in caplog.text
    (claim,) = read_claims(ssm)
    assert claim.lease_until == start + timedelta(seconds=120)  # as last written
    with caplog.at_level("INFO"):
        assert beat.beat()  # it keeps renewing while the stopped run undoes its changes
    assert "Renewed this run's lease in the undo journal again" in caplog.text
    assert beat.next_wait() == 20


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_liveness_from_the_claim_alone(ssm, clients, monkeypatch) -> None:
    """A run this Prefect server does not know is alive while its lease is; a process of this host that is gone
    is dead at once; a run this server knows is left to its lock."""
    import flows.run.recover as recover

    clock = WallClock()
    beat = heartbeat(clients, clock)
    beat.owner = {**beat.owner, "host": "elsewhere", "pid": 4242}
    beat.claim()
    (claim,) = read_claims(ssm)
    monkeypatch.setattr(recover, "_prefect_state", lambda run_id: None)  # not known on this server
    assert recover.alive_elsewhere(claim, clock())
    assert not recover.alive_elsewhere(claim, clock() + timedelta(seconds=120))  # its lease ran out
    monkeypatch.setattr(recover, "_prefect_state", lambda run_id: "RUNNING")
    assert not recover.alive_elsewhere(claim, clock())  # known here: its lock decides
    monkeypatch.setattr(recover, "_prefect_state", lambda run_id: None)
    claim.owner = {"host": socket.gethostname(), "pid": _gone_pid()}
    assert not recover.alive_elsewhere(claim, clock())
    claim.owner = {"host": socket.gethostname(), "pid": os.getppid()}
    assert recover.alive_elsewhere(claim, clock())


def test_a_run_refuses_when_a_live_run_of_another_server_claims_its_resources(ssm, clients, monkeypatch) -> None:
    import flows.run.recover as recover

    clock = WallClock()
    other = heartbeat(clients, clock, run_id="other-run")
    other.owner = {"host": "laptop-b", "pid": 777, "user": "ana"}
    other.claim()
    monkeypatch.setattr(recover, "_prefect_state", lambda run_id: None)
    recover.refuse_live_claims(ssm, ["ssm:/j/token"], None, "my-run", "Mine", now=clock)  # nothing shared
    with pytest.raises(recover.CouldNotRun) as refused:
        recover.refuse_live_claims(ssm, ["ssm:/j/source"], None, "my-run", "Mine", now=clock)
    message = str(refused.value)
    assert message.startswith("case 'Mine' did not start: run other-run of case 'Lease case' on host laptop-b pid "
                              "777 (user ana) is changing ssm:/j/source now")
    assert "2026-01-01T12:02:00+00:00" in message and "nothing was changed" in message
    clock.advance(121)  # its lease ran out: it is dead
    recover.refuse_live_claims(ssm, ["ssm:/j/source"], None, "my-run", "Mine", now=clock)


def _gone_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_that_lost_its_lease_changes_nothing_more(ssm, clients, tmp_path) -> None:
    ctx = context(clients, tmp_path)
    assert isinstance(ctx.undo.journal, SsmJournal)
    ctx.undo.journal.lease_lost = lambda: True
    with pytest.raises(StepError) as caught:
        run_set_parameters(SetParametersStep.model_validate({"kind": "set_parameters", "parameters": [
            {"name": "/j/source", "value": "test-bucket"}]}), ctx)
    assert caught.value.code == "JournalLeaseLost" and "nothing was changed" in caught.value.message
    assert state(ssm)["/j/source"] == ("prod-bucket", "String")
