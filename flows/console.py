"""What the command lines print: output that never crashes, whatever the console's encoding.

Windows writes redirected output (``> out.txt``, a pipe to ``Tee-Object``, a CI agent) in the ANSI code page,
cp1252 in Western Europe and the Americas, which has no ❌ and no ≥: a step's message holding one then ended a
run with UnicodeEncodeError at the summary. Every entry point (``python -m flows.pipeline_test``, ``recover``,
``python -m flows.demo``, ``pipeline-test verify``, ``deployments/serve.py``) calls
:func:`safe_output` first: stdout and stderr become UTF-8 where the stream allows it (it can be reconfigured,
and no encoding was chosen with PYTHONIOENCODING), else keep their encoding and write what it cannot hold as
``\\u274c``. ``--json`` goes through :func:`json_text`: valid JSON whatever the console (``\\uXXXX`` escapes
where the stream is not UTF-8). ``PYTHONUTF8=1`` (set by quickstart.py, the setenv scripts, the deployments and
``deployments/serve.py``) makes every stream UTF-8 from the start.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import os
import sys
from typing import Any, TextIO


def safe_output(*streams: Any) -> None:
    """Make ``streams`` (default: stdout and stderr) unable to fail on a character: UTF-8 where the stream can be
    switched and PYTHONIOENCODING chose no encoding, else ``errors="backslashreplace"``."""
    chosen = bool(os.environ.get("PYTHONIOENCODING", "").partition(":")[0])
    for stream in streams or (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if not callable(reconfigure):  # not a text stream of io's (None under pythonw, a test's stand-in)
            continue
        try:
            if chosen or is_utf8(stream):
                reconfigure(errors="backslashreplace")
            else:
                reconfigure(encoding="utf-8", errors="backslashreplace")
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
                reconfigure(errors="backslashreplace")


def is_utf8(stream: Any) -> bool:
    """True when the stream writes UTF-8 (so any character)."""
    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "utf-8"
    except LookupError:
        return False


def json_text(model: Any, stream: TextIO | None = None) -> str:
    """A pydantic model as indented JSON for ``stream`` (default stdout): as is on a UTF-8 stream, else with
    every non-ASCII character as a ``\\uXXXX`` escape (still the same JSON, and valid on any console)."""
    text: str = model.model_dump_json(indent=2)
    if is_utf8(stream or sys.stdout):
        return text
    return json.dumps(json.loads(text), indent=2, ensure_ascii=True)
