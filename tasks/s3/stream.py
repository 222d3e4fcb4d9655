"""Reading an S3 object streamed, in bounded memory: its body as a counted, hashed stream (gunzipped on the
fly), its lines (each bounded), the records of a JSON document one array element at a time, and a seekable file
over ranged GETs (for parquet). What the checks of :mod:`tasks.s3.content` read objects with.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from tasks.kit import nesting
from tasks.kit.errors import AWS_ERRORS, aws_error
from tasks.kit.polling import WaitInterrupted

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

MIB = 1024 * 1024
#: bytes asked of S3 per read of a streamed body
CHUNK = 256 * 1024
#: a CSV or JSONL line (a CSV row may span lines) longer than this fails the check instead of growing memory
MAX_LINE_CHARS = 8 * MIB
#: the largest JSON array element (or top-level object) read
MAX_JSON_VALUE_CHARS = 16 * MIB


@dataclass
class ReadStats:
    """What reading an object cost: bytes fetched from S3, GET requests, and what was held in memory."""

    bytes_read: int = 0
    requests: int = 0
    gunzipped: bool = False
    held: str = ""
    #: the rows (records) read, when the object was parsed (a baseline of the row count compares their total)
    rows: int | None = None



class Unreadable(Exception):
    """The object is not what its format says (bad encoding, invalid JSON, not parquet): a check that failed."""


# ------------------------------------------------------------------------------------------------- streaming
class _Body(io.RawIOBase):
    """An S3 body (anything with ``read(n)``) as a raw stream: counts and hashes the bytes as stored, and stops
    when the run stops."""

    def __init__(self, body: Any, stats: ReadStats, stop: threading.Event | None) -> None:
        self.body, self.stats, self.stop = body, stats, stop
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.stop is not None and self.stop.is_set():
            raise WaitInterrupted("the run is stopping, so reading the object was cut short")
        data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        self.stats.bytes_read += len(data)
        self.sha256.update(data)
        return len(data)


def open_stream(body: Any, key: str, compression: str, stats: ReadStats,
                stop: threading.Event | None = None) -> tuple[io.BufferedIOBase, _Body]:
    """The object's bytes (gunzipped when compressed), streamed; and the raw body, which hashes what it read."""
    raw = _Body(body, stats, stop)
    buffered = io.BufferedReader(raw, CHUNK)
    gzipped = compression == "gzip" or (compression == "auto" and (key.endswith(".gz")
                                                                   or buffered.peek(2)[:2] == b"\x1f\x8b"))
    if gzipped:
        stats.gunzipped = True
        return gzip.GzipFile(fileobj=buffered, mode="rb"), raw
    return buffered, raw


def lines(text: io.TextIOBase) -> Iterator[str]:
    """The lines of a text stream, each at most MAX_LINE_CHARS long (or Unreadable)."""
    number = 0
    while line := text.readline(MAX_LINE_CHARS):
        number += 1
        if len(line) >= MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            raise Unreadable(f"line {number} is longer than {MAX_LINE_CHARS:,} characters")
        yield line


_WS = re.compile(r"[ \t\n\r]*")


def json_values(text: io.TextIOBase) -> Iterator[Any]:
    """The records of a JSON document: each element of a top-level array, streamed (one element in memory at a
    time), or the one top-level value. A value longer than MAX_JSON_VALUE_CHARS is Unreadable."""
    decoder = json.JSONDecoder()
    buf, pos, eof, want = "", 0, False, CHUNK

    def fill() -> None:
        nonlocal buf, pos, eof
        chunk = text.read(want)
        eof = not chunk
        buf, pos = buf[pos:] + chunk, 0
        if len(buf) > MAX_JSON_VALUE_CHARS + CHUNK:
            raise Unreadable(f"a JSON value is longer than {MAX_JSON_VALUE_CHARS:,} characters")

    def skip_ws() -> bool:
        """Move past white space; False at the end of the document."""
        nonlocal pos
        while True:
            pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
            if pos < len(buf):
                return True
            if eof:
                return False
            fill()

    fill()
    if not skip_ws():
        raise Unreadable("the object holds no JSON value")
    if buf[pos] != "[":
        while not eof:
            want = min(want * 2, MAX_JSON_VALUE_CHARS)
            fill()
        try:
            yield nesting.loads(buf[pos:], "the JSON value")
        except ValueError as exc:
            raise Unreadable(f"not valid JSON: {exc}") from None
        return
    pos += 1
    count = 0
    if skip_ws() and buf[pos] == "]":
        pos += 1
    else:
        while True:
            while True:  # decode one element, reading more (twice as much each time) while it is incomplete
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        nesting.check_depth(value, f"array element {count + 1}")
                        break
                except RecursionError:
                    raise Unreadable(str(nesting.too_deep(f"array element {count + 1}"))) from None
                except nesting.NestingError as exc:
                    raise Unreadable(str(exc)) from None
                except ValueError as exc:
                    if eof:
                        raise Unreadable(f"array element {count + 1}: not valid JSON: {exc}") from None
                want = min(want * 2, MAX_JSON_VALUE_CHARS)
                fill()
            want = CHUNK
            count += 1
            yield value
            pos = end
            if not skip_ws():
                raise Unreadable(f"the array ends after element {count} without ']'")
            if buf[pos] == "]":
                pos += 1
                break
            if buf[pos] != ",":
                raise Unreadable(f"after array element {count}: expected ',' or ']', found {buf[pos]!r}")
            pos += 1
            if not skip_ws():
                raise Unreadable(f"the array ends after element {count} without ']'")
    if skip_ws():
        raise Unreadable("data after the top-level array")


class RangedObject(io.RawIOBase):
    """An S3 object as a seekable file: each read is one ranged GET (for parquet, which reads its footer first and
    then only the column chunks it needs). Nothing is spooled to disk; memory holds only what pyarrow asked for."""

    def __init__(self, client: S3Client, bucket: str, key: str, size: int, stats: ReadStats,
                 stop: threading.Event | None = None) -> None:
        self.client, self.bucket, self.key, self.size = client, bucket, key, size
        self.stats, self.stop, self.pos = stats, stop, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.stop is not None and self.stop.is_set():
            raise WaitInterrupted("the run is stopping, so reading the object was cut short")
        count = min(len(buffer), self.size - self.pos)
        if count <= 0:
            return 0
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.key,
                                          Range=f"bytes={self.pos}-{self.pos + count - 1}")
            data = resp["Body"].read()
        except AWS_ERRORS as exc:
            raise aws_error("S3 GetObject (range)", f"s3://{self.bucket}/{self.key}", exc) from None
        buffer[: len(data)] = data
        self.pos += len(data)
        self.stats.requests += 1
        self.stats.bytes_read += len(data)
        return len(data)
