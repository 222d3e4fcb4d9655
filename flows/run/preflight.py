"""The permission preflight: before the first change, check that the caller may do what the run needs.

What the run needs is what the plan says (flows/plan/): each rendered step's footprint (its kind's declared
IAM actions on which ARNs, :mod:`tasks.kit.iam`) and the run's own (the secrets its templates read, the undo journal,
the audit, the evidence upload). Two ways to check, the first that works:

1. **Simulation** (``iam:SimulatePrincipalPolicy``): the caller (``sts:GetCallerIdentity``; an assumed-role ARN is
   simulated as its role) is evaluated by IAM on every action and resource, with the conditions the run meets
   (``kms:ViaService``). Identity policies only: a bucket or key policy, an SCP or a permissions boundary that
   denies is seen by the run itself.
2. **Read-only probes**, when the caller may not simulate (or IAM does not answer): one cheap read per need that
   has one (``ssm:GetParameter`` on each parameter, ``s3:ListBucket`` on each bucket, ``glue:GetJobRuns``, ...).
   Clearly weaker: an action that only changes something (``ssm:PutParameter``) cannot be probed; the output says
   how many needs were not checked. A permission missing there stops the step that needs it, and the run undoes
   what it changed.

A need found denied stops the run before its first change: exit 3 ("could not run, nothing changed"), naming the
action, the resource and the caller's ARN. The preflight is step 0 of every run (``--no-preflight`` or the case's
``aws.preflight: false`` switch it off) and ``--preflight`` runs it alone (no Prefect server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from botocore.exceptions import BotoCoreError, ClientError

from flows.plan.changes import RUN, run_footprint
from flows.spec.model import CaseSpec, iter_steps
from tasks.kit.aws import ClientFactory
from tasks.kit.errors import error_code
from tasks.kit.iam import Arns, Need
from tasks.kit.step import footprint

if TYPE_CHECKING:
    from types_boto3_iam import IAMClient

#: AWS's codes for "the caller may not do this"
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError",
                          "UnauthorizedAccess", "Forbidden", "403"})
#: how many (action, resource) pairs one SimulatePrincipalPolicy call evaluates at most
SIMULATE_BATCH = 100


@dataclass(frozen=True)
class Denied:
    """A need the caller does not have: the action, on which resource, for which step."""

    action: str
    resource: str
    step: str
    decision: str = "implicitDeny"

    def text(self) -> str:
        return f"{self.action} on {self.resource} (needed by {self.step}; {self.decision})"


@dataclass
class Preflight:
    """What the preflight found."""

    caller: str
    #: "simulation", "probes"
    method: str
    needs: int = 0
    checked: int = 0
    denied: list[Denied] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the needs probes could not check (actions that only change something)
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.denied

    def summary(self) -> str:
        if self.method == "simulation":
            text = (f"Preflight: iam:SimulatePrincipalPolicy for {self.caller}: {self.checked} action(s) on the "
                    f"case's resources")
        else:
            text = (f"Preflight by read-only probes for {self.caller} (weaker than a simulation: "
                    f"{self.checked} of {self.needs} need(s) probed")
            if self.unchecked:
                shown = ", ".join(sorted(set(self.unchecked))[:8])
                text += (f"; {len(set(self.unchecked))} action(s) not checked, having no cheap read-only probe: "
                         f"{shown}" + (", ..." if len(set(self.unchecked)) > 8 else "")
                         + "; a missing one stops the step that needs it, and the run undoes what it changed")
            text += ")"
        if self.ok:
            return text + ": all allowed" + "".join(f". {n}" for n in self.notes)
        return text + f": {len(self.denied)} denied" + "".join(f". {n}" for n in self.notes)

    def refusal(self, case: str) -> str:
        """The could-not-run message: every denied action, its resource and the caller."""
        listing = "; ".join(d.text() for d in self.denied[:20])
        more = f"; and {len(self.denied) - 20} more" if len(self.denied) > 20 else ""
        how = "iam:SimulatePrincipalPolicy" if self.method == "simulation" else "a read-only probe"
        return (f"case '{case}' did not start: the preflight ({how}) found that {self.caller} is denied what the "
                f"case needs: {listing}{more}. Nothing was changed; grant these (see `--iam-policy`) or run with "
                "--no-preflight")


# --------------------------------------------------------------------------------------------------- needs
def case_needs(case: CaseSpec, rendered: CaseSpec, spec_dir: Path, arns: Arns) -> list[tuple[str, Need]]:
    """Every need of the run: each rendered step's (by its label), then the run's own."""
    out: list[tuple[str, Need]] = []
    changes = False
    for placed in iter_steps(rendered):
        try:
            fp = footprint(placed.step, arns)
        except LookupError:
            continue  # a kind that declares nothing cannot be checked (a contract test fails for it)
        out += [(f"step {placed.number} '{placed.label}'", n) for n in fp.needs]
        changes = changes or bool(placed.step.resources(spec_dir))
    out += [(RUN, n) for n in run_footprint(case, arns, changes, spec_dir).needs]
    return list(dict.fromkeys(out))


def principal_of(caller_arn: str) -> str | None:
    """The ARN to simulate for a caller: a user as it is, an assumed role as its role (``arn:aws:sts::1:assumed-role/
    R/session`` -> ``arn:aws:iam::1:role/R``); None for what IAM cannot simulate (the root user, a federated user)."""
    match = re.fullmatch(r"arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+", caller_arn)
    if match:
        return f"arn:{match.group(1)}:iam::{match.group(2)}:role/{match.group(3)}"
    if re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:(user|role)/.+", caller_arn):
        return caller_arn
    return None


def arns_of(caller_arn: str, region: str | None, kms_key_arn: str | None = None) -> Arns:
    parts = caller_arn.split(":")
    account = parts[4] if len(parts) > 4 and parts[4].isdigit() else "*"
    partition = parts[1] if len(parts) > 1 and parts[1].startswith("aws") else "aws"
    return Arns(account=account, region=region or "*", partition=partition, kms_key_arn=kms_key_arn)


# ---------------------------------------------------------------------------------------------- simulation
class CannotCheck(Exception):
    """No check at all is possible (no credentials, AWS unreachable)."""


class CannotSimulate(Exception):
    """IAM's simulation is not available to this caller (the message says why)."""


def _context(need: Need) -> list[dict[str, Any]]:
    return [{"ContextKeyName": key, "ContextKeyValues": list(values), "ContextKeyType": "string"}
            for _, key, values in need.condition]


def simulate(iam: IAMClient, principal: str, needs: list[tuple[str, Need]]) -> list[Denied]:
    """Evaluate every need with SimulatePrincipalPolicy; the denied ones. CannotSimulate when IAM refuses."""
    groups: dict[tuple[str, tuple[Any, ...]], list[tuple[str, Need]]] = {}
    for who, need in needs:
        groups.setdefault((need.resource, need.condition), []).append((who, need))
    denied: list[Denied] = []
    for (resource, _), items in groups.items():
        actions = list(dict.fromkeys(n.action for _, n in items))
        steps = {n.action: who for who, n in reversed(items)}
        for start in range(0, len(actions), SIMULATE_BATCH):
            kwargs: dict[str, Any] = {"PolicySourceArn": principal, "ResourceArns": [resource],
                                      "ActionNames": actions[start:start + SIMULATE_BATCH]}
            context = _context(items[0][1])
            if context:
                kwargs["ContextEntries"] = context
            while True:
                try:
                    page = iam.simulate_principal_policy(**kwargs)
                except ClientError as exc:
                    raise CannotSimulate(f"iam:SimulatePrincipalPolicy on {principal} failed "
                                         f"({error_code(exc)}: {exc.response.get('Error', {}).get('Message', '')})"
                                         ) from None
                except BotoCoreError as exc:
                    raise CannotSimulate(f"iam:SimulatePrincipalPolicy could not be called ({exc})") from None
                for result in page.get("EvaluationResults", []):
                    if result.get("EvalDecision") != "allowed":
                        action = result.get("EvalActionName", "?")
                        denied.append(Denied(action, resource, steps.get(action, RUN),
                                             str(result.get("EvalDecision"))))
                if not page.get("IsTruncated"):
                    break
                kwargs["Marker"] = page.get("Marker")
    return denied


# -------------------------------------------------------------------------------------------------- probes
def _name(arn: str, after: str) -> str:
    return arn.split(after, 1)[1] if after in arn else arn


def _parameter(arn: str) -> str:
    return "/" + _name(arn, ":parameter/").lstrip("/")


def _bucket_and_prefix(arn: str) -> tuple[str, str]:
    bucket, _, prefix = arn.split(":::", 1)[-1].partition("/")
    return bucket, prefix.rstrip("*")


def _glue(arn: str, kind: str) -> str:
    return _name(arn, f":{kind}/")


#: one read-only call per probeable action: (clients, the need's resource ARN) -> the call (raises ClientError);
#: a resource with a wildcard (``*``) is not probed where the call needs one name
PROBES: dict[str, Callable[[ClientFactory, str], Any]] = {
    "ssm:GetParameter": lambda c, arn: c.client("ssm").get_parameter(Name=_parameter(arn)),
    "ssm:GetParameterHistory": lambda c, arn: c.client("ssm").get_parameter_history(Name=_parameter(arn),
                                                                                     MaxResults=1),
    "ssm:GetParametersByPath": lambda c, arn: c.client("ssm").get_parameters_by_path(
        Path=_parameter(arn).rstrip("*").rstrip("/") or "/", MaxResults=1),
    "ssm:DescribeParameters": lambda c, arn: c.client("ssm").describe_parameters(MaxResults=1),
    "s3:ListBucket": lambda c, arn: c.client("s3").list_objects_v2(Bucket=_bucket_and_prefix(arn)[0], MaxKeys=1),
    "s3:ListBucketMultipartUploads": lambda c, arn: c.client("s3").list_multipart_uploads(
        Bucket=_bucket_and_prefix(arn)[0], MaxUploads=1),
    "cloudwatch:DescribeAlarms": lambda c, arn: c.client("cloudwatch").describe_alarms(
        AlarmNames=[_name(arn, ":alarm:")]),
    "glue:GetJobRuns": lambda c, arn: c.client("glue").get_job_runs(JobName=_glue(arn, "job"), MaxResults=1),
    "glue:GetCrawler": lambda c, arn: c.client("glue").get_crawler(Name=_glue(arn, "crawler")),
    "states:ListExecutions": lambda c, arn: c.client("stepfunctions").list_executions(stateMachineArn=arn,
                                                                                      maxResults=1),
    "athena:GetWorkGroup": lambda c, arn: c.client("athena").get_work_group(WorkGroup=_name(arn, ":workgroup/")),
    "dynamodb:DescribeTable": lambda c, arn: c.client("dynamodb").describe_table(TableName=_name(arn, ":table/")),
    "lambda:GetFunction": lambda c, arn: c.client("lambda").get_function(FunctionName=arn),
}


def _probeable(need: Need) -> bool:
    if need.action not in PROBES:
        return False
    if need.action == "ssm:DescribeParameters":
        return True
    tail = need.resource.rstrip("*") if need.action in ("ssm:GetParametersByPath", "s3:ListBucket",
                                                        "s3:ListBucketMultipartUploads") else need.resource
    return "*" not in tail and "?" not in tail


def probe(clients: ClientFactory, needs: list[tuple[str, Need]], result: Preflight) -> None:
    """One read-only call per probeable need (each action and resource once); the denied ones into ``result``."""
    done: set[tuple[str, str]] = set()
    for who, need in needs:
        if not _probeable(need):
            result.unchecked.append(need.action)
            continue
        key = (need.action, need.resource)
        if key in done:
            continue
        done.add(key)
        try:
            PROBES[need.action](clients, need.resource)
        except ClientError as exc:
            code = error_code(exc)
            if code in DENIED_CODES:
                result.denied.append(Denied(need.action, need.resource, who, code))
            # anything else (NotFound, a validation error): the caller was allowed to ask
        except BotoCoreError as exc:
            result.notes.append(f"{need.action} on {need.resource} could not be probed ({exc})")
            continue
        result.checked += 1


# --------------------------------------------------------------------------------------------------- check
def check(case: CaseSpec, rendered: CaseSpec, spec_dir: Path, clients: ClientFactory,
          kms_key_arn: str | None = None) -> Preflight:
    """Step 0 of a run: may the caller do what the rendered case needs? (Never changes anything.)"""
    try:
        caller = str(clients.client("sts").get_caller_identity()["Arn"])
    except ClientError as exc:  # AWS never refuses it; an emulator enforcing IAM may
        caller = f"an unknown caller (sts:GetCallerIdentity: {error_code(exc)})"
    except BotoCoreError as exc:  # no credentials, no region, AWS unreachable: nothing can be checked
        raise CannotCheck(f"the preflight could not reach AWS as anyone: {exc}") from None
    arns = arns_of(caller, clients.region, kms_key_arn)
    needs = case_needs(case, rendered, spec_dir, arns)
    result = Preflight(caller, "simulation", needs=len(needs))
    principal = principal_of(caller)
    try:
        if principal is None:
            raise CannotSimulate(f"IAM cannot simulate {caller}")
        result.denied = simulate(clients.client("iam"), principal, needs)
        result.checked = len(needs)
        return result
    except CannotSimulate as exc:
        result.notes.append(f"No simulation: {exc}")
    except Exception as exc:  # an emulator without the action, an unforeseen answer: probe instead
        result.notes.append(f"No simulation: iam:SimulatePrincipalPolicy failed ({type(exc).__name__}: {exc})")
    result.method = "probes"
    result.denied = []
    probe(clients, needs, result)
    return result


def needs_text(needs: Iterable[tuple[str, Need]]) -> list[str]:
    return [f"{who}: {need.action} on {need.resource}" for who, need in needs]


def step_zero(case: CaseSpec, rendered: CaseSpec, spec_dir: Path, clients: ClientFactory, logger: Any) -> Preflight:
    """The preflight as step 0 of a run: logged; CouldNotRun (exit 3, nothing changed) when a need is denied."""
    from flows.run.recover import CouldNotRun

    try:
        result = check(case, rendered, spec_dir, clients)
    except CannotCheck as exc:
        raise CouldNotRun(f"case '{case.case}' did not start: {exc}") from None
    if not result.ok:
        raise CouldNotRun(result.refusal(case.case))
    logger.info("%s", result.summary())
    return result


def workgroup_limits(rendered: CaseSpec, clients: ClientFactory) -> list[str]:
    """Each Athena workgroup the case queries, with its own limit on bytes scanned per query (athena:GetWorkGroup)."""
    from tasks.athena.cost import show_bytes, workgroup_cutoff
    from tasks.kit.errors import StepError

    lines = []
    for workgroup in dict.fromkeys(getattr(p.step, "workgroup") for p in iter_steps(rendered)
                                   if p.kind == "athena_query"):
        try:
            cutoff = workgroup_cutoff(clients.client("athena"), workgroup)
        except StepError as exc:
            lines.append(f"Athena workgroup {workgroup}: its own limit could not be read ({exc.message})")
            continue
        limit = f"at most {show_bytes(cutoff)} scanned per query" if cutoff else "no limit on bytes scanned"
        lines.append(f"Athena workgroup {workgroup}: {limit} (its own BytesScannedCutoffPerQuery)")
    return lines


def cli(case: CaseSpec, spec_dir: Path) -> int:
    """``--preflight`` alone: check, print, exit 0 (allowed) or 3 (denied, or nothing could be checked); no Prefect
    server, no change. Rendered with the placeholders of validation (names never hold a secret)."""
    import sys
    from datetime import datetime, timezone

    from flows.run.engine import render_case
    from flows.spec.templating import builtin_values, resolve_variables

    values = resolve_variables(case.variables, builtin_values(case.case, "preflight", datetime.now(timezone.utc),
                                                              case.timezone))
    rendered = render_case(case, values)
    clients = ClientFactory(case.aws.target())
    try:
        result = check(case, rendered, spec_dir, clients)
    except CannotCheck as exc:
        print(f"Could not run: {exc}", file=sys.stderr)
        return 3
    if not result.ok:
        print(f"Could not run: {result.refusal(case.case)}", file=sys.stderr)
        return 3
    print(result.summary())
    for line in workgroup_limits(rendered, clients):
        print(line)
    return 0
