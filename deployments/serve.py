"""Serve every case's deployment with `prefect.serve`: no work pool, no worker, schedules included.

    python deployments/serve.py          serve them until Ctrl+C (runs start in this process's machine)
    python deployments/serve.py --list   print what would be served, and exit

The deployments are read from the project's prefect.yaml (names, descriptions, tags, parameters, schedules,
concurrency limits), so serving and `prefect deploy` never drift apart. Only what `prefect.serve` has no use
for is left out: the work pool and the pull steps (served runs start here, in the project folder).

A served deployment has the same name as its `prefect deploy` twin. Prefect cannot turn a work-pool deployment
into a served one in place (its runs would look for code that is not there), so when the server already has
work-pool deployments of these names, this script stops and says so; `--replace` deletes them first (their
past flow runs stay). A later `prefect deploy` makes them work-pool deployments again.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"


def load_definitions(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The deployments declared in prefect.yaml (YAML anchors and `<<:` merges resolved)."""
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    deployments = config.get("deployments") or []
    for item in deployments:
        entrypoint = item.get("entrypoint") or ""
        if not entrypoint.startswith("flows/") or ":" not in entrypoint:
            raise ValueError(f"{path}: deployment {item.get('name')!r} has entrypoint {entrypoint!r}; this script "
                             "serves the project's flows only (flows/<module>.py:<flow>)")
    return deployments


def make_schedule(config: dict[str, Any]) -> Any:
    """A prefect.yaml schedule entry (cron, interval or rrule, with timezone, active, slug, parameters)."""
    from prefect.schedules import Cron, Interval, RRule

    common: dict[str, Any] = {"active": config.get("active", True)}
    for key in ("parameters", "slug"):
        if config.get(key) is not None:
            common[key] = config[key]
    timezone = config.get("timezone")
    if "cron" in config:
        return Cron(config["cron"], timezone=timezone, day_or=config.get("day_or", True), **common)
    if "interval" in config:
        interval = config["interval"]
        interval = timedelta(seconds=interval) if isinstance(interval, (int, float)) else interval
        return Interval(interval, timezone=timezone, **common)
    if "rrule" in config:
        return RRule(config["rrule"], timezone=timezone, **common)
    raise ValueError(f"unknown schedule (expected cron, interval or rrule): {config}")


def concurrency_of(config: dict[str, Any]) -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    limit = config.get("concurrency_limit")
    if isinstance(limit, dict):
        return ConcurrencyLimitConfig(limit=limit["limit"],
                                      collision_strategy=limit.get("collision_strategy", "ENQUEUE"))
    return limit


def build_deployments(path: Path = PREFECT_YAML) -> list[Any]:
    """One `RunnerDeployment` per deployment of prefect.yaml, ready for `prefect.serve`."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from prefect.flows import load_flow_from_entrypoint

    out = []
    here = os.getcwd()
    os.chdir(ROOT)  # Prefect takes the entrypoint relative to the working folder: the project's
    try:
        for item in load_definitions(path):
            out.append(_to_deployment(load_flow_from_entrypoint(item["entrypoint"]), item))
    finally:
        os.chdir(here)
    return out


def _to_deployment(flow: Any, item: dict[str, Any]) -> Any:
    return flow.to_deployment(
        name=item["name"],
        description=item.get("description"),
        tags=item.get("tags"),
        version=item.get("version"),
        parameters=item.get("parameters") or {},
        schedules=[make_schedule(s) for s in item.get("schedules") or []],
        concurrency_limit=concurrency_of(item),
        paused=item.get("paused"),
    )


async def work_pool_twins(deployments: list[Any]) -> list[tuple[str, str]]:
    """(name, work pool) of the deployments on the server that have these names and run on a work pool."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found = []
    async with get_client() as client:
        for d in deployments:
            try:
                existing = await client.read_deployment_by_name(f"{d.flow_name}/{d.name}")
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                found.append((f"{d.flow_name}/{d.name}", existing.work_pool_name))
    return found


async def delete_deployments(names: list[str]) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for name in names:
            existing = await client.read_deployment_by_name(name)
            await client.delete_deployment(existing.id)


def main(argv: list[str] | None = None) -> int:
    from flows.console import safe_output

    safe_output()  # no UnicodeEncodeError on a cp1252 console or pipe (flows.console)
    os.environ.setdefault("PYTHONUTF8", "1")  # and UTF-8 output for the flow runs it starts (child processes)
    parser = argparse.ArgumentParser(prog="python deployments/serve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the deployments and exit")
    parser.add_argument("--replace", action="store_true",
                        help="delete work-pool deployments of the same names first (from `prefect deploy`)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the cases' paths in prefect.yaml are relative to the project folder
    deployments = build_deployments()
    if args.list:
        for d in deployments:
            when = ", ".join(f"{getattr(s.schedule, 'cron', s.schedule)} {getattr(s.schedule, 'timezone', '')}"
                             f"{'' if s.active else ' (off)'}" for s in d.schedules) or "no schedule"
            print(f"{d.name}: {d.parameters.get('spec') or d.parameters.get('suite') or d.entrypoint} - {when}")
        return 0

    import asyncio

    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("No Prefect server configured (PREFECT_API_URL): start one with `prefect server start` and run "
              "setenv.bat / setenv.ps1 / `. ./setenv.sh` in this terminal first.", file=sys.stderr)
        return 2
    twins = asyncio.run(work_pool_twins(deployments))
    if twins and not args.replace:
        listed = "\n".join(f"  {name} (work pool {pool})" for name, pool in twins)
        print(f"The server already has these deployments on a work pool (from `prefect deploy`):\n{listed}\n"
              "Serving them from here needs them deleted first: run again with --replace (their past runs "
              "stay), or run them with a worker of their pool instead (prefect worker start --pool POOL).",
              file=sys.stderr)
        return 2
    if twins:
        asyncio.run(delete_deployments([name for name, _ in twins]))
        print(f"Deleted {len(twins)} work-pool deployment(s) of the same names.")
    from prefect import serve

    serve(*deployments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
