"""The command line of pipeline-test (`pipeline-test` or `python -m flows.pipeline_test`): a case, a suite
(flows/suite/cli.py), --plan and --iam-policy (flows/plan/cli.py), recover, verify.

    pipeline-test SPEC.yaml [--var name=value ...]     run a case
    pipeline-test SPEC.yaml --evidence-dir DIR         put the evidence pack in DIR
    pipeline-test SPEC.yaml --validate                 only validate
    pipeline-test SPEC.yaml --plan | --iam-policy      what it will change; the IAM policy it needs (no AWS call)
    pipeline-test SPEC.yaml --recover                  first undo what dead runs left changed
    pipeline-test recover [--dry-run]                  undo what dead runs left changed
    pipeline-test verify PACK [--manifest-sha256 HEX]  check that an evidence pack is intact
    pipeline-test --schema                             print the spec's JSON Schema
    pipeline-test FOLDER-OR-SUITE.yaml [--tag T] [--only NAME] [--max-parallel N] [--var k=v] [--evidence-dir D]
                                                       run a suite (flows/suite/)
    pipeline-test [SUITE.yaml] --rerun-failed SUITE-PACK  run what failed in that suite run again

(`pipeline-test` is installed with the project; `python -m flows.pipeline_test` is the same command.)

Exit codes: 0 passed; 1 a check failed (or a step failed); 2 invalid spec (nothing touched AWS); 3 could not
run (Prefect API unreachable, locks not obtained, a live run of another Prefect server holds a resource, a dead
run's changes not yet recovered: nothing was changed); 130 interrupted (Ctrl+C, Ctrl+Break, SIGTERM: what the run
had changed was undone). A suite: 1 when a case failed, else 3 when one could not run. The Prefect API refusing a
call (e.g. 503 on creating the flow run) is 3, never 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pydantic import SecretStr

from flows.console import safe_output
from flows.evidence import ui as evidence
from flows.evidence.markdown import step_counts
from flows.evidence.pack.files import pack_parent
from flows.evidence.results import CaseResult, result_of
from flows.pipeline_test import pipeline_test, short_secret_warnings
from flows.run import prefect_logs
from flows.run.command import (
    EXIT_COULD_NOT_RUN,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_NO_EVIDENCE,
    EXIT_PASSED,
    check_evidence_dir,
    guarded,
    invalid,
    on_temporary_server,
    parse_vars,
    print_result,
)
from flows.run.recover import CouldNotRun
from flows.run.recover import main as recover_main
from flows.spec.load import SpecError, load_spec
from flows.spec.model import iter_steps
from tasks.kit.status import MEANING, short
from tasks.kit.step import format_duration


def format_result(result: CaseResult, with_link: bool = True) -> str:
    """A short summary, plain ASCII of its own; the steps' messages may hold ❌ or ≥, which a console that cannot
    show them gets as ``\u274c`` (see flows.console)."""
    # durations as every report writes them (format_duration): one source, one form
    lines = [f"Case '{result.case}' {result.verdict} in {format_duration(result.duration_s)}"
             + ("" if result.passed and not result.warnings else f" ({step_counts(result)})")]
    width = max((len(s.label) for s in result.steps), default=10)
    for s in result.steps:
        detail = s.error if s.error else "; ".join(s.warnings) if s.warnings else s.summary
        took = format_duration(s.duration_s) if s.status != "skipped" else "-"
        lines.append(f"  {short(s.status):<5} {s.number:<5} {s.label:<{width}}  {took:>8}  {detail}")
    if any(s.status in MEANING for s in result.steps):
        lines.append("  " + "; ".join(f"{short(k)}: {v}" for k, v in MEANING.items()))
    if with_link and result.ui_url:
        lines.append(f"Evidence: {result.ui_url} (artifacts: {evidence.case_key(result.case)})")
    if result.evidence_dir:
        lines.append(f"Evidence pack: {result.evidence_dir}")
    if result.evidence_error:
        lines.append(f"NO EVIDENCE: {result.evidence_error}")
    return "\n".join(lines)


def case_exit_code(result: CaseResult) -> int:
    """1 when the case failed; else 4 when its evidence pack could not be written (or uploaded); else 0."""
    return EXIT_FAILED if not result.passed else EXIT_NO_EVIDENCE if result.evidence_error else EXIT_PASSED


def command_name() -> str:
    """How the user called the command line: ``pipeline-test`` (the console script) or ``python -m
    flows.pipeline_test``."""
    called = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    return "pipeline-test" if called == "pipeline-test" else "python -m flows.pipeline_test"


def main(argv: list[str] | None = None) -> int:
    prefect_logs.install()  # a failed case is a failure in the logs, not a crash report
    safe_output()  # no UnicodeEncodeError on a cp1252 console or pipe (flows.console)
    argv = sys.argv[1:] if argv is None else argv
    prog = command_name()
    if argv[:1] == ["recover"]:
        return recover_main(argv[1:], guarded)
    if argv[:1] == ["verify"]:  # an evidence pack (a case's or a suite's) is intact
        from flows.evidence.pack.verify import main as verify_main

        return verify_main(argv, prog=prog)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", help="the test case: a YAML or JSON spec file; or a suite: a folder "
                        "of cases, or a suite file (see docs/running.md, Suites)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="override a variable declared in the case (repeatable)")
    parser.add_argument("--validate", action="store_true", help="validate the spec and exit")
    parser.add_argument("--schema", action="store_true", help="print the spec's JSON Schema and exit")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--evidence-dir", metavar="DIR", help="write the evidence pack to this (new or empty) "
                        "folder; default: evidence/<case>/<time>-<run id>/")
    parser.add_argument("--no-evidence", action="store_true", help="do not write an evidence pack")
    parser.add_argument("--recover", action="store_true", help="first put back what dead runs left changed on "
                        "this case's resources (else the run refuses to start when there is any)")
    parser.add_argument("--files-root", metavar="DIR", help="local files named by steps may also lie under DIR "
                        "(default: only under the spec's folder); a suite: for every case, instead of the suite "
                        "file's files_root")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG",
                        help="a suite: run only the cases with this tag (repeatable: any of them)")
    parser.add_argument("--max-parallel", type=int, metavar="N", help="a suite: at most N cases at once")
    parser.add_argument("--plan", action="store_true", help="print what the case (or suite) will change, read, "
                        "undo and lock, without running it: no AWS call, no credentials (see docs/aws.md)")
    parser.add_argument("--iam-policy", action="store_true", help="print the least-privilege IAM policy the case "
                        "(or suite) needs, as JSON, without running it (see docs/aws.md)")
    parser.add_argument("--account", metavar="ID", help="--iam-policy: the AWS account of the ARNs (default: the "
                        "case's aws.account_id, else '*' with a warning)")
    parser.add_argument("--region", metavar="REGION", help="--iam-policy: the region of the ARNs (default: the "
                        "case's aws.region, else '*' with a warning)")
    parser.add_argument("--kms-key-arn", metavar="ARN", help="--iam-policy: the KMS key of the SecureStrings "
                        "(default: any key, used only through SSM)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="a suite: run only the case of this name (a matrix row: 'case [row id]'; a glob "
                        "such as 'Orders*' matches names; repeatable)")
    parser.add_argument("--rerun-failed", metavar="PACK", help="a suite: run only the cases (and matrix rows) that "
                        "failed or could not run in this suite evidence pack, as a new run linked to it (the suite "
                        "file: the one the pack names, unless given)")
    parser.add_argument("--preflight", action="store_true", help="only check that the caller may do what the case "
                        "needs (iam:SimulatePrincipalPolicy, else read-only probes), print it and exit: 0 allowed, "
                        "3 not; no change, no Prefect server (see docs/aws.md)")
    parser.add_argument("--no-preflight", action="store_true", help="run without that check before the first change")
    args = parser.parse_args(argv)
    if args.schema:
        from flows.spec.model import json_schema

        try:
            print(json.dumps(json_schema(), indent=2), flush=True)
        except BrokenPipeError:  # `--schema | head`: the reader has what it wanted; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PASSED
    if not args.spec and not args.rerun_failed:
        parser.error("a spec file is required")
    if args.plan or args.iam_policy:
        return _plan_cli(args)
    from flows.suite.spec import is_suite_file

    if args.rerun_failed or is_suite_file(Path(args.spec)):
        from flows.suite.cli import run_suite_cli

        if args.preflight or args.no_preflight:  # a suite's cases follow their own aws.preflight
            print(f"--preflight and --no-preflight are for a case, not the suite {args.spec} (each case's "
                  "aws.preflight decides; check a case alone with --preflight)", file=sys.stderr)
            return EXIT_INVALID

        try:
            overrides = parse_vars(args.var)
        except SpecError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_INVALID
        return run_suite_cli(args, overrides)
    if args.tag or args.only or args.max_parallel is not None:
        print(f"--tag, --only and --max-parallel are for a suite (a folder or a suite file), not the case {args.spec}",
              file=sys.stderr)
        return EXIT_INVALID
    try:
        overrides = parse_vars(args.var)
        case, spec_dir = load_spec(args.spec, overrides, args.files_root)
        if not args.no_evidence:
            check_evidence_dir(Path(args.evidence_dir) if args.evidence_dir else None, args.spec,
                               pack_parent(case.case), writable=not args.validate)
    except SpecError as exc:
        return invalid(exc)
    except CouldNotRun as exc:
        print(f"Could not run: {exc}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    if args.validate:
        for warning in short_secret_warnings(iter_steps(case)):
            print(f"Warning: {warning}", file=sys.stderr)
        print(f"Spec {args.spec} is valid: case '{case.case}', {len(case.steps)} step(s).")
        return EXIT_PASSED
    if args.preflight:
        from flows.run.preflight import cli as preflight_cli

        return preflight_cli(case, spec_dir)

    temporary = on_temporary_server()  # links to a temporary server are dead once the run ends

    def run() -> int:
        # --var values may be secrets (a SecureString's value): Prefect stores SecretStr parameters hidden
        hidden = {k: SecretStr(v) for k, v in overrides.items()}
        state = pipeline_test(spec=str(args.spec), variables=hidden or None, evidence_dir=args.evidence_dir,
                              write_evidence=not args.no_evidence, recover=args.recover,
                              files_root=args.files_root, preflight=not args.no_preflight, return_state=True)
        result = result_of(state)
        if result is None:
            value = state.result(raise_on_failure=False)
            if isinstance(value, CouldNotRun):
                print(f"Could not run: {value}", file=sys.stderr)
                return EXIT_COULD_NOT_RUN
            if state.type.value in ("CANCELLED", "CRASHED"):
                print(f"The flow run ended {state.type.value}: {state.message}", file=sys.stderr)
                return EXIT_INTERRUPTED
            print(f"The flow run ended {state.type.value}: {state.message}", file=sys.stderr)
            return EXIT_FAILED
        print_result(result, format_result(result, with_link=not temporary), args.json, temporary)
        return case_exit_code(result)

    return guarded(run)


def _plan_cli(args: argparse.Namespace) -> int:
    """--plan and --iam-policy (flows.plan.cli): no AWS call, no Prefect server."""
    from flows.plan.cli import plan_cli

    try:
        overrides = parse_vars(args.var)
    except SpecError as exc:
        return invalid(exc)
    return plan_cli(args, overrides)


if __name__ == "__main__":
    sys.exit(main())
