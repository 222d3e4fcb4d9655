"""Variables and templates: ``{{ name }}`` in keys, payloads and SQL, rendered with Jinja2 in a sandbox.

Built-in variables describe the run (its date in the case's time zone, the flow run id, the case name); user
variables come from the spec and ``--var``. A name that is neither is an error before the run starts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

BUILTINS: dict[str, str] = {
    "case_name": "The case's name.",
    "flow_run_id": "The Prefect flow run id (a UUID).",
    "run_date": "The run's start date, YYYY-MM-DD, in the case's time zone.",
    "run_time": "The run's start time, HHMMSS, in the case's time zone.",
    "run_timestamp": "The run's start as YYYYMMDDTHHMMSS, in the case's time zone (handy in keys).",
    "run_at": "The run's start as a datetime in the case's time zone: {{ run_at.strftime('%Y/%m/%d') }}.",
}

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


class TemplateError(ValueError):
    """A template that does not parse, names an unknown variable, or fails to render."""


def variables_in(text: str) -> set[str]:
    """The variable names a template uses."""
    try:
        return set(meta.find_undeclared_variables(_env.parse(text)))
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message} in {text!r}") from None


def check_template(text: str, known: set[str]) -> None:
    """Raise if the template does not parse or uses a variable that is not in ``known``."""
    unknown = sorted(variables_in(text) - known)
    if unknown:
        raise TemplateError(
            f"unknown variable{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {text!r} "
            f"(known: {', '.join(sorted(known))})"
        )


def render(text: str, values: dict[str, Any]) -> str:
    """Render one template; plain strings without ``{{``/``{%`` are returned as they are."""
    if "{{" not in text and "{%" not in text:
        return text
    try:
        return _env.from_string(text).render(values)
    except (UndefinedError, SecurityError, TemplateSyntaxError) as exc:
        raise TemplateError(f"cannot render {text!r}: {exc}") from None
    except Exception as exc:  # an expression that fails, e.g. a bad strftime or index
        raise TemplateError(f"cannot render {text!r}: {type(exc).__name__}: {exc}") from None


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
    }


def resolve_variables(user: dict[str, Any], builtins: dict[str, Any]) -> dict[str, Any]:
    """All variables: built-ins, then user variables in order; a user value may use built-ins and earlier ones."""
    values = dict(builtins)
    for name, value in user.items():
        values[name] = render(value, values) if isinstance(value, str) else value
    return values
