"""What does running a step as a Prefect task run cost, beyond the step's own AWS calls?

    python benchmarks/step_overhead.py [--steps 50] [--repeat 1]

Against moto's server on 127.0.0.1 and a Prefect server of this script's own (flows.run.local_server, SQLite, like
the CLI's temporary one; or PREFECT_API_URL when set), with one SSM parameter:
- boto3: ``get_parameter`` (decrypted) in a plain loop, as many calls as the case's steps make;
- runner: the ``expect_parameters`` runner called in a plain loop (no Prefect): the step's own cost;
- flow: a case of N ``expect_parameters`` steps and a case of 1, each a ``pipeline-test`` flow run with its
  evidence pack; per step = (T(N) - T(1)) / (N - 1), so the flow's fixed start and end cost drops out.
Orchestration overhead per step = flow per step - runner per step. Target: at most 40 ms per step.
Prints the load average beside the figures (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PARAMETER = "/bench/overhead"
MODES = ("in the step (before)", "off the critical path")


def case_yaml(steps: int) -> str:
    lines = ["case: Step overhead", "aws:", "  region: us-east-1", "steps:"]
    for i in range(steps):
        lines += ["  - kind: expect_parameters", f"    name: check-{i + 1}", "    parameters:",
                  f"      - name: {PARAMETER}", "        equals: expected"]
    return "\n".join(lines) + "\n"


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else "load average n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="measure the flows this many times (best kept)")
    args = parser.parse_args(argv)

    import boto3
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.emulator import moto_server, use_emulator
    from flows.evidence.ui import StepPublisher
    from flows.pipeline_test import pipeline_test
    from flows.run.command import drain_prefect_workers
    from flows.run.local_server import temporary_server
    from tasks.kit.aws import ClientFactory
    from tasks.kit.step import REGISTRY, StepContext
    from tasks.ssm import ExpectParametersStep

    n = args.steps
    with moto_server() as endpoint, use_emulator(endpoint), tempfile.TemporaryDirectory() as tmp:
        ssm = boto3.client("ssm")
        ssm.put_parameter(Name=PARAMETER, Value="expected", Type="String")
        ssm.get_parameter(Name=PARAMETER, WithDecryption=True)  # warm

        def plain_step() -> None:  # the AWS calls of one expect_parameters step (counted below)
            ssm.get_parameter(Name=PARAMETER, WithDecryption=True)
            ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [PARAMETER]}])

        def plain_steps() -> None:
            for _ in range(n):
                plain_step()

        boto = min(timed(plain_steps) for _ in range(3)) / n
        step = ExpectParametersStep.model_validate(
            {"name": "check", "parameters": [{"name": PARAMETER, "equals": "expected"}]})
        ctx = StepContext(clients=ClientFactory(), case_name="bench", run_id="bench", label="check")
        runner = REGISTRY["expect_parameters"].run
        runner(step, ctx)  # warm
        calls: list[str] = []
        ctx.clients.client("ssm").meta.events.register("before-call.ssm.*",
                                                       lambda model, **_: calls.append(model.name))
        runner(step, ctx)
        step_calls = list(calls)
        per_runner = min(timed(lambda: [runner(step, ctx) for _ in range(n)]) for _ in range(3)) / n
        specs = {}
        for count in (1, n):
            specs[count] = Path(tmp, f"case{count}.yaml")
            specs[count].write_text(case_yaml(count), encoding="utf-8")

        def flow(count: int) -> float:
            evidence = Path(tmp, f"evidence-{count}-{time.monotonic_ns()}")
            t = timed(lambda: pipeline_test(spec=str(specs[count]), evidence_dir=str(evidence)))
            assert (evidence / "manifest.json").exists(), "no evidence pack"
            return t

        def measure() -> dict[str, tuple[float, float]]:
            flow(1)  # warm: the first flow run imports and registers what later ones reuse
            times: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in MODES}
            for _ in range(args.repeat):  # the modes interleaved, the best of each kept: the load varies
                for mode in MODES:
                    # before: each step creates its artifacts itself, as the engine did before the case's publisher
                    StepPublisher.submit = (lambda self, work: work()) if "before" in mode else submit  # type: ignore
                    times[mode][0].append(flow(1))
                    times[mode][1].append(flow(n))
            StepPublisher.submit = submit  # type: ignore[method-assign]
            return {mode: (min(t1), min(tn)) for mode, (t1, tn) in times.items()}

        submit = StepPublisher.submit

        api = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
        if api:
            figures = measure()
        else:
            with temporary_server() as url, temporary_settings({PREFECT_API_URL: url}):
                figures = measure()
                drain_prefect_workers()
    print(f"{n} steps of expect_parameters, {len(step_calls)} AWS call(s) ({', '.join(step_calls)}) per step; {load()}")
    print(f"  boto3 loop:        {boto * 1000:7.1f} ms per step's calls")
    print(f"  runner loop:       {per_runner * 1000:7.1f} ms per step (no Prefect)")
    for mode, (t1, tn) in figures.items():
        per_flow = (tn - t1) / (n - 1)
        overhead = per_flow - per_runner
        print(f"  flow, step evidence {mode}: {per_flow * 1000:6.1f} ms per step (case of 1: {t1:.2f} s, case of "
              f"{n}: {tn:.2f} s); overhead {overhead * 1000:.1f} ms per step (flow - runner; target <= 40 ms); "
              f"flow/runner {per_flow / per_runner:.1f}x, flow/boto3 {per_flow / boto:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
