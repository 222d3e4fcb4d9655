"""A local AWS emulator (moto's server) on 127.0.0.1, for the demo, the end-to-end tests and the benchmarks.

Nothing here reaches AWS: the emulator listens on a free loopback port and the environment it sets points
every SDK call at it, with fake credentials.

    python -m flows.emulator [--port PORT] [--shell sh|cmd|powershell] [--fail]

runs it on its own, with the demo's fake orders pipeline built on it (see ``flows/demo.py``), until Ctrl+C (or
SIGTERM): it prints the environment that points a terminal (or a worker) at it, so the example cases, the
nightly suite and the example deployments run against it, e.g. ``python -m flows.pipeline_test examples/cases/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import urllib.request
from typing import Any, Iterable, Iterator

from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
#: variables that could send calls to a real account; removed while the emulator is in use
REAL_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


@contextlib.contextmanager
def _lambda_like_aws() -> Iterator[None]:
    """moto's Lambda without Docker answers any function name with 200; real Lambda says
    ResourceNotFoundException for a function that does not exist. Make the emulator do the same while it runs (moto's
    backends are this process's: in-process mocks after it must find moto as moto makes them, so it is put back)."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    if getattr(LambdaSimpleBackend.invoke, "_checks_function", False):  # an emulator of this process already does
        yield
        return
    simple_invoke = LambdaSimpleBackend.invoke

    def invoke(self: Any, function_name: str, qualifier: Any, *args: Any, **kwargs: Any) -> Any:
        self.get_function(function_name, qualifier)  # raises UnknownFunctionException (404) like AWS
        return simple_invoke(self, function_name, qualifier, *args, **kwargs)

    invoke._checks_function = True  # type: ignore[attr-defined]
    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]
    try:
        yield
    finally:
        LambdaSimpleBackend.invoke = simple_invoke  # type: ignore[method-assign]


class SerializedMotoServer(ThreadedMotoServer):
    """moto's threaded server, handling one AWS call at a time. moto's backends are not thread-safe: SSM's
    DescribeParameters iterates the parameters while a concurrent PutParameter adds one ("dictionary changed size
    during iteration": a 500 to the client and a werkzeug traceback in the run's output, seen with two steps side
    by side). Nothing in moto blocks inside a call here (no SQS long polling), so one at a time costs little."""

    def _server_entry(self) -> None:
        app = SimulatePrincipalPolicy(DomainDispatcherApplication(create_backend_app))
        lock = threading.Lock()

        def one_at_a_time(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            with lock:
                return app(environ, start_response)

        self._server = make_server(self._ip_address, self._port, one_at_a_time, True,
                                   request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


class SimulatePrincipalPolicy:
    """A WSGI wrapper around moto's server that answers IAM's ``SimulatePrincipalPolicy`` (moto does not implement
    it) from moto's own policy evaluator: ``moto.iam.access_control.IAMPolicy(document).is_action_permitted`` over
    the principal's inline and attached policies (a user's groups' too), so the preflight's main branch
    (flows.run.preflight) runs end to end here. Identity policies only, as far as moto evaluates them (a ``?`` in a
    policy's resource matches one character). Once moto enforces IAM (``POST /moto-api/reset-auth``), the caller
    must itself be allowed ``iam:SimulatePrincipalPolicy`` on the principal, else AccessDenied. Every other
    request goes to moto unchanged."""

    NS = "https://iam.amazonaws.com/doc/2010-05-08/"

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or "/iam/aws4_request" not in environ.get("HTTP_AUTHORIZATION", ""):
            return self.app(environ, start_response)
        import io
        from urllib.parse import parse_qs

        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        params = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if params.get("Action") != "SimulatePrincipalPolicy":
            return self.app(environ, start_response)
        try:
            status, xml = 200, self._simulate(params, environ)
        except _IamError as exc:
            status, xml = exc.status, (f'<ErrorResponse xmlns="{self.NS}"><Error><Type>Sender</Type><Code>{exc.code}'
                                       f"</Code><Message>{_xml(exc.message)}</Message></Error>"
                                       "<RequestId>pipeline-test-emulator</RequestId></ErrorResponse>")
        start_response(f"{status} {'OK' if status == 200 else 'Error'}", [("Content-Type", "text/xml")])
        return [xml.encode("utf-8")]

    @staticmethod
    def _members(params: dict[str, str], name: str) -> list[str]:
        return [params[k] for k in sorted((k for k in params if re.fullmatch(rf"{name}\.member\.\d+", k)),
                                          key=lambda k: int(k.rsplit(".", 1)[1]))]

    def _simulate(self, params: dict[str, str], environ: dict[str, Any]) -> str:
        from moto.core import DEFAULT_ACCOUNT_ID

        source = params.get("PolicySourceArn", "")
        match = re.fullmatch(r"arn:(aws[a-z-]*):iam::(\d{12}):(user|role)/(?:.*/)?([^/]+)", source)
        if not match:
            raise _IamError("InvalidInput", f"PolicySourceArn {source!r} is not a user's or a role's ARN")
        partition, account, kind, name = match.groups()
        context = {params[k]: params[k.replace("ContextKeyName", "ContextKeyValues.member.1")]
                   for k in params if re.fullmatch(r"ContextEntries\.member\.\d+\.ContextKeyName", k)
                   and k.replace("ContextKeyName", "ContextKeyValues.member.1") in params}
        self._authorize(environ, source, account or DEFAULT_ACCOUNT_ID, partition)
        policies = _principal_policies(account, partition, kind, name)
        members = []
        for action in self._members(params, "ActionNames"):
            for resource in self._members(params, "ResourceArns") or ["*"]:
                decision = _decide(policies, action, resource, context)
                members.append(f"<member><EvalActionName>{_xml(action)}</EvalActionName><EvalResourceName>"
                               f"{_xml(resource)}</EvalResourceName><EvalDecision>{decision}</EvalDecision>"
                               "<MatchedStatements/><MissingContextValues/></member>")
        return (f'<SimulatePrincipalPolicyResponse xmlns="{self.NS}"><SimulatePrincipalPolicyResult>'
                f"<IsTruncated>false</IsTruncated><EvaluationResults>{''.join(members)}</EvaluationResults>"
                "</SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>pipeline-test-emulator</RequestId>"
                "</ResponseMetadata></SimulatePrincipalPolicyResponse>")

    @staticmethod
    def _authorize(environ: dict[str, Any], source: str, account: str, partition: str) -> None:
        """Once moto enforces IAM: the caller (by its access key) must be allowed iam:SimulatePrincipalPolicy."""
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin
        from moto.iam.access_control import create_access_key

        if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
            return
        key = re.search(r"Credential=([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
        headers = {"X-Amz-Security-Token": environ["HTTP_X_AMZ_SECURITY_TOKEN"]} \
            if "HTTP_X_AMZ_SECURITY_TOKEN" in environ else {}
        try:
            caller = create_access_key(account, partition, key.group(1) if key else "", headers)
        except Exception:
            raise _IamError("InvalidClientTokenId", "The security token included in the request is invalid.",
                            403) from None
        if _decide(caller.collect_policies(), "iam:SimulatePrincipalPolicy", source, {}) != "allowed":
            raise _IamError("AccessDenied", f"User: {caller.arn} is not authorized to perform: "
                            f"iam:SimulatePrincipalPolicy on resource: {source}", 403)


class _IamError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _xml(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text)


def _principal_policies(account: str, partition: str, kind: str, name: str) -> list[Any]:
    """A user's (with its groups') or a role's inline and attached policies, as moto keeps them."""
    from moto.iam.models import iam_backends

    backend = iam_backends[account][partition]
    try:
        if kind == "role":
            inline: list[Any] = [backend.get_role_policy(name, p)[1] for p in backend.list_role_policies(name)]
            return inline + list(backend.list_attached_role_policies(name)[0])
        policies: list[Any] = [backend.get_user_policy(name, p) for p in backend.list_user_policies(name)]
        policies += list(backend.list_attached_user_policies(name)[0])
        for group in backend.get_groups_for_user(name):
            policies += [backend.get_group_policy(group.name, p) for p in backend.list_group_policies(group.name)]
            policies += list(backend.list_attached_group_policies(group.name)[0])
        return policies
    except Exception:  # moto's NoSuchEntity and its kin
        raise _IamError("NoSuchEntity", f"The {kind} with name {name} cannot be found.", 404) from None


def _decide(policies: list[Any], action: str, resource: str, context: dict[str, str]) -> str:
    """IAM's decision over identity policies: an explicit Deny wins, then any Allow, else an implicit deny. Each
    statement is evaluated by moto's ``IAMPolicyStatement`` (what ``IAMPolicy.is_action_permitted`` does for a
    document), except that a statement whose condition does not hold is neutral, as in IAM (moto answers DENIED)."""
    from moto.iam.access_control import IAMPolicy, IAMPolicyStatement, PermissionResult

    allowed = False
    for policy in policies:
        statements = IAMPolicy(policy)._policy_json.get("Statement", [])
        for raw in statements if isinstance(statements, list) else [statements]:
            statement = dict(raw)
            if isinstance(statement.get("Resource"), (str, list)):  # IAM's "?" (one character) for moto's matcher
                resources = statement["Resource"]
                statement["Resource"] = ([r.replace("?", ".") for r in resources] if isinstance(resources, list)
                                         else resources.replace("?", "."))
            evaluated = IAMPolicyStatement(statement)
            if not evaluated._check_conditions(context or None):
                continue
            result = evaluated.is_action_permitted(action, resource, incoming_condition_values=context or None)
            if result == PermissionResult.DENIED:
                return "explicitDeny"
            allowed = allowed or result == PermissionResult.PERMITTED
    return "allowed" if allowed else "implicitDeny"


@contextlib.contextmanager
def moto_server(lambda_like_aws: bool = False, port: int = 0) -> Iterator[str]:
    """Run moto's threaded server on a loopback port (``port``, 0: a free one); yields its URL
    (``http://127.0.0.1:PORT``). ``lambda_like_aws``: invoking a function that does not exist fails as on AWS
    (this process's moto)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per AWS call is noise
    with contextlib.ExitStack() as stack:
        if lambda_like_aws:
            stack.enter_context(_lambda_like_aws())
        server = SerializedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        stack.callback(server.stop)
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        moto_api(endpoint, "config", {"lambda": {"use_docker": False}})  # Lambda without Docker
        yield endpoint


def moto_api(endpoint: str, path: str, body: dict[str, Any]) -> None:
    """POST to moto's own API (``/moto-api/...``): its configuration, queued Lambda and Athena results."""
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        response.read()


def emulator_env(endpoint: str) -> dict[str, str]:
    """Environment that points boto3 at the emulator with fake credentials (AWS_ENDPOINT_URL is standard)."""
    return {**FAKE_ENV, "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def use_emulator(endpoint: str) -> Iterator[None]:
    """Point this process's AWS SDK at the emulator for the duration (restores the environment after)."""
    saved = {k: os.environ.get(k) for k in (*emulator_env(endpoint), *REAL_ENV)}
    for key in REAL_ENV:
        os.environ.pop(key, None)
    os.environ.update(emulator_env(endpoint))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------------------------------- the command
SHELLS = ("sh", "cmd", "powershell")


def env_lines(env: dict[str, str], shell: str) -> list[str]:
    """``env`` set, and the variables that could reach a real account (:data:`REAL_ENV`) unset, in a shell's
    syntax: ``sh`` (bash, zsh), ``cmd`` or ``powershell``."""
    if shell == "cmd":
        return [f"set {k}={v}" for k, v in env.items()] + [f"set {k}=" for k in REAL_ENV]
    if shell == "powershell":
        return ([f"$env:{k} = '{v}'" for k, v in env.items()]
                + [f"Remove-Item Env:{k} -ErrorAction SilentlyContinue" for k in REAL_ENV])
    return [f"export {k}={v}" for k, v in env.items()] + [f"unset {' '.join(REAL_ENV)}"]


if __name__ == "__main__":  # the command serves the demo's pipeline, so it lives beside it
    from flows.demo import emulator_main

    sys.exit(emulator_main())
