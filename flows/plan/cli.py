"""The command line of ``--plan`` and ``--iam-policy`` (called from ``python -m flows.pipeline_test``'s ``main``).

Both read a case, a folder of cases or a suite file, validate it as a run would, and print what it will do
(flows/plan/changes.py) or the IAM policy it needs (flows/plan/iam_policy.py). No AWS call, no credentials, no Prefect
server. Exit 0, or 2 for an invalid spec or flag (nothing was run).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from flows.plan.changes import CasePlan, Plan, format_plan, plan_case
from flows.plan.iam_policy import WILDCARDS, build_policy, dumps, wildcard_problems
from flows.spec.load import SpecError, load_spec
from flows.spec.model import CaseSpec
from tasks.kit.iam import Arns, partition

EXIT_OK, EXIT_INVALID = 0, 2
ACCOUNT = re.compile(r"[0-9]{12}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+")


def _flag_problems(args: Any) -> list[str]:
    problems = []
    if args.account is not None and args.account != "*" and not ACCOUNT.fullmatch(args.account):
        problems.append(f"--account {args.account!r}: not an AWS account id (12 digits), nor '*' (any account)")
    if args.region is not None and args.region != "*" and not REGION.fullmatch(args.region):
        problems.append(f"--region {args.region!r}: not an AWS region (e.g. eu-west-1), nor '*' (any region)")
    if args.kms_key_arn is not None and not KMS_KEY_ARN.fullmatch(args.kms_key_arn):
        problems.append(f"--kms-key-arn {args.kms_key_arn!r}: not a KMS key ARN "
                        "(arn:aws:kms:<region>:<account>:key/<key id>; an alias does not scope a policy)")
    return problems


def arns_for(case: CaseSpec, args: Any) -> Arns:
    """Where the case's ARNs point: the flags, else the case's ``aws:`` settings, else ``*``."""
    return Arns(account=args.account or case.aws.account_id or "*", region=args.region or case.aws.region or "*",
                partition=partition(args.region or case.aws.region or ""), kms_key_arn=args.kms_key_arn)


def _prefix_problems(case: CaseSpec, source: str) -> list[str]:
    return [f"{source}: case: field 'aws.allowed_parameter_prefixes': {p!r} holds a wildcard (* or ?); a prefix is "
            "matched literally (e.g. /test/), so it would allow nothing, and a policy cannot be scoped by it"
            for p in case.aws.allowed_parameter_prefixes or [] if WILDCARDS.search(p)]


def load_plan(args: Any, overrides: dict[str, str]) -> Plan:
    """The plan of the case or suite ``args.spec`` names; SpecError when it is invalid."""
    from flows.suite.spec import is_suite_file, load_suite

    problems = _flag_problems(args)
    if problems:
        raise SpecError("the command line", problems)
    path = Path(args.spec)
    cases: list[tuple[CaseSpec, Path, str]] = []
    suite = is_suite_file(path)
    if suite:
        loaded = load_suite(path, args.tag or None, overrides, files_root=args.files_root)
        cases = [(c.spec, c.path.resolve().parent, str(c.path)) for c in loaded.cases]
        title = f"Plan of suite '{loaded.spec.suite}' ({path}): {len(cases)} case(s)"
    else:
        if args.tag:
            raise SpecError("the command line", [f"--tag is for a suite (a folder or a suite file), not the case "
                                                 f"{args.spec}"])
        case, folder = load_spec(path, overrides, args.files_root)
        cases = [(case, folder, str(path))]
        title = f"Plan of case '{case.case}' ({path}): {len(case.steps)} step(s)"
    problems = [p for case, _, source in cases for p in _prefix_problems(case, source)]
    if problems:
        raise SpecError(str(path), problems)
    plans: list[CasePlan] = [plan_case(case, folder, source, arns_for(case, args)) for case, folder, source in cases]
    return Plan(title, plans, suite=suite)


def plan_cli(args: Any, overrides: dict[str, str]) -> int:
    """``--plan`` and/or ``--iam-policy``: print, exit 0; exit 2 for an invalid spec or flag."""
    try:
        plan = load_plan(args, overrides)
        policy = None
        if args.iam_policy:
            problems = wildcard_problems(plan)
            if problems:
                raise SpecError(str(args.spec), problems)
            policy = build_policy(plan)
    except SpecError as exc:
        print(str(exc), file=sys.stderr)
        print("Nothing was run: no AWS call was made.", file=sys.stderr)
        return EXIT_INVALID
    if policy is not None:
        for warning in policy.warnings:
            print(f"Warning: {warning}", file=sys.stderr)
        for note in policy.notes:
            print(f"Note: {note}", file=sys.stderr)
    if args.json:
        out: dict[str, Any] = {}
        if args.plan:
            out["plan"] = plan.to_json()
        if policy is not None:
            out["iam_policy"] = policy.document
        print(json.dumps(out if args.plan else out["iam_policy"], indent=2))
        return EXIT_OK
    if args.plan:
        print(format_plan(plan))
    if policy is not None:
        if args.plan:
            print("\nIAM policy (least privilege, from the plan):")
        print(dumps(policy.document))
    return EXIT_OK
