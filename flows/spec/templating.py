"""Variables and templates: ``{{ name }}`` in keys, payloads and SQL, rendered with Jinja2 in a sandbox.

Built-in variables describe the run (its date in the case's time zone, the flow run id, the case name); user
variables come from the spec and ``--var``. A name that is neither is an error before the run starts.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError

from flows.spec.template_sandbox import (
    BUDGET_KEY,
    MAX_TAG_CHARS,
    MAX_TEMPLATE,
    MAX_TEMPLATE_TAGS,
    MAX_TEXT,
    RENDER_SECONDS,
    BoundedEnvironment,
    Budget,
    TemplateLimit,
)
from flows.spec.template_secrets import FUNCTIONS, call_problems, placeholders

BUILTINS: dict[str, str] = {
    "case_name": "The case's name.",
    "flow_run_id": "The Prefect flow run id (a UUID).",
    "run_date": "The run's start date, YYYY-MM-DD, in the case's time zone.",
    "run_time": "The run's start time, HHMMSS, in the case's time zone.",
    "run_timestamp": "The run's start as YYYYMMDDTHHMMSS, in the case's time zone (handy in keys).",
    "run_at": "The run's start as a datetime in the case's time zone: {{ run_at.strftime('%Y/%m/%d') }}.",
    **FUNCTIONS,  # secret() and ssm(): flows.spec.template_secrets
}

_env = BoundedEnvironment()
#: how much of a template an error message quotes
SHOWN_TEMPLATE_CHARS = 200
_TAG = re.compile(r"\{\{.*?(?:\}\}|$)|\{%.*?(?:%\}|$)", re.DOTALL)


class TemplateError(ValueError):
    """A template that does not parse, names an unknown variable, or fails to render."""


def shown(text: str) -> str:
    """A template as error messages quote it: cut to a readable length."""
    if len(text) <= SHOWN_TEMPLATE_CHARS:
        return repr(text)
    return f"{text[:SHOWN_TEMPLATE_CHARS]!r}… ({len(text):,} characters)"


def _check_size(text: str) -> None:
    if not is_templated(text):
        return
    if len(text) > MAX_TEMPLATE:
        raise TemplateError(f"a template of {len(text):,} characters is longer than the limit of "
                            f"{MAX_TEMPLATE:,}: {shown(text)}")
    tags = _TAG.findall(text)
    if len(tags) > MAX_TEMPLATE_TAGS or sum(map(len, tags)) > MAX_TAG_CHARS:
        raise TemplateError(f"a template with {len(tags):,} tags ({{{{ }}}} or {{% %}}) of {sum(map(len, tags)):,} "
                            f"characters is over the limit of {MAX_TEMPLATE_TAGS:,} tags and {MAX_TAG_CHARS:,} "
                            f"characters in tags: {shown(text)}")


def is_templated(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


def variables_in(text: str) -> set[str]:
    """The variable names a template uses."""
    _check_size(text)
    try:
        ast = _env.parse(text)
        problems = call_problems(ast)
        if problems:
            raise TemplateError(f"{'; '.join(problems)}, in {shown(text)}")
        return set(meta.find_undeclared_variables(ast))
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message} in {shown(text)}") from None
    except (RecursionError, MemoryError):
        raise TemplateError(f"template nested too deeply: {shown(text)}") from None


def functions_called(text: str) -> set[str]:
    """The names of the functions a template calls by name (``range``, a global such as ``secret``, a macro)."""
    _check_size(text)
    try:
        return {call.node.name for call in _env.parse(text).find_all(nodes.Call) if isinstance(call.node, nodes.Name)}
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message} in {shown(text)}") from None
    except (RecursionError, MemoryError):
        raise TemplateError(f"template nested too deeply: {shown(text)}") from None


def check_template(text: str, known: set[str]) -> None:
    """Raise if the template does not parse or uses a variable that is not in ``known``."""
    unknown = sorted(variables_in(text) - known)
    if unknown:
        raise TemplateError(
            f"unknown variable{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {shown(text)} "
            f"(known: {', '.join(sorted(known))})"
        )


def render(text: str, values: dict[str, Any], deadline: float | None = None) -> str:
    """Render one template; plain strings without ``{{``/``{%`` are returned as they are.

    Bounded (see flows/spec/template_sandbox.py): the result is at most MAX_TEXT characters, and the rendering stops at
    ``deadline`` (a ``time.monotonic()`` value) or after RENDER_SECONDS, whichever comes first.
    """
    if "{{" not in text and "{%" not in text:
        return text
    _check_size(text)
    limit = time.monotonic() + RENDER_SECONDS
    budget = Budget(limit if deadline is None else min(deadline, limit))
    try:
        parts: list[str] = []
        size = 0
        for part in _env.from_string(text).generate({**values, BUDGET_KEY: budget}):
            size += len(part)
            if size > MAX_TEXT:
                raise TemplateLimit(f"the rendered text would be more than {MAX_TEXT:,} characters")
            parts.append(part)
        budget.check_time()
        return "".join(parts)
    except TemplateLimit as exc:
        raise TemplateError(f"cannot render {shown(text)}: refused: {exc}") from None
    except (UndefinedError, SecurityError, TemplateSyntaxError) as exc:
        raise TemplateError(f"cannot render {shown(text)}: {exc}") from None
    except (RecursionError, MemoryError):
        raise TemplateError(f"cannot render {shown(text)}: the template nests or recurses too deeply") from None
    except Exception as exc:  # an expression that fails, e.g. a bad strftime or index
        raise TemplateError(f"cannot render {shown(text)}: {type(exc).__name__}: {exc}") from None


def builtin_values(case_name: str, flow_run_id: str, started: datetime, timezone: str) -> dict[str, Any]:
    """The built-in variables for a run that started at ``started`` (any tz-aware time)."""
    local = started.astimezone(ZoneInfo(timezone))
    return {
        "case_name": case_name,
        "flow_run_id": flow_run_id,
        "run_date": local.strftime("%Y-%m-%d"),
        "run_time": local.strftime("%H%M%S"),
        "run_timestamp": local.strftime("%Y%m%dT%H%M%S"),
        "run_at": local,
        **placeholders(),  # no AWS call here: a run puts its SecretReader's functions in their place
    }


def resolve_variables(user: dict[str, Any], builtins: dict[str, Any],
                      deadline: float | None = None) -> dict[str, Any]:
    """All variables: built-ins, then user variables in order; a user value may use built-ins and earlier ones."""
    values = dict(builtins)
    for name, value in user.items():
        values[name] = render(value, values, deadline) if isinstance(value, str) else value
    return values
