"""Secrets in templates: ``{{ secret("name-or-arn") }}`` (AWS Secrets Manager; ``key="password"`` for one field of a
JSON secret) and ``{{ ssm("/path") }}`` (an SSM parameter, a SecureString decrypted).

* **Shape only at validation.** The arguments must be literal strings (:func:`call_problems`), so what a case reads
  is known from the spec alone: ``--validate`` and ``--plan`` make no AWS call (the functions render a
  placeholder there, :func:`placeholders`), and the plan and the IAM policy name each secret and parameter read
  (:func:`reads_footprint`: ``secretsmanager:GetSecretValue``, ``ssm:GetParameter``, ``kms:Decrypt``).
* **Read once per run, before the first step.** The run's :class:`SecretReader` (made by the flow, kept with the
  run's variables, never in module state) reads every secret and parameter the case names (``case_reads`` in
  flows/spec/load.py) before anything renders, and renders from its cache; a template file whose path is itself
  templated is read as it renders.
* **Secret at the source.** Each value is added to the run's ``Secrets`` registry as it is read, before any
  template sees it: masked in every log line, artifact, pack file, notice and exception text from then on
  (fingerprinted with the keyed HMAC when ``PIPELINE_TEST_MASK_KEY`` is set). Values are never flow parameters.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

from jinja2 import nodes

from tasks.kit.errors import AWS_ERRORS, StepError, aws_error
from tasks.kit.iam import Arns, Footprint
from tasks.kit.secrets import MIN_SECRET_CHARS, Secrets, mask, redact

if TYPE_CHECKING:
    from tasks.kit.aws import ClientFactory

#: the template functions, as the spec reference lists them with the built-in variables
FUNCTIONS = {
    "secret": "A function: a secret from AWS Secrets Manager by name or ARN, `{{ secret(\"prod/db\") }}`, or one "
              "field of a JSON secret, `{{ secret(\"prod/db\", key=\"password\") }}`. Literal strings only; read "
              "once per run, before the first step; masked everywhere.",
    "ssm": "A function: an SSM parameter's value, a SecureString decrypted, `{{ ssm(\"/team/api-token\") }}`. "
           "Literal strings only; read once per run, before the first step; masked everywhere.",
}
#: what the functions render where no AWS call may be made (validation, the plan)
PLACEHOLDER = "secret-placeholder"
#: an exception's text is searched for every value read of at least this many characters
SCRUB_MIN_CHARS = 4

Function = Literal["secret", "ssm"]


class TemplateSecretError(StepError):
    """A secret or parameter a template names could not be read (the run did not start)."""


@dataclass(frozen=True)
class Read:
    """One secret or parameter a template reads: ``secret("name", key=...)`` or ``ssm("/path")``."""

    function: Function
    name: str
    key: str | None = None

    def text(self) -> str:
        return f'{self.function}("{self.name}"' + (f', key="{self.key}")' if self.key is not None else ")")


# ------------------------------------------------------------------------------------------------- the shape
def _calls(ast: nodes.Template) -> Iterator[tuple[nodes.Call | None, nodes.Name]]:
    """Every use of ``secret``/``ssm`` in a parsed template: (the call, or None when the name is not called)."""
    called = {id(call.node): call for call in ast.find_all(nodes.Call) if isinstance(call.node, nodes.Name)}
    for name in ast.find_all(nodes.Name):
        if name.name in FUNCTIONS and name.ctx == "load":
            yield called.get(id(name)), name


def _literal(node: nodes.Expr) -> str | None:
    return node.value if isinstance(node, nodes.Const) and isinstance(node.value, str) else None


def _read(call: nodes.Call, function: str) -> Read | str:
    """The read a call makes, or what is wrong with its shape."""
    usage = ('secret("name-or-arn") or secret("name", key="field")' if function == "secret"
             else 'ssm("/parameter/name")')
    if call.dyn_args is not None or call.dyn_kwargs is not None or len(call.args) != 1:
        return f"{function}() takes one literal string: {usage}"
    name = _literal(call.args[0])
    if not name or not name.strip():
        return f"{function}()'s argument must be a literal, non-empty string (no variables, no expressions): {usage}"
    key = None
    for kw in call.kwargs:
        if function != "secret" or kw.key != "key":
            return f"{function}() takes no argument {kw.key!r}: {usage}"
        key = _literal(kw.value)
        if key is None:
            return f"secret()'s key must be a literal string: {usage}"
    return Read("secret" if function == "secret" else "ssm", name, key)


def call_problems(ast: nodes.Template) -> list[str]:
    """What is wrong with the ``secret()``/``ssm()`` calls of a parsed template (the shape only: no AWS call)."""
    problems = []
    for call, name in _calls(ast):
        if call is None:
            problems.append(f"{name.name} is a function: call it with a literal string, e.g. "
                            f"{name.name}(\"{'/team/token' if name.name == 'ssm' else 'prod/db'}\")")
            continue
        found = _read(call, name.name)
        if isinstance(found, str):
            problems.append(found)
    return problems


def reads_in(ast: nodes.Template) -> list[Read]:
    """The reads of a parsed template whose calls have the right shape."""
    return [r for call, name in _calls(ast) if call is not None and isinstance(r := _read(call, name.name), Read)]


def template_texts(value: Any) -> Iterator[str]:
    """Every string in a value (nested dicts and lists), where a template may be."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from template_texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from template_texts(item)


def may_call(text: str) -> bool:
    """Whether a text may call a template function at all (cheap, before parsing)."""
    return ("{{" in text or "{%" in text) and any(f in text for f in FUNCTIONS)


def reads_footprint(reads: list[Read], arns: Arns) -> Footprint:
    """What the reads touch and need: ``secretsmanager:GetSecretValue`` on each secret (a name's ARN ends in
    Secrets Manager's 6 random characters: ``-??????``), ``ssm:GetParameter`` on each parameter, and
    ``kms:Decrypt`` through the service that decrypts (a SecureString, a secret under a customer key)."""
    fp = Footprint()
    via: set[str] = set()
    for read in reads:
        if read.function == "secret":
            arn = read.name if read.name.startswith("arn:") else arns.arn("secretsmanager",
                                                                         f"secret:{read.name}-??????")
            fp.read("Secrets Manager secret", read.name, "read by a template" + (f" (key {read.key})" if read.key
                                                                                 else ""))
            fp.need(arn, "secretsmanager:GetSecretValue")
            via.add("secretsmanager")
        else:
            fp.read("SSM parameter", read.name, "read by a template (a SecureString decrypted)")
            fp.need(arns.ssm_parameter(read.name), "ssm:GetParameter")
            via.add("ssm")
    for service in sorted(via):
        fp.need_kms(arns, service, "kms:Decrypt")
    return fp


# -------------------------------------------------------------------------------------------- the functions
def placeholders() -> dict[str, Callable[..., str]]:
    """The functions where no AWS call may be made (validation, the plan): each renders :data:`PLACEHOLDER`."""

    def secret(name: str, key: str | None = None) -> str:
        return PLACEHOLDER

    def ssm(name: str) -> str:
        return PLACEHOLDER

    return {"secret": secret, "ssm": ssm}


class SecretReader:
    """One run's reads: each secret or parameter read once, added to the run's registry as it is read."""

    def __init__(self, clients: Callable[[], ClientFactory], secrets: Secrets) -> None:
        self._clients = clients
        self._secrets = secrets
        self._lock = threading.Lock()
        self._cache: dict[Read, str] = {}

    def read(self, read: Read) -> str:
        with self._lock:  # templates of parallel steps (their files) may render at once: one read each
            if read not in self._cache:
                self._cache[read] = self._fetch(read)
            return self._cache[read]

    def read_all(self, reads: list[Read]) -> None:
        """Read what the case names, before anything renders (a failure: TemplateSecretError, nothing changed)."""
        for read in reads:
            self.read(read)

    def warnings(self) -> list[str]:
        """A warning per value read that is too short for the net to search texts for (see tasks.kit.secrets)."""
        with self._lock:
            short = [r.text() for r, v in self._cache.items() if len(v) < MIN_SECRET_CHARS]
        return [f"{text} in a template: the value is shorter than {MIN_SECRET_CHARS} characters: it is masked where "
                "it is known to be secret, but not searched for in messages and log tails (it would mask ordinary "
                "words); use a longer value" for text in short]

    def _fetch(self, read: Read) -> str:
        clients = self._clients()
        try:
            if read.function == "ssm":
                response = clients.client("ssm").get_parameter(Name=read.name, WithDecryption=True)
                value = str(response["Parameter"].get("Value", ""))
                self._secrets.add(value)
                return value
            answer = clients.client("secretsmanager").get_secret_value(SecretId=read.name)
        except AWS_ERRORS as exc:
            action = "SSM GetParameter" if read.function == "ssm" else "Secrets Manager GetSecretValue"
            error = aws_error(action, read.name, exc)
            raise TemplateSecretError(f"{read.text()} in a template: {error.message}", code=error.code) from None
        if "SecretString" not in answer:
            raise TemplateSecretError(f"{read.text()} in a template: the secret is binary (SecretBinary); only "
                                      "text secrets can be used in templates")
        whole = str(answer["SecretString"])
        self._secrets.add(whole)
        if read.key is None:
            return whole
        try:
            document = json.loads(whole)
        except ValueError:
            document = None
        if not isinstance(document, dict) or read.key not in document:
            what = (f"has no key {read.key!r} (its keys: {', '.join(map(repr, document))})"
                    if isinstance(document, dict) else f"is not a JSON object, so it has no key {read.key!r}")
            raise TemplateSecretError(f"{read.text()} in a template: the secret {what}")
        field = document[read.key]
        value = field if isinstance(field, str) else json.dumps(field)
        self._secrets.add(value)
        return value

    def functions(self) -> dict[str, Callable[..., str]]:
        """``secret`` and ``ssm`` for the run's templates: plain functions (a template reaches nothing else)."""

        def secret(name: str, key: str | None = None) -> str:
            return self.read(Read("secret", name, key))

        def ssm(name: str) -> str:
            return self.read(Read("ssm", name))

        return {"secret": secret, "ssm": ssm}

    def scrub(self, text: str) -> str:
        """A message (an exception's text) with every value read so far masked, also those too short for the net
        (from :data:`SCRUB_MIN_CHARS` characters: a shorter one would mask letters of ordinary words)."""
        with self._lock:
            values = sorted(set(self._cache.values()), key=len, reverse=True)
        for value in values:
            if len(value) >= SCRUB_MIN_CHARS:
                text = text.replace(value, mask(value))
        return redact(text, values)
