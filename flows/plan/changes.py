"""``--plan``: what a case or a suite will do in AWS, made from the spec alone (no AWS call, no Prefect server).

Each step is rendered with the case's variables and its kind's *footprint* (:mod:`tasks.kit.iam`, declared next to
its runner) says what it changes, reads and what the undo puts back; the step's ``resources()`` are the locks the
run takes. What the run itself needs besides its steps (the undo journal, the audit's STS call, the evidence upload)
is added here (:func:`run_footprint`).

**Built-ins at plan time.** ``run_date``, ``flow_run_id`` and the other built-ins are known only when the run
starts. The case is rendered twice, with two runs far apart (:data:`PLAN_RUNS`): what differs between the two
renderings varies from run to run. The plan shows such parts as placeholders (``<run_date>``, ``<flow_run_id>``,
``<run_time>``, ``<run_timestamp>``) or, where a template formats them otherwise, as ``*``; the IAM policy
(:mod:`flows.plan.iam_policy`) turns them into ``*`` in its ARNs, so the policy holds for every run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from flows.spec.load import case_reads, render_step
from flows.spec.model import CaseSpec, ParallelGroup, PlacedStep, iter_steps
from flows.spec.template_secrets import reads_footprint
from flows.spec.templating import builtin_values, resolve_variables
from tasks.kit.baseline import baselines_in
from tasks.kit.iam import Arns, Footprint, Need, Touch
from tasks.kit.journal import journal_prefix
from tasks.kit.secrets import redact_json
from tasks.kit.step import footprint

#: the two plan-time runs: (flow run id, start in the case's time zone, as wall-clock fields); every character of
#: a built-in differs between them, so a part of a name that differs is a part that varies per run
PLAN_RUNS = (
    ("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", (1901, 2, 3, 4, 5, 6)),
    ("bbbbbbbb-bbbb-4bbb-9bbb-bbbbbbbbbbbb", (2088, 11, 29, 23, 58, 57)),
)
#: the built-ins shown as placeholders, longest value first when they are replaced
PLACEHOLDERS = ("run_timestamp", "flow_run_id", "run_date", "run_time")
#: how wide the plan's table may be
WIDTH = 120
#: the resource the run's own needs are listed under (not a step)
RUN = "(the run)"


@dataclass(frozen=True)
class Who:
    """Which case and step need an item."""

    case: str
    step: str

    def text(self, with_case: bool) -> str:
        return f"{self.case} › {self.step}" if with_case else self.step


@dataclass
class StepPlan:
    """One step, rendered at plan time: its place, its rendered data (secrets masked) and its footprint."""

    number: str
    label: str
    kind: str
    group: str | None
    rendered: dict[str, Any]
    footprint: Footprint
    locks: list[str]


@dataclass
class CasePlan:
    """A case at plan time: its steps and what the run itself needs."""

    case: str
    source: str
    steps: list[StepPlan]
    run: Footprint
    #: where ARNs point: account and region from the case or the flags (``*`` when unknown)
    arns: Arns
    placeholders: dict[str, str] = field(default_factory=dict)

    @property
    def changes_anything(self) -> bool:
        return any(s.locks for s in self.steps)

    def needs(self) -> list[tuple[Who, Need]]:
        """Every IAM need of the case: each step's, then the run's own."""
        out = [(Who(self.case, s.label), n) for s in self.steps for n in s.footprint.needs]
        return out + [(Who(self.case, RUN), n) for n in self.run.needs]


# ------------------------------------------------------------------------------------------------ rendering
def plan_values(case: CaseSpec, run: int) -> dict[str, Any]:
    """The variables of plan-time run ``run`` (0 or 1)."""
    run_id, wall = PLAN_RUNS[run]
    started = datetime(*wall, tzinfo=ZoneInfo(case.timezone))
    return resolve_variables(case.variables, builtin_values(case.case, run_id, started, case.timezone))


def _placeholder_map(values: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted(((str(values[name]), f"<{name}>") for name in PLACEHOLDERS), key=lambda p: -len(p[0]))


def shown(text: str, values: dict[str, Any]) -> str:
    """A rendered text with the plan-time built-ins' values put back as ``<name>`` placeholders."""
    for value, placeholder in _placeholder_map(values):
        text = text.replace(value, placeholder)
    return text


def merged(a: str, b: str) -> str:
    """Two renderings of one text, with what differs between them as ``*`` (``x/1901-02-03/y`` and
    ``x/2088-11-29/y`` -> ``x/*/y``)."""
    if a == b:
        return a
    prefix = os.path.commonprefix([a, b])
    rest_a, rest_b = a[len(prefix):], b[len(prefix):]
    suffix = os.path.commonprefix([rest_a[::-1], rest_b[::-1]])[::-1]
    return prefix + "*" + suffix


def _display(a: str, b: str, va: dict[str, Any], vb: dict[str, Any]) -> str:
    """What the plan shows of a name rendered twice: placeholders where the built-ins went, else ``*``."""
    sa, sb = shown(a, va), shown(b, vb)
    return sa if sa == sb else merged(sa, sb)


def _pair_touches(a: list[Touch], b: list[Touch], va: dict[str, Any], vb: dict[str, Any]) -> list[Touch]:
    if len(a) != len(b):
        return [Touch(t.access, t.resource_kind, shown(t.name, va), shown(t.detail, va)) for t in a]
    return [Touch(x.access, x.resource_kind, _display(x.name, y.name, va, vb), _display(x.detail, y.detail, va, vb))
            for x, y in zip(a, b)]


def _pair_needs(a: list[Need], b: list[Need]) -> list[Need]:
    """The needs of the two renderings as one list, with what varies per run as ``*`` in the ARNs."""
    if len(a) != len(b) or any(x.action != y.action for x, y in zip(a, b)):
        return list(dict.fromkeys([*a, *b]))
    return [Need(x.action, merged(x.resource, y.resource), x.condition) for x, y in zip(a, b)]


def _step_plan(pa: PlacedStep, pb: PlacedStep, va: dict[str, Any], vb: dict[str, Any], arns: Arns,
               spec_dir: Path) -> StepPlan:
    fa, fb = footprint(pa.step, arns), footprint(pb.step, arns)
    fp = Footprint(_pair_touches(fa.touches, fb.touches, va, vb), _pair_needs(fa.needs, fb.needs),
                   list(dict.fromkeys(shown(n, va) for n in fa.notes)))
    la, lb = pa.step.resources(spec_dir), pb.step.resources(spec_dir)
    locks = [_display(x, y, va, vb) for x, y in zip(la, lb)] if len(la) == len(lb) else [shown(x, va) for x in la]
    data = pa.step.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    rendered = redact_json(json.loads(shown(json.dumps(data), va)), pa.step.secrets(), keep=("name", "kind"))
    return StepPlan(pa.number, pa.label, pa.kind, pa.group, rendered, fp, locks)


def _render(case: CaseSpec, values: dict[str, Any]) -> list[PlacedStep]:
    items: list[Any] = []
    for item in case.steps:
        if isinstance(item, ParallelGroup):
            items.append(item.model_copy(update={"steps": [render_step(s, values) for s in item.steps]}))
        else:
            items.append(render_step(item, values))
    return list(iter_steps(case.model_copy(update={"steps": items})))


def plan_case(case: CaseSpec, spec_dir: Path, source: str, arns: Arns) -> CasePlan:
    """The plan of a validated case (no AWS call)."""
    va, vb = plan_values(case, 0), plan_values(case, 1)
    steps = [_step_plan(pa, pb, va, vb, arns, spec_dir)
             for pa, pb in zip(_render(case, va), _render(case, vb))]
    plan = CasePlan(case.case, source, steps, Footprint(), arns,
                    {f"<{n}>": f"the run's {n.replace('_', ' ')}" for n in PLACEHOLDERS})
    plan.run = run_footprint(case, arns, plan.changes_anything, spec_dir)
    return plan


# ------------------------------------------------------------------------------------------- the run's own
def run_footprint(case: CaseSpec, arns: Arns, changes_anything: bool, spec_dir: Path | None = None) -> Footprint:
    """What a run needs besides its steps: the secrets and parameters its templates read (``secret()``, ``ssm()``),
    the undo journal (when a step changes anything), the audit's STS call, the evidence upload (``evidence:``)."""
    fp = reads_footprint(case_reads(case, spec_dir or Path.cwd()), arns)
    fp.need("*", "sts:GetCallerIdentity")  # the audit: who ran the case (never fatal when refused)
    if case.aws.preflight:  # the preflight (flows.run.preflight) asks IAM to simulate the caller: a user or a role
        for principal in ("user/*", "role/*"):
            fp.need(arns.arn("iam", principal, regional=False), "iam:SimulatePrincipalPolicy")
    if changes_anything:
        prefix = journal_prefix(case.aws.journal_prefix)
        fp.change("SSM parameter path", prefix + "/", "the undo journal: one SecureString entry per change, "
                  "removed once undone")
        for resource in (arns.ssm_parameter(prefix), arns.ssm_parameters_under(prefix)):  # the path, its entries
            fp.need(resource, "ssm:GetParametersByPath", "ssm:PutParameter", "ssm:DeleteParameter")
        fp.need_kms(arns, "ssm", "kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey")
    if case.evidence is not None:
        ev = case.evidence
        fp.change("S3 prefix", f"s3://{ev.bucket}/{ev.prefix}", "the evidence pack (kept, not undone)")
        fp.need(arns.s3_objects(ev.bucket, ev.prefix), "s3:PutObject")
        kms = Arns(arns.account, arns.region, arns.partition, ev.kms_key_id or arns.kms_key_arn)
        if ev.sse.startswith("aws:kms"):
            fp.need_kms(kms, "s3", "kms:GenerateDataKey")
        if any(True for p in iter_steps(case) for _ in baselines_in(p.step)):  # the earlier packs, for baselines
            fp.read("S3 prefix", f"s3://{ev.bucket}/{ev.prefix}", "the case's earlier evidence packs (baselines)")
            fp.need(arns.s3_bucket(ev.bucket), "s3:ListBucket")
            fp.need(arns.s3_objects(ev.bucket, ev.prefix), "s3:GetObject")
            if ev.sse.startswith("aws:kms"):
                fp.need_kms(kms, "s3", "kms:Decrypt")
    return fp


# ------------------------------------------------------------------------------------------------- a suite
@dataclass
class PlanItem:
    """One line of the plan: a resource, what is done to it, and who needs it."""

    access: str
    resource_kind: str
    name: str
    detail: str
    needed_by: list[Who]


@dataclass
class Plan:
    """The plan of one case or a suite's union."""

    title: str
    cases: list[CasePlan]
    suite: bool = False

    def items(self, access: str) -> list[PlanItem]:
        found: dict[tuple[str, str, str], PlanItem] = {}
        for case in self.cases:
            rows = [(Who(case.case, s.label), t) for s in case.steps for t in s.footprint.touches]
            rows += [(Who(case.case, RUN), t) for t in case.run.touches]
            for who, touch in rows:
                if touch.access != access:
                    continue
                key = (touch.resource_kind, touch.name, touch.detail)
                item = found.setdefault(key, PlanItem(access, *key, []))
                if who not in item.needed_by:
                    item.needed_by.append(who)
        return list(found.values())

    def locks(self) -> list[PlanItem]:
        found: dict[str, PlanItem] = {}
        for case in self.cases:
            for step in case.steps:
                for lock in step.locks:
                    item = found.setdefault(lock, PlanItem("lock", "lock", lock, "", []))
                    item.needed_by.append(Who(case.case, step.label))
        return list(found.values())

    def notes(self) -> list[str]:
        return list(dict.fromkeys(n for c in self.cases for s in c.steps for n in s.footprint.notes))

    def to_json(self) -> dict[str, Any]:
        def items(rows: Iterable[PlanItem]) -> list[dict[str, Any]]:
            return [{"resource_kind": i.resource_kind, "name": i.name, "detail": i.detail,
                     "needed_by": [{"case": w.case, "step": w.step} for w in i.needed_by]} for i in rows]

        return {
            "plan": self.title,
            "aws_calls_made": 0,
            "placeholders": self.cases[0].placeholders if self.cases else {},
            "cases": [{"case": c.case, "source": c.source, "steps": [
                {"number": s.number, "label": s.label, "kind": s.kind, "group": s.group, "rendered": s.rendered,
                 "locks": s.locks} for s in c.steps]} for c in self.cases],
            "changes": items(self.items("change")),
            "reads": items(self.items("read")),
            "undo": items(self.items("undo")),
            "locks": items(self.locks()),
            "notes": self.notes(),
        }


# ------------------------------------------------------------------------------------------------ the table
def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width``: broken after a space, ``/`` or ``,`` where one is near the end, else cut."""
    lines: list[str] = []
    text = " ".join(text.split())
    while len(text) > width:
        cut = max(text.rfind(c, 0, width + (c == " ")) for c in " /,-")
        cut = cut + 1 if cut >= width // 2 else width
        lines.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return lines + [text] if text or not lines else lines


def table(headers: list[str], rows: list[list[str]], widths: list[int]) -> list[str]:
    """A plain-text table whose cells wrap within ``widths`` (a last width of 0: what is left of WIDTH)."""
    widths = list(widths)
    if not widths[-1]:
        widths[-1] = max(10, WIDTH - sum(widths[:-1]) - 2 * (len(widths) - 1) - 2)
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
           "  " + "  ".join("-" * w for w in widths)]
    for row in rows:
        cells = [_wrap(c, w) for c, w in zip(row, widths)]
        for i in range(max(len(c) for c in cells)):
            out.append("  " + "  ".join((c[i] if i < len(c) else "").ljust(w) for c, w in zip(cells, widths)).rstrip())
    return out


def format_plan(plan: Plan) -> str:
    lines = [plan.title, "No AWS call was made, and none is needed to make this plan.", ""]
    if plan.cases:
        lines += ["Built-ins are known only when the run starts: shown as " + ", ".join(f"<{n}>" for n in PLACEHOLDERS),
                  "(or * where a template formats them otherwise)."]
    for case in plan.cases:
        lines += ["", f"Steps of '{case.case}' ({case.source}):"]
        lines += table(["#", "step", "kind"], [[s.number, s.label, s.kind] for s in case.steps], [5, 60, 22])
    sections = [("change", "Changes (what the run changes in AWS)"),
                ("undo", "Undo (what is put back when the case ends, also after a crash or a kill)"),
                ("read", "Reads (only read)")]
    who = "needed by (case › step)" if plan.suite else "step"
    for access, heading in sections:
        rows = [[i.resource_kind, i.name, i.detail, ", ".join(w.text(plan.suite) for w in i.needed_by)]
                for i in plan.items(access)]
        lines += ["", f"{heading}:"]
        lines += table(["resource", "name", "what", who], rows, [18, 42, 24, 0]) if rows else ["  (none)"]
    locks = [[i.name, ", ".join(w.text(plan.suite) for w in i.needed_by)] for i in plan.locks()]
    lines += ["", "Locks (held from before the first step until the undo is done; other runs wait):"]
    lines += table(["lock", who], locks, [70, 0]) if locks else ["  (none: the case changes nothing it locks)"]
    notes = plan.notes()
    if notes:
        lines += ["", "Notes:"]
        for note in notes:
            wrapped = _wrap(note, WIDTH - 6)
            lines += [f"  - {wrapped[0]}"] + [f"    {line}" for line in wrapped[1:]]
    return "\n".join(lines)

