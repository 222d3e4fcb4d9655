"""Who ran a case, where and with what: the AWS account and identity (STS GetCallerIdentity, which needs no
permission), the region, the deployment and work pool (when run from one), the host, the OS user, the project's
version (and git commit when run from a checkout), Prefect's and boto3's versions.

Collecting it never fails a case: what cannot be learned is left empty, and a refused STS call is recorded by
its AWS error code. Nothing here is secret (no credentials: the caller ARN names the identity, not its keys).
"""

from __future__ import annotations

import getpass
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from flows.evidence.report import Audit, AwsIdentity
from tasks.kit.errors import error_code

#: the project's checkout (for the git commit, when run from one)
ROOT = Path(__file__).resolve().parents[2]


def aws_identity(clients: Any) -> AwsIdentity:
    """``account_id``, ``caller_arn``, ``region``, and ``error_code`` when STS refused or could not be reached."""
    found = AwsIdentity()
    try:
        found.region = clients.region
        identity = clients.client("sts").get_caller_identity()
        found.account_id, found.caller_arn = identity.get("Account"), identity.get("Arn")
    except ClientError as exc:
        found.error_code = error_code(exc)
    except Exception as exc:  # no credentials, no network (BotoCoreError), anything else: recorded, never fatal
        found.error_code = type(exc).__name__
    return found


def git_commit(root: Path = ROOT) -> str | None:
    """The checkout's commit (with ``-dirty`` when it has changes), or None outside a git checkout."""
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # not installed (e.g. a checkout that was never installed)
        return None


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return None


#: how many parent flow runs are climbed to find the deployment a subflow run came from
PARENT_LEVELS = 5


def _deployment() -> tuple[str | None, str | None]:
    """The deployment's name and the flow run's work pool, when the run came from a deployment.

    Read off the run's own context (its FlowRun knows its deployment id and work pool), so a run not started
    from a deployment, nor as a subflow, costs no API call. (Prefect's ``prefect.runtime.deployment.name`` reads
    the flow run from the API on every use, with a new client each time: measurable in a suite of many cases.)
    A subflow run (a case of the demo's deployment, of a suite's) has no deployment of its own: its parents'
    is found by :func:`deployment_of`."""
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        run = context.flow_run if context is not None else None
        if run is None or (run.deployment_id is None and run.parent_task_run_id is None):
            return None, None
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return deployment_of(client, run)
    except Exception:  # no server: simply not known
        return None, None


def deployment_of(client: Any, run: Any) -> tuple[str | None, str | None]:
    """The deployment's name and work pool of ``run`` or, for a subflow run, of the nearest parent flow run that
    came from a deployment (up to :data:`PARENT_LEVELS` levels up); (None, None) when none did."""
    for _ in range(PARENT_LEVELS + 1):
        if run.deployment_id is not None:
            return client.read_deployment(run.deployment_id).name or None, run.work_pool_name
        if run.parent_task_run_id is None:
            break
        run = client.read_flow_run(client.read_task_run(run.parent_task_run_id).flow_run_id)
    return None, None


def collect(clients: Any) -> Audit:
    """The audit context of a case run (report.json's ``audit``; see flows/evidence/pack/report.schema.json)."""
    deployment, pool = _deployment()
    return Audit(
        aws=aws_identity(clients),
        deployment=deployment,
        work_pool=pool,
        host=socket.gethostname() or None,
        os_user=_os_user(),
        os=f"{platform.system()} {platform.release()}".strip() or None,
        project_version=_version("pipeline-test"),
        git_commit=git_commit(),
        python_version=platform.python_version(),
        prefect_version=_version("prefect"),
        boto3_version=_version("boto3"),
    )
