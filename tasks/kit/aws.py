"""The one way this project makes AWS clients.

Credentials come from a prefect-aws ``AwsCredentials`` block (by name or object) when one is given, otherwise
from boto3's own chain (environment, ``AWS_PROFILE``, SSO, instance roles), so everything AWS documents for
the SDKs works unchanged: ``AWS_REGION``, ``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_<SERVICE>`` (moto,
LocalStack). The region comes from the spec, else the block, else the chain. Every client gets botocore's
``standard`` retry mode, which retries throttling and transient errors with jittered backoff.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import boto3
from botocore.config import Config

from tasks.kit.iam import name_denied_action

if TYPE_CHECKING:
    # the boto3 type stubs are test-only dependencies: imported for mypy, never at run time
    from botocore.client import BaseClient
    from prefect_aws import AwsCredentials
    from types_boto3_athena import AthenaClient
    from types_boto3_cloudwatch import CloudWatchClient
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_glue import GlueClient
    from types_boto3_iam import IAMClient
    from types_boto3_kms import KMSClient
    from types_boto3_lambda import LambdaClient
    from types_boto3_logs import CloudWatchLogsClient
    from types_boto3_s3 import S3Client
    from types_boto3_secretsmanager import SecretsManagerClient
    from types_boto3_sqs import SQSClient
    from types_boto3_ssm import SSMClient
    from types_boto3_stepfunctions import SFNClient
    from types_boto3_sts import STSClient

USER_AGENT = "pipeline-test"

#: the services this project calls (each has its typed client in ``ClientFactory.client``)
ServiceName = Literal[
    "athena", "cloudwatch", "dynamodb", "glue", "iam", "kms", "lambda", "logs", "s3", "secretsmanager", "sqs", "ssm",
    "stepfunctions", "sts"
]


@dataclass(frozen=True)
class AwsTarget:
    """Where and as whom to call AWS. Holds references to credentials, never credentials themselves."""

    region: str | None = None
    profile: str | None = None
    credentials_block: str | None = None
    max_attempts: int = 8
    retry_mode: Literal["legacy", "standard", "adaptive"] = "standard"


def retry_config(target: AwsTarget) -> Config:
    """botocore config: retry mode and attempts for throttling, and a user agent to find our calls in CloudTrail."""
    return Config(
        retries={"mode": target.retry_mode, "total_max_attempts": target.max_attempts},
        user_agent_extra=USER_AGENT,
    )


def load_credentials_block(name: str) -> "AwsCredentials":
    """Load a saved prefect-aws ``AwsCredentials`` block by name."""
    from prefect_aws import AwsCredentials

    # ``_sync`` is the flag of Prefect's async_dispatch, which the signature it wraps does not declare
    return cast("AwsCredentials", AwsCredentials.load(name, _sync=True))  # type: ignore[call-arg]


@dataclass
class ClientFactory:
    """Makes (and caches) boto3 clients for one target. Thread-safe: parallel steps share it.

    Pass ``credentials`` to use an ``AwsCredentials`` object directly (tests, Python callers); otherwise
    ``target.credentials_block`` names a saved block, or boto3's default chain is used.
    """

    target: AwsTarget = field(default_factory=AwsTarget)
    credentials: "AwsCredentials | None" = None
    _session: boto3.Session | None = field(default=None, init=False, repr=False)
    _overrides: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _clients: dict[str, BaseClient] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _make_session(self) -> tuple[boto3.Session, dict[str, Any]]:
        creds = self.credentials
        if creds is None and self.target.credentials_block:
            creds = load_credentials_block(self.target.credentials_block)
        if creds is not None:
            session = creds.get_boto3_session()
            overrides = creds.aws_client_parameters.get_params_override()
        else:
            session = boto3.Session(profile_name=self.target.profile)
            overrides = {}
        return session, overrides

    @overload
    def client(self, service: Literal["athena"]) -> AthenaClient: ...
    @overload
    def client(self, service: Literal["cloudwatch"]) -> CloudWatchClient: ...
    @overload
    def client(self, service: Literal["dynamodb"]) -> DynamoDBClient: ...
    @overload
    def client(self, service: Literal["glue"]) -> GlueClient: ...
    @overload
    def client(self, service: Literal["iam"]) -> IAMClient: ...
    @overload
    def client(self, service: Literal["kms"]) -> KMSClient: ...
    @overload
    def client(self, service: Literal["lambda"]) -> LambdaClient: ...
    @overload
    def client(self, service: Literal["logs"]) -> CloudWatchLogsClient: ...
    @overload
    def client(self, service: Literal["s3"]) -> S3Client: ...
    @overload
    def client(self, service: Literal["secretsmanager"]) -> SecretsManagerClient: ...
    @overload
    def client(self, service: Literal["sqs"]) -> SQSClient: ...
    @overload
    def client(self, service: Literal["ssm"]) -> SSMClient: ...
    @overload
    def client(self, service: Literal["stepfunctions"]) -> SFNClient: ...
    @overload
    def client(self, service: Literal["sts"]) -> STSClient: ...
    @overload
    def client(self, service: ServiceName) -> BaseClient: ...

    def client(self, service: ServiceName) -> BaseClient:
        """A boto3 client for ``service`` (``"s3"``, ``"ssm"``, ...), made once and reused."""
        with self._lock:
            if service not in self._clients:
                if self._session is None:
                    self._session, self._overrides = self._make_session()
                params = dict(self._overrides)
                config = retry_config(self.target)
                if isinstance(params.get("config"), Config):
                    config = params["config"].merge(config)
                params["config"] = config
                region = self.target.region or self._session.region_name
                if region:
                    params["region_name"] = region
                client = self._session.client(service, **params)
                client.meta.events.register("after-call.*.*", name_denied_action)  # denials name the action
                self._clients[service] = client
            return self._clients[service]

    @property
    def region(self) -> str | None:
        """The region clients are made for (after the spec, the block and the chain had their say)."""
        return self.client("sts").meta.region_name

    def endpoint_url(self, service: ServiceName) -> str:
        """The endpoint a service's client talks to (an emulator's URL when one is configured)."""
        return str(self.client(service).meta.endpoint_url)


def is_real_aws(endpoint_url: str) -> bool:
    """True when an endpoint is AWS's own (so console links make sense), False for moto, LocalStack and such."""
    return endpoint_url.rstrip("/").endswith(".amazonaws.com") or ".amazonaws.com/" in endpoint_url
