"""Links of the evidence to what a run touched: the AWS console's page when the client talks to AWS itself, the
emulator's own URL (S3) or nothing elsewhere. The one place that decides real AWS or emulator for a link
(:func:`tasks.kit.aws.is_real_aws`) and builds the console's address.

A console ``path`` holds ``{region}`` where the region goes (filled in here); a name or ARN put into a path goes
through :func:`literal` first, so a brace in it stays a brace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from tasks.kit.aws import is_real_aws
from tasks.kit.step import Link

if TYPE_CHECKING:
    from tasks.kit.aws import ServiceName
    from tasks.kit.step import StepContext

#: the region a link names when the client has none
DEFAULT_REGION = "us-east-1"


def literal(text: str) -> str:
    """A name or ARN as a literal part of a console path (``{region}`` is filled in by :func:`console_url`)."""
    return text.replace("{", "{{").replace("}", "}}")


def console_url(path: str, region: str | None) -> str:
    """``https://<region>.console.aws.amazon.com/<path>``, ``{region}`` in ``path`` filled in."""
    region = region or DEFAULT_REGION
    return f"https://{region}.console.aws.amazon.com/{path.format(region=region)}"


def links_for(endpoint: str, region: str | None, path: str, text: str) -> list[Link]:
    """A link to the AWS console when ``endpoint`` is AWS's own; none for an emulator (its console does not exist)."""
    return [Link(console_url(path, region), text)] if is_real_aws(endpoint) else []


def console_link(ctx: StepContext, service: ServiceName, path: str, text: str) -> list[Link]:
    """:func:`links_for` the run's client of ``service`` (its endpoint and region)."""
    return links_for(ctx.clients.endpoint_url(service), ctx.clients.region, path, text)


def s3_link(endpoint: str, region: str | None, bucket: str, key: str, *, folder: bool = False) -> Link:
    """A link to an S3 object (or, with ``folder``, a prefix): the S3 console on AWS, the emulator's URL elsewhere
    (S3's console is global: ``s3.console.aws.amazon.com``)."""
    region = region or DEFAULT_REGION
    if is_real_aws(endpoint):
        if folder:
            url = (f"https://s3.console.aws.amazon.com/s3/buckets/{quote(bucket)}?region={quote(region)}"
                   f"&prefix={quote(key, safe='')}&showversions=false")
        else:
            url = f"https://s3.console.aws.amazon.com/s3/object/{bucket}?region={region}&prefix={quote(key, safe='')}"
        return Link(url, f"s3://{bucket}/{key} in the S3 console")
    return Link(f"{endpoint.rstrip('/')}/{bucket}/{quote(key)}", f"s3://{bucket}/{key} (local emulator)")
