"""``--iam-policy``: the least-privilege IAM policy of a case or a suite, made from its plan (changes.py).

One policy document (version 2012-10-17). Each step kind declares the IAM actions its runner calls on which ARN
(its footprint, :mod:`tasks.kit.iam`); the run adds its own (the undo journal's SSM path, KMS for the SecureStrings,
the audit's ``sts:GetCallerIdentity``, the evidence upload). The statements go by resource kind (SSM parameters,
S3 objects, S3 buckets, Lambda functions, ...); within a kind, actions that need different resources get statements
of their own, so every action is allowed on exactly the resources that need it (a parameter that is only read is
never writable).

**Account and region.** From ``--account``/``--region``, else the case's ``aws.account_id``/``aws.region``. An
unknown one becomes ``*`` in the ARNs, with a warning on stderr (the policy still scopes every resource by
name); pass it to narrow the policy to one account.

**KMS.** SecureStrings (and the undo journal, whose entries are SecureStrings) need ``kms:Encrypt``/``kms:Decrypt``
(and ``kms:GenerateDataKey`` for Advanced-tier entries). With ``--kms-key-arn`` the statement names that key;
without it, every key of the account and region, but only when used through SSM (a ``kms:ViaService``
condition).

**Refused (exit 2).** A resource name that holds ``*`` or ``?`` (an IAM wildcard: the policy would grant more
than the case names), and an allowed parameter prefix with one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from flows.plan.changes import RUN, CasePlan, Plan
from tasks.kit.iam import Need

VERSION = "2012-10-17"
#: statement names of resource kinds: (IAM service prefix, resource type in the ARN) -> Sid
KIND_NAMES = {
    ("s3", "bucket"): "S3Buckets",
    ("s3", "object"): "S3Objects",
    ("ssm", "parameter"): "SsmParameters",
    ("lambda", "function"): "LambdaFunctions",
    ("dynamodb", "table"): "DynamoDbTables",
    ("sqs", "queue"): "SqsQueues",
    ("cloudwatch", "alarm"): "CloudWatchAlarms",
    ("logs", "log-group"): "LogGroups",
    ("glue", "job"): "GlueJobs",
    ("glue", "crawler"): "GlueCrawlers",
    ("glue", "catalog"): "GlueCatalog",
    ("glue", "database"): "GlueCatalog",
    ("glue", "table"): "GlueCatalog",
    ("states", "stateMachine"): "StateMachines",
    ("states", "mapRun"): "StateMachines",
    ("states", "execution"): "StepFunctionsExecutions",
    ("states", "express"): "StepFunctionsExecutions",
    ("athena", "workgroup"): "AthenaWorkgroups",
    ("kms", "key"): "KmsKeys",
    ("secretsmanager", "secret"): "SecretsManagerSecrets",
    ("iam", "user"): "PermissionPreflight",
    ("iam", "role"): "PermissionPreflight",
}
#: the Sid of actions that AWS cannot scope to a resource (``Resource: "*"``)
UNSCOPED = "NotResourceScoped"
#: the Sid of the undo journal's own SSM permissions
JOURNAL = "UndoJournal"
#: characters that are wildcards in an IAM resource ARN
WILDCARDS = re.compile(r"[*?]")


def resource_kind(arn: str) -> tuple[str, str]:
    """(service prefix, resource type) of an ARN: ``arn:aws:s3:::b/k`` -> (s3, object)."""
    if arn == "*":
        return ("*", "*")
    parts = arn.split(":", 5)
    service, resource = parts[2], parts[5] if len(parts) > 5 else ""
    if service == "s3":
        return (service, "object" if "/" in resource else "bucket")
    if service == "sqs":
        return (service, "queue")
    kind = re.split(r"[/:]", resource, maxsplit=1)[0]
    return (service, kind)


def sid_of(need: Need, step: str) -> str:
    if need.resource == "*":
        return UNSCOPED
    kind = resource_kind(need.resource)
    if step == RUN and kind == ("ssm", "parameter") and need.action != "ssm:GetParameter":  # not ssm() in templates
        return JOURNAL
    return KIND_NAMES.get(kind, "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", "-".join(kind))))


@dataclass
class Policy:
    """The policy document and what the reader should know about it."""

    document: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def statements(needs: list[tuple[str, Need]]) -> list[dict[str, Any]]:
    """One statement per resource kind (and condition); within a kind, actions that need different resources
    get a statement each (numbered), so every action is allowed on exactly the resources that need it."""
    by_kind: dict[tuple[str, tuple[Any, ...]], dict[str, set[str]]] = {}
    for step, need in needs:
        resources = by_kind.setdefault((sid_of(need, step), need.condition), {}).setdefault(need.action, set())
        resources.add(need.resource)
    out: list[dict[str, Any]] = []
    used: dict[str, int] = {}
    for (sid, condition), by_action in sorted(by_kind.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        groups: dict[frozenset[str], list[str]] = {}
        for action, resources in by_action.items():
            groups.setdefault(frozenset(resources), []).append(action)
        for arns, allowed in sorted(groups.items(), key=lambda kv: (-len(kv[1]), sorted(kv[1]), sorted(kv[0]))):
            used[sid] = used.get(sid, 0) + 1
            statement: dict[str, Any] = {"Sid": sid if used[sid] == 1 else f"{sid}{used[sid]}", "Effect": "Allow",
                                         "Action": sorted(allowed), "Resource": sorted(arns)}
            if condition:
                statement["Condition"] = Need("iam:Placeholder", "*", condition).condition_block()
            out.append(statement)
    return out


def wildcard_problems(plan: Plan) -> list[str]:
    """Names the cases give that hold an IAM wildcard (the policy would grant more than they name)."""
    problems = []
    for case in plan.cases:
        for step in case.steps:
            for name in dict.fromkeys(t.name for t in step.footprint.touches):
                if WILDCARDS.search(_without_placeholders(name, case)):
                    problems.append(f"{case.source}: step {step.number} {step.label!r} ({step.kind}): "
                                    f"{name!r} holds an IAM wildcard (* or ?), so a policy for it would grant more "
                                    "than the case names; name the resource without one")
    return problems


def _without_placeholders(name: str, case: CasePlan) -> str:
    for placeholder in case.placeholders:
        name = name.replace(placeholder, "")
    return name


def build_policy(plan: Plan) -> Policy:
    """The policy of every case of the plan (a suite's: the union)."""
    needs = [(who.step, need) for case in plan.cases for who, need in case.needs()]
    document = {"Version": VERSION, "Statement": statements(needs)}
    warnings = []
    arns = plan.cases[0].arns if plan.cases else None
    if arns is not None and arns.account == "*":
        warnings.append("the case names no account (aws.account_id) and no --account was given: the ARNs say "
                        "'*' for the account; pass --account 123456789012 to scope the policy to one account")
    if arns is not None and arns.region == "*":
        warnings.append("the case names no region (aws.region) and no --region was given: the ARNs say '*' for "
                        "the region; pass --region to scope the policy to one region")
    if arns is not None and arns.kms_key_arn is None and any(n.service == "kms" for _, n in needs):
        warnings.append("no --kms-key-arn: KMS actions are allowed on any key of the account, only through SSM "
                        "(kms:ViaService); pass the SecureStrings' key ARN to name it")
    return Policy(document, warnings, plan.notes())


def dumps(document: dict[str, Any], width: int = 120) -> str:
    """The policy as JSON for people: indented, with a list of strings on one line when it fits ``width``."""

    def render(value: Any, indent: int) -> str:
        pad = " " * indent
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            inline = json.dumps(value)
            if indent + len(inline) + 24 <= width:
                return inline
        if isinstance(value, dict):
            items = [f'{pad}  {json.dumps(k)}: {render(v, indent + 2)}' for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(value, list):
            return "[\n" + ",\n".join(f"{pad}  {render(v, indent + 2)}" for v in value) + f"\n{pad}]"
        return json.dumps(value)

    return render(document, 0)
