"""The durable undo journal (moto): written before each change, encrypted like what it restores, forgotten once
undone, and enough on its own to undo a run that died (what `recover` does, without the locks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from flows.recover import Recovered, redo_entries
from tasks.base import StepContext, UndoLog
from tasks.errors import StepError
from tasks.journal import DEFAULT_PREFIX, SsmJournal, read_entries
from tasks.s3 import UploadStep, run_upload
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
