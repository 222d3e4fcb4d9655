"""What a step touches in AWS, declared by its kind: for the plan (``--plan``), the least-privilege policy
(``--iam-policy``) and the permission preflight.

Every step kind registers, next to its runner, a *footprint* function with ``@step_kind(Model,
footprint=...)``: given the **rendered** step and where its ARNs point (:class:`Arns`: partition, account,
region, each ``*`` when unknown), it returns a :class:`Footprint`:

* ``touches``: what a person reads in the plan: each resource the step **changes**, **reads**, or that the
  undo **puts back** (:class:`Touch`: a resource kind such as ``SSM parameter``, its name, a detail such as the
  parameter's type; never a value);
* ``needs``: every IAM action the runner calls, with the ARN it calls it on (:class:`Need`). A resource that
  AWS cannot scope (``ssm:DescribeParameters``, ``sts:GetCallerIdentity``) is ``*``.

The footprint needs no AWS call and no credentials: it is made from the step alone. What the run itself needs
besides its steps (the undo journal, KMS for SecureStrings, the audit's STS call, the evidence upload) is added by
:mod:`flows.plan.iam_policy`.

A kind's needs are checked against what its runner really calls: ``tests/test_iam_contract.py`` records every
AWS operation through botocore's ``before-call`` event while the kind's own tests run, maps it to its IAM
action (:data:`OPERATION_ACTIONS` for the names that differ) and fails on any call the footprint does not
declare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

#: what a touch does to its resource: the run changes it, only reads it, or the undo puts it back
Access = Literal["change", "read", "undo"]


def partition(region: str) -> str:
    """The ARN partition of a region: ``aws``, ``aws-cn`` or ``aws-us-gov``."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


@dataclass(frozen=True)
class Arns:
    """Where ARNs point. ``account`` and ``region`` are ``*`` when unknown (the plan needs neither)."""

    account: str = "*"
    region: str = "*"
    partition: str = "aws"
    #: the KMS key of the SecureStrings (``--kms-key-arn``); None: any key, used only through the service
    #: that asks (a ``kms:ViaService`` condition)
    kms_key_arn: str | None = None

    def arn(self, service: str, resource: str, *, regional: bool = True, in_account: bool = True) -> str:
        region = self.region if regional else ""
        account = self.account if in_account else ""
        return f"arn:{self.partition}:{service}:{region}:{account}:{resource}"

    # --- one method per resource type the kinds name (the AWS Service Authorization Reference's formats)
    def ssm_parameter(self, name: str) -> str:
        """``/a/b`` -> ``arn:aws:ssm:<region>:<account>:parameter/a/b`` (a name may be an ARN already)."""
        return name if name.startswith("arn:") else self.arn("ssm", "parameter/" + name.lstrip("/"))

    def ssm_parameters_under(self, path: str) -> str:
        """Every parameter under a path (``/a/b`` -> ``...:parameter/a/b/*``) and the path itself."""
        return self.arn("ssm", "parameter/" + path.strip("/") + "/*")

    def s3_bucket(self, bucket: str) -> str:
        return f"arn:{self.partition}:s3:::{bucket}"

    def s3_objects(self, bucket: str, key_or_prefix: str, *, prefix: bool = True) -> str:
        """The objects under a prefix (``bucket/prefix*``), or one key (``prefix=False``)."""
        return f"arn:{self.partition}:s3:::{bucket}/{key_or_prefix}{'*' if prefix else ''}"

    def lambda_function(self, name_or_arn: str) -> str:
        if name_or_arn.startswith("arn:"):
            return name_or_arn
        name, _, qualifier = name_or_arn.partition(":")
        return self.arn("lambda", f"function:{name}" + (f":{qualifier}" if qualifier else ""))

    def dynamodb_table(self, name_or_arn: str) -> str:
        return name_or_arn if name_or_arn.startswith("arn:") else self.arn("dynamodb", f"table/{name_or_arn}")

    def sqs_queue(self, name_url_or_arn: str) -> str:
        """A queue by name, URL (``https://sqs.<region>.amazonaws.com/<account>/<name>``) or ARN."""
        if name_url_or_arn.startswith("arn:"):
            return name_url_or_arn
        match = re.match(r"^https?://[^/]+/(\d{12})/([^/?#]+)", name_url_or_arn)
        if match:
            return self.arn("sqs", match.group(2)).rsplit(":", 2)[0] + f":{match.group(1)}:{match.group(2)}"
        return self.arn("sqs", name_url_or_arn)

    def cloudwatch_alarm(self, name: str) -> str:
        return self.arn("cloudwatch", f"alarm:{name}")

    def log_group(self, name: str) -> str:
        """A log group and its streams (``log-group:<name>:*``, the form FilterLogEvents is authorized on)."""
        return self.arn("logs", f"log-group:{name}:*")

    def glue_job(self, name: str) -> str:
        return self.arn("glue", f"job/{name}")

    def glue_crawler(self, name: str) -> str:
        return self.arn("glue", f"crawler/{name}")

    def glue_catalog(self) -> str:
        return self.arn("glue", "catalog")

    def glue_database(self, name: str) -> str:
        return self.arn("glue", f"database/{name}")

    def glue_tables(self, database: str) -> str:
        return self.arn("glue", f"table/{database}/*")

    def state_machine(self, name_or_arn: str) -> str:
        return name_or_arn if name_or_arn.startswith("arn:") else self.arn("states", f"stateMachine:{name_or_arn}")

    def executions(self, state_machine_arn: str, form: str = "execution") -> str:
        """Every execution of a state machine (``execution:<machine>:*``); ``form="express"``: its Express
        executions (``express:<machine>:*:*``), ``form="mapRun"``: its Map Runs (``mapRun:<machine>/*:*``)."""
        head, _, name = state_machine_arn.rpartition(":stateMachine:")
        if not head:
            return state_machine_arn
        tail = {"mapRun": f"mapRun:{name}/*:*", "express": f"express:{name}:*:*"}
        return f"{head}:{tail.get(form, f'{form}:{name}:*')}"

    def athena_workgroup(self, name: str) -> str:
        return self.arn("athena", f"workgroup/{name}")

    def kms_key(self) -> str:
        """The SecureStrings' key: ``--kms-key-arn``, else every key of the account and region."""
        return self.kms_key_arn or self.arn("kms", "key/*")

    def kms_via(self, service: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        """Without a key ARN: the key may be used only through ``service`` (e.g. ``ssm``) in the region."""
        if self.kms_key_arn:
            return ()
        if self.region == "*":
            return (("StringLike", "kms:ViaService", (f"{service}.*.amazonaws.com",)),)
        return (("StringEquals", "kms:ViaService", (f"{service}.{self.region}.amazonaws.com",)),)


@dataclass(frozen=True)
class Need:
    """One IAM action the step calls, on one resource ARN (``*`` for actions AWS cannot scope)."""

    action: str
    resource: str
    #: an IAM condition block (``{"StringEquals": {"kms:ViaService": "ssm.us-east-1.amazonaws.com"}}``), as
    #: sorted (operator, key, values) triples so the need stays hashable
    condition: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", self.action):
            raise ValueError(f"not an IAM action: {self.action!r} (service:Action)")

    @property
    def service(self) -> str:
        return self.action.split(":", 1)[0]

    def condition_block(self) -> dict[str, dict[str, Any]]:
        block: dict[str, dict[str, Any]] = {}
        for operator, key, values in self.condition:
            block.setdefault(operator, {})[key] = list(values) if len(values) != 1 else values[0]
        return block


@dataclass(frozen=True)
class Touch:
    """A resource the plan shows: what kind, its name (a parameter path, ``s3://bucket/prefix``), what is done."""

    access: Access
    resource_kind: str
    name: str
    detail: str = ""


@dataclass
class Footprint:
    """What one rendered step touches (for the plan) and needs (for the policy and the preflight)."""

    touches: list[Touch] = field(default_factory=list)
    needs: list[Need] = field(default_factory=list)
    #: what the case cannot tell and the reader must add (e.g. the data locations of Athena's tables)
    notes: list[str] = field(default_factory=list)

    def change(self, resource_kind: str, name: str, detail: str = "") -> "Footprint":
        self.touches.append(Touch("change", resource_kind, name, detail))
        return self

    def read(self, resource_kind: str, name: str, detail: str = "") -> "Footprint":
        self.touches.append(Touch("read", resource_kind, name, detail))
        return self

    def undo(self, resource_kind: str, name: str, detail: str = "") -> "Footprint":
        self.touches.append(Touch("undo", resource_kind, name, detail))
        return self

    def need(self, resource: str, *actions: str) -> "Footprint":
        """Each of ``actions`` on ``resource``."""
        self.needs.extend(Need(action, resource) for action in actions)
        return self

    def need_kms(self, arns: Arns, via: str, *actions: str) -> "Footprint":
        """KMS ``actions`` on the SecureStrings' key, used through the service ``via`` (``ssm``)."""
        self.needs.extend(Need(action, arns.kms_key(), arns.kms_via(via)) for action in actions)
        return self

    def extend(self, other: "Footprint") -> "Footprint":
        self.touches.extend(other.touches)
        self.needs.extend(other.needs)
        self.notes.extend(other.notes)
        return self


#: a kind's declaration: (the rendered step, where ARNs point) -> its footprint
FootprintFn = Callable[[Any, Arns], Footprint]

#: AWS operations whose IAM action is not ``<service prefix>:<operation name>`` (see the module's doc): service
#: (botocore's name) -> operation -> the actions it needs. An empty tuple: no IAM action (never authorized).
OPERATION_ACTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "s3": {
        "ListObjectsV2": ("s3:ListBucket",),
        "ListObjects": ("s3:ListBucket",),
        "HeadObject": ("s3:GetObject",),
        "HeadBucket": ("s3:ListBucket",),
        "CreateMultipartUpload": ("s3:PutObject",),
        "UploadPart": ("s3:PutObject",),
        "CompleteMultipartUpload": ("s3:PutObject",),
        "AbortMultipartUpload": ("s3:AbortMultipartUpload",),
        "ListMultipartUploads": ("s3:ListBucketMultipartUploads",),
        "CopyObject": ("s3:GetObject", "s3:PutObject"),
        "PutObjectTagging": ("s3:PutObjectTagging",),
        "GetObjectAttributes": ("s3:GetObject", "s3:GetObjectAttributes"),
        "DeleteObject": ("s3:DeleteObject",),
        "ListObjectVersions": ("s3:ListBucketVersions",),
    },
    "lambda": {
        "Invoke": ("lambda:InvokeFunction",),
    },
}

#: botocore's service name -> the IAM service prefix, where they differ
SERVICE_PREFIXES = {"stepfunctions": "states", "logs": "logs", "lambda": "lambda", "cloudwatch": "cloudwatch"}


def actions_of(service: str, operation: str) -> tuple[str, ...]:
    """The IAM action(s) an AWS operation needs (botocore's service name and operation name)."""
    special = OPERATION_ACTIONS.get(service, {})
    if operation in special:
        return special[operation]
    return (f"{SERVICE_PREFIXES.get(service, service)}:{operation}",)


#: error codes of a refused permission (a HEAD's 403 has no body: its code is "403")
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError",
          "UnauthorizedAccess", "403", "Forbidden"}


def name_denied_action(http_response: Any = None, parsed: Any = None, model: Any = None, **_: Any) -> None:
    """botocore ``after-call`` handler (every client of ``tasks.kit.aws.ClientFactory``): an access-denied error whose
    message does not name the IAM action (S3's says only "Access Denied") gets it appended, before botocore
    raises it, so every denial a user sees says which permission is missing."""
    if not isinstance(parsed, dict) or model is None:
        return
    error = parsed.get("Error")
    if not isinstance(error, dict) or str(error.get("Code")) not in DENIED:
        return
    actions = actions_of(model.service_model.service_name, model.name)
    message = str(error.get("Message") or "")
    if actions and not any(action.lower() in message.lower() for action in actions):
        needs = f"needs IAM action {' and '.join(actions)}"
        error["Message"] = f"{message} ({needs})" if message else needs.capitalize()
