"""Slack notices of a case's result, sent through prefect-slack.

A case says where and when in its spec::

    notify:
      slack_webhook_block: data-tests-slack     # a saved prefect-slack "Slack Incoming Webhook" block
      when: [failure]                           # the default; [failure, success] for every run

or, with a Slack app's bot token instead of a webhook::

    notify:
      slack_credentials_block: data-tests-bot   # a saved prefect-slack "Slack Credentials" block
      channel: "#data-tests"

The message names the case, says PASSED or FAILED, lists each step's status, gives the failing step's error,
and links to the flow run in the Prefect UI. Sending never changes the case's result: any Slack problem (a
missing block, a refused connection, an HTTP error) is logged as a warning and swallowed. The webhook URL
and the token never appear in a log line or an artifact: they stay in their blocks, and error texts are
scrubbed of them before they are logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
from typing import Any, Callable, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.evidence.report import Notice
from flows.evidence.results import CaseResult, StepResult, plural
from tasks.kit.markdown import slack_code, slack_code_block, slack_link, slack_text
from tasks.kit.polling import wait_done
from tasks.kit.status import STATUS

#: seconds to wait for Slack before giving up (the run waits this long at most)
TIMEOUT_S = 10
#: Slack shows at most this many characters of a message's text; errors are cut well before that
MAX_ERROR_CHARS = 1500
#: how many warnings the notice lists (each cut at 300 characters)
MAX_WARNINGS_LISTED = 5
MAX_STEPS_LISTED = 40

When = Literal["failure", "success", "warning"]


def _on_failure() -> list[When]:
    return ["failure"]


class NotifySettings(BaseModel):
    """Slack notices of the case's result: where to send them (a webhook block, or credentials and a
    channel) and when (on failure by default)."""

    # `when`, not `on`: YAML reads a bare `on` key as the boolean true
    model_config = ConfigDict(extra="forbid")

    slack_webhook_block: str | None = Field(
        None, description="Name of a saved prefect-slack SlackWebhook block (\"Slack Incoming Webhook\"; the "
        "webhook URL stays in the block).")
    slack_credentials_block: str | None = Field(
        None, description="Name of a saved prefect-slack SlackCredentials block (a Slack app's bot token), "
        "instead of a webhook; needs channel.")
    channel: str | None = Field(
        None, description="Channel to post in with slack_credentials_block, e.g. #data-tests (a webhook "
        "posts to its own channel).")
    when: list[When] = Field(
        default_factory=_on_failure, min_length=1,
        description="When to send a notice: failure (the default), success (every passed run), warning (a "
        "passed run with warnings: checks with `severity: warn` that did not hold); any of them together.")

    @model_validator(mode="after")
    def _one_target(self) -> "NotifySettings":
        if bool(self.slack_webhook_block) == bool(self.slack_credentials_block):
            raise ValueError("name exactly one of slack_webhook_block and slack_credentials_block")
        if self.slack_credentials_block and not self.channel:
            raise ValueError("slack_credentials_block needs a channel (e.g. '#data-tests')")
        if self.slack_webhook_block and self.channel:
            raise ValueError("channel applies only with slack_credentials_block (a webhook posts to its own "
                             "channel)")
        self.when = list(dict.fromkeys(self.when))
        return self

    def wants(self, result: CaseResult) -> bool:
        """Whether this result calls for a notice."""
        if not result.passed:
            return "failure" in self.when
        return "success" in self.when or (result.warnings > 0 and "warning" in self.when)


# ------------------------------------------------------------------------------------------- the message
def run_url(result: CaseResult, ui_url: str | None = None) -> str | None:
    """The flow run's page in the Prefect UI: ``ui_url`` if given, else the result's, else built from
    PREFECT_UI_URL (which Prefect derives from PREFECT_API_URL) and the flow run id."""
    for url in (ui_url, result.ui_url):
        if url and url.startswith(("http://", "https://")):
            return url
    if not result.flow_run_id or not re.fullmatch(r"[0-9a-fA-F-]{36}", result.flow_run_id):
        return None
    try:
        from prefect.settings import PREFECT_UI_URL

        base = PREFECT_UI_URL.value()
    except Exception:
        return None
    if not base or not str(base).startswith(("http://", "https://")):
        return None
    return f"{str(base).rstrip('/')}/runs/flow-run/{result.flow_run_id}"


def _step_line(step: StepResult) -> str:
    icon = STATUS[step.status].slack
    where = f" (in {slack_text(step.group)})" if step.group else ""
    return (f"{icon} {slack_code(step.number)} {slack_text(step.label)} · {slack_text(step.kind)}{where} · "
            f"{step.status} · {step.duration_s:.1f} s")


#: how many of the case's variables the notice names (run_date first)
MAX_VARIABLES = 8


def _context_lines(result: CaseResult) -> list[str]:
    """The deployment (if any), the case's key variables (already masked) and where the evidence pack is."""
    lines = []
    deployment = result.audit.deployment if result.audit is not None else None
    if deployment:
        pool = result.audit.work_pool if result.audit is not None else None
        lines.append(f"Deployment {slack_code(deployment)}" + (f" (work pool {slack_code(pool)})" if pool else ""))
    shown = [f"{slack_code(k)}={slack_code(v)}" for k, v in list(result.variables.items())[:MAX_VARIABLES]]
    if shown:
        more = len(result.variables) - MAX_VARIABLES
        lines.append("Variables: " + ", ".join(shown) + (f" and {more} more" if more > 0 else ""))
    pack = result.pack
    if pack is not None and pack.s3_uri:
        lines.append(f"Evidence pack: {slack_code(pack.s3_uri)}")
    elif pack is not None and pack.folder:
        lines.append(f"Evidence pack: {slack_code(pack.folder)} (on the host that ran the case)")
    return lines


def build_message(result: CaseResult, ui_url: str | None = None) -> str:
    """The notice's text (Slack mrkdwn): verdict, steps, the failing step's error, the link to the run. Every
    value is escaped by :mod:`tasks.kit.markdown` (its ``slack_*`` builders): only this template formats."""
    look = STATUS["failed" if not result.passed else "warned" if result.warnings else "passed"]
    lines = [f"{look.slack} *pipeline-test: case '{slack_text(result.case)}' {result.verdict}* in "
             f"{result.duration_s:.1f} s"]
    run_date = result.variables.get("run_date")
    if run_date:
        lines.append(f"Run date {slack_text(run_date)}")
    lines.append("")
    for step in result.steps[:MAX_STEPS_LISTED]:
        lines.append(_step_line(step))
    if len(result.steps) > MAX_STEPS_LISTED:
        lines.append(f"… and {len(result.steps) - MAX_STEPS_LISTED} more step(s)")
    warned = [(s, w) for s in result.steps for w in s.warnings]
    if warned:
        lines += ["", f"*{slack_text(plural(len(warned), 'warning'))}:*"]
        lines += [f":warning: {slack_code(s.number)} {slack_text(w[:300])}" for s, w in warned[:MAX_WARNINGS_LISTED]]
        if len(warned) > MAX_WARNINGS_LISTED:
            lines.append(f"… and {len(warned) - MAX_WARNINGS_LISTED} more warning(s)")
    failure = result.first_failure
    if failure is not None:
        error = failure.error or "(no error message)"
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + " …"
        code = f" [{slack_text(failure.error_code)}]" if failure.error_code else ""
        at = "Error at step" if failure.status == "error" else "Failed at step"
        lines += ["", f"*{at} {slack_text(failure.number)} '{slack_text(failure.label)}'*{code}:",
                  slack_code_block(error)]
    context = _context_lines(result)
    if context:
        lines += [""] + context
    link = run_url(result, ui_url)
    lines.append("")
    if link:
        lines.append(f"{slack_link('Open the flow run in Prefect', link)} (logs and evidence in its Artifacts tab)")
    else:
        lines.append(f"Flow run {slack_text(result.flow_run_id or '?')} (no Prefect UI URL: set PREFECT_API_URL or "
                     "PREFECT_UI_URL to link to it)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- sending
class NoticeError(Exception):
    """Slack did not take the notice (its text is already free of secrets)."""


def _redact(text: str, secrets: list[str]) -> str:
    for secret in sorted((s for s in secrets if s and len(s) >= 6), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _secret_parts(url: str) -> list[str]:
    """The URL and the parts of it that identify the webhook (its path is the secret)."""
    parts = [url]
    try:
        split = urlsplit(url)
        if split.path and split.path != "/":
            parts.append(split.path)
            parts.append(split.path.lstrip("/"))
    except ValueError:
        pass
    return parts


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:
        return logging.getLogger("pipeline_test.notify")


def _run_async(make: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code, whether or not an event loop runs in this thread (in
    a sync flow a bare call to an async API returns a coroutine that is never awaited: this awaits it)."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slack-notice")
    try:
        future = pool.submit(lambda: asyncio.run(make()))
        wait_done(future, 2 * TIMEOUT_S + 5)  # in slices: a signal's handler runs meanwhile (tasks.kit.polling)
        return future.result(timeout=0)
    finally:
        pool.shutdown(wait=False)  # on a timeout, do not wait for Slack any longer


#: slack_sdk logs requests with their URL (at DEBUG, and at INFO when it retries): its clients log here instead
_SLACK_SDK_LOG = logging.getLogger("pipeline_test.notify.slack_sdk")


def _silent_slack_log() -> logging.Logger:
    """The logger slack_sdk's clients get: silenced (when first used, not on import)."""
    _SLACK_SDK_LOG.setLevel(logging.CRITICAL + 1)
    _SLACK_SDK_LOG.propagate = False
    return _SLACK_SDK_LOG


class _QuietSlackSdk:
    """Silence slack_sdk's own loggers while sending (the clients also get the silent logger above)."""

    def __enter__(self) -> None:
        self.saved = {}
        for name in ("slack_sdk", "slack"):
            log = logging.getLogger(name)
            self.saved[name] = log.level
            log.setLevel(logging.CRITICAL + 1)

    def __exit__(self, *exc: Any) -> None:
        for name, level in self.saved.items():
            logging.getLogger(name).setLevel(level)


def _send_webhook(block_name: str, text: str, secrets: list[str]) -> str:
    from prefect_slack import SlackWebhook

    block = SlackWebhook.load(block_name, _sync=True)
    url = block.url.get_secret_value()
    secrets += _secret_parts(url)
    client = block.get_client(sync_client=True)
    client.timeout = TIMEOUT_S
    client.logger = _silent_slack_log()
    response = client.send(text=text)
    if response.status_code >= 400:
        body = _redact(str(response.body or "")[:200], secrets)
        raise NoticeError(f"the webhook answered HTTP {response.status_code} {body}".rstrip())
    return f"webhook block '{block_name}'"


def _send_chat(block_name: str, channel: str, text: str, secrets: list[str]) -> str:
    from prefect_slack import SlackCredentials

    block = SlackCredentials.load(block_name, _sync=True)
    secrets.append(block.token.get_secret_value())

    async def post() -> Any:
        client = block.get_client()
        client.timeout = TIMEOUT_S
        client._logger = _silent_slack_log()  # read-only property `logger` on the async client
        return await client.chat_postMessage(channel=channel, text=text)

    response = _run_async(post)
    if not response.get("ok", False):
        raise NoticeError(f"Slack answered {_redact(str(response.get('error')), secrets)}")
    return f"credentials block '{block_name}', channel {channel}"


def notify(result: CaseResult, settings: NotifySettings | dict[str, Any] | None, *,
           ui_url: str | None = None) -> Notice | None:
    """Send the case's notice to Slack when ``settings`` ask for it, and say what happened (for the run's
    evidence: ``sent``, ``target`` and, when not sent, ``reason``; None without settings). Never raises: a Slack
    problem is logged as a warning (without the webhook URL or the token) and the case's result stands."""
    log = _logger()
    secrets: list[str] = []
    try:
        if settings is None:
            return None
        if not isinstance(settings, NotifySettings):
            settings = NotifySettings.model_validate(settings)
        if not settings.wants(result):
            return Notice(sent=False, reason=f"not asked for: the case {result.status}, notify.when is {settings.when}")
        text = build_message(result, ui_url)
        with _QuietSlackSdk():
            if settings.slack_webhook_block:
                target = _send_webhook(settings.slack_webhook_block, text, secrets)
            else:
                assert settings.slack_credentials_block and settings.channel
                target = _send_chat(settings.slack_credentials_block, settings.channel, text, secrets)
        log.info("Slack notice sent for case %r (%s) through %s", result.case,
                 "passed" if result.passed else "failed", target)
        return Notice(sent=True, target=target)
    except Exception as exc:  # never let Slack change the case's result
        reason = exc if isinstance(exc, NoticeError) else f"{type(exc).__name__}: {exc}"
        log.warning("Slack notice for case %r not sent: %s", result.case, _redact(str(reason), secrets))
        return Notice(sent=False, reason=_redact(str(reason), secrets))
