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
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials

USER_AGENT = "pipeline-test"


@dataclass(frozen=True)
class AwsTarget:
    """Where and as whom to call AWS. Holds references to credentials, never credentials themselves."""

    region: str | None = None
    profile: str | None = None
    credentials_block: str | None = None
    max_attempts: int = 8
    retry_mode: str = "standard"


def retry_config(target: AwsTarget) -> Config:
    """botocore config: retry mode and attempts for throttling, and a user agent to find our calls in CloudTrail."""
    return Config(
        retries={"mode": target.retry_mode, "total_max_attempts": target.max_attempts},
        user_agent_extra=USER_AGENT,
    )


def load_credentials_block(name: str) -> "AwsCredentials":
    """Load a saved prefect-aws ``AwsCredentials`` block by name."""
    from prefect_aws import AwsCredentials

    return AwsCredentials.load(name, _sync=True)


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
    _clients: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
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

    def client(self, service: str) -> Any:
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
                self._clients[service] = self._session.client(service, **params)
            return self._clients[service]

    @property
    def region(self) -> str | None:
        """The region clients are made for (after the spec, the block and the chain had their say)."""
        return self.client("sts").meta.region_name

    def endpoint_url(self, service: str) -> str:
        """The endpoint a service's client talks to (an emulator's URL when one is configured)."""
        return str(self.client(service).meta.endpoint_url)


def is_real_aws(endpoint_url: str) -> bool:
    """True when an endpoint is AWS's own (so console links make sense), False for moto, LocalStack and such."""
    return endpoint_url.rstrip("/").endswith(".amazonaws.com") or ".amazonaws.com/" in endpoint_url
