"""A pytest plugin that records every AWS call the project's code makes, for the IAM contract test.

Loaded with ``-p tests.iam_calls`` (by ``tests/test_iam_contract.py``, which runs the step kinds' own moto tests in a
child pytest). Every botocore client made in the process gets a ``before-call`` handler on its event system
(``client.meta.events``): the call's service and operation are written, one JSON line each, to the file named by
``PIPELINE_TEST_IAM_CALLS``, with who made it, found on the call's stack:

* ``kind``: the step kind whose runner is on the stack (a registered runner's code object), with the actions its
  footprint declares for *that* step (``tasks.kit.step.footprint(step)``, the runner's ``step`` argument);
* else ``family``: the service module of the innermost ``tasks.*`` frame (``ssm`` for ``tasks.ssm_restore``: an undo
  that runs after its step), ``run`` for the journal and ``flows.*`` (audit, recover, the evidence upload; also when
  a runner is further out: the journal written before a change), or ``s3`` for calls from s3transfer's own threads
  (a multipart upload's parts);
* a call whose innermost project frame is a test's (seeding moto, or playing the pipeline from a fake clock's
  ``on_sleep``) or the demo's fake pipeline is the world's, not the kind's, and is not written.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from types import CodeType, FrameType
from typing import Any

import botocore.session

ENV = "PIPELINE_TEST_IAM_CALLS"
#: service modules that serve the kinds of another module
ALIASES = {"ssm_restore": "ssm"}

_lock = threading.Lock()
_runners: dict[CodeType, str] = {}


def family(module: str) -> str | None:
    """``tasks.ssm_restore`` -> ``ssm``; ``tasks.athena.client`` -> ``athena``; ``tasks.s3.upload`` -> ``s3``;
    ``tasks.kit.journal`` -> ``run``; the rest of the kit: none."""
    if module == "flows.run.preflight":  # its probes are chosen among the case's needs (test_iam_contract)
        return "preflight"
    if module.startswith("flows."):
        return "run"
    if not module.startswith("tasks."):
        return None
    if module.startswith("tasks.kit."):  # the kit makes no call of a kind's own, except the undo journal's
        return "run" if module == "tasks.kit.journal" else None
    name = module.split(".")[1]
    return ALIASES.get(name, name)


def is_test_side(module: str) -> bool:
    """Code that plays the world around the kinds: the tests themselves and the demo's fake pipeline."""
    return (module.startswith(("tests.", "test_", "conftest", "flows.demo", "flows.emulator"))
            or module in ("__main__",))


def _runner_codes() -> dict[CodeType, str]:
    if not _runners:
        import flows.spec.model  # noqa: F401  (fills the registry)
        from tasks.kit.step import REGISTRY

        _runners.update({kind.run.__code__: name for name, kind in REGISTRY.items()})
    return _runners


def who(frame: FrameType | None) -> dict[str, Any] | None:
    """Who made the call whose stack starts at ``frame`` (see the module's doc); None: the test's own call."""
    runners = _runner_codes()
    runner: dict[str, Any] | None = None
    innermost: str | None = None  # the family of the innermost frame of the project's code
    decided = False
    transfer = False
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not decided and is_test_side(module):
            return None
        if not decided and family(module) is not None:
            innermost, decided = family(module), True
        if frame.f_code in runners:
            runner = {"kind": runners[frame.f_code], "step": frame.f_locals.get("step")}  # the outermost wins
        transfer = transfer or module.startswith("s3transfer")
        frame = frame.f_back
    if innermost == "run":
        return {"family": "run"}
    if runner is not None:
        return runner
    if innermost is not None:
        return {"family": innermost}
    if transfer:
        return {"family": "s3"}
    return None


def _declared(step: Any) -> list[str]:
    from tasks.kit.step import footprint

    try:
        return sorted({need.action for need in footprint(step).needs})
    except Exception as exc:  # a kind without a footprint: the contract test reports it
        return [f"<no footprint: {exc}>"]


def _record(path: str, test: list[str]) -> Any:
    def before_call(model: Any, **kwargs: Any) -> None:
        caller = who(sys._getframe(1))
        if caller is None:
            return
        entry: dict[str, Any] = {"service": model.service_model.service_name, "operation": model.name,
                                 "test": test[0] if test else ""}
        if "kind" in caller:
            entry["kind"] = caller["kind"]
            entry["declared"] = _declared(caller["step"]) if caller["step"] is not None else []
        else:
            entry["family"] = caller["family"]
        with _lock, open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")

    return before_call


_current: list[str] = []


def pytest_configure(config: Any) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    handler = _record(path, _current)
    create = botocore.session.Session.create_client

    def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = create(self, *args, **kwargs)
        client.meta.events.register("before-call.*.*", handler)
        return client

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]


def pytest_runtest_setup(item: Any) -> None:
    _current[:] = [item.nodeid]
