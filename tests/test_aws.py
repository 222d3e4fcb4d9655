"""The one client factory: region and endpoint resolution, retries, credentials blocks; error messages."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from prefect_aws import AwsClientParameters, AwsCredentials

from tasks.kit.aws import AwsTarget, ClientFactory, is_real_aws
from tasks.kit.errors import aws_error


def test_region_from_target_else_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ClientFactory(AwsTarget(region="eu-west-1")).client("s3").meta.region_name == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert ClientFactory().client("s3").meta.region_name == "ap-south-1"


def test_endpoint_env_vars_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:5000")
    factory = ClientFactory(AwsTarget(region="us-east-1"))
    assert factory.endpoint_url("s3") == "http://127.0.0.1:4566"
    assert factory.endpoint_url("ssm") == "http://127.0.0.1:5000"
    assert not is_real_aws(factory.endpoint_url("s3"))
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert is_real_aws(ClientFactory(AwsTarget(region="us-east-1")).endpoint_url("s3"))


def test_retry_mode_and_clients_are_cached() -> None:
    factory = ClientFactory(AwsTarget(region="us-east-1", max_attempts=5))
    client = factory.client("s3")
    assert client is factory.client("s3")
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert "pipeline-test" in client.meta.config.user_agent_extra


def test_credentials_block_object_with_its_client_parameters() -> None:
    creds = AwsCredentials(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="not-a-real-secret",
                           region_name="eu-central-1",
                           aws_client_parameters=AwsClientParameters(endpoint_url="http://127.0.0.1:9999"))
    factory = ClientFactory(AwsTarget(), credentials=creds)
    client = factory.client("s3")
    assert client.meta.region_name == "eu-central-1"
    assert client.meta.endpoint_url == "http://127.0.0.1:9999"
    assert client.meta.config.retries["mode"] == "standard"
    # the spec's region wins over the block's
    assert ClientFactory(AwsTarget(region="us-west-2"), credentials=creds).client("s3").meta.region_name == "us-west-2"


def test_credentials_block_by_name(prefect_harness: str) -> None:
    AwsCredentials(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="not-a-real-secret",
                   region_name="sa-east-1").save("pipeline-test-creds", overwrite=True)
    factory = ClientFactory(AwsTarget(credentials_block="pipeline-test-creds"))
    client = factory.client("s3")
    assert client.meta.region_name == "sa-east-1"
    assert client._request_signer._credentials.access_key == "AKIDEXAMPLE"


def test_aws_error_names_action_resource_code_and_request_id() -> None:
    exc = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                       "ResponseMetadata": {"RequestId": "REQ123", "HTTPStatusCode": 403}}, "PutObject")
    err = aws_error("S3 PutObject", "s3://b/k", exc)
    assert err.code == "AccessDenied"
    assert err.message == "S3 PutObject on s3://b/k failed: AccessDenied: Access Denied (request id REQ123)"
    err = aws_error("S3 PutObject", "s3://b/k", NoCredentialsError())
    assert err.code == "NoCredentials" and "AWS_PROFILE" in err.message
