"""All markdown of the project (UI artifacts, report.md) and Slack mrkdwn, built from values.

Every value that comes from a run or a spec (a key, a message, a response, a column name, a step name) goes
through one of these builders, escaped for where it lands, so nothing it holds can close a code block, start a
heading, add a table row or cell, make a link, or carry HTML:

- :func:`text`: inline text; markdown punctuation backslash-escaped, ``& < > |`` as entities, control
  characters and line breaks flattened to spaces (so a value is always one line of plain text);
- :func:`code`: an inline code span whose fence is longer than any run of backticks in the value;
- :func:`code_block`: a fenced block whose fence is longer than any run of backticks in the value;
- :func:`link`: a link only for ``http:``/``https:`` URLs (else the text alone), with escaped text;
- :func:`table`: cells escaped with :func:`text` (pipes inside code spans as ``\\|``), one line per row.

Builders return :class:`Md` (markdown made here), which other builders pass through unescaped: plain ``str``
values are always escaped. The ``slack_*`` functions do the same for Slack's mrkdwn, which has no backslash
escapes: ``& < >`` become entities and formatting characters are neutralised with a zero-width space.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_BREAKS = re.compile(r"\r\n|[\r\n\t]")
#: markdown punctuation of inline text (an underscore inside a word, as in row_count, cannot emphasise)
_INLINE_PUNCT = re.compile(r"([\\`*\[\]~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_LINE_START = re.compile(r"^(\s*)([#+=>-])")
#: an ordered-list start (``1.``, ``2)``): the punctuation is escaped, not the digit (``\1`` would show)
_LIST_START = re.compile(r"^(\s*\d+)([.)])(?=\s|$)")
_URL = re.compile(r"https?://[^\s<>\"`]+", re.IGNORECASE)
_LANG = re.compile(r"[^A-Za-z0-9_+-]")
ZWSP = "\u200b"
#: Slack formatting characters (inside a word, as in expect_objects, they cannot format)
_SLACK_FORMAT = re.compile(r"(`|(?<![A-Za-z0-9])[*_~]|[*_~](?![A-Za-z0-9]))")


class Md(str):
    """Markdown built by this module: other builders pass it through as it is."""


class Code(Md):
    """An inline code span; ``raw`` is its value (a table cell escapes its pipes)."""

    raw: str
    fence: str

    def __new__(cls, raw: str, fence: str) -> "Code":
        pad = " " if raw.startswith(("`", " ")) or raw.endswith(("`", " ")) else ""
        span = super().__new__(cls, f"{fence}{pad}{raw}{pad}{fence}")
        span.raw, span.fence = raw, fence
        return span

    def in_cell(self) -> str:
        pad = " " if self.raw.startswith(("`", " ")) or self.raw.endswith(("`", " ")) else ""
        inner = self.raw.replace("|", "\\|")
        return f"{self.fence}{pad}{inner}{pad}{self.fence}"


def one_line(value: Any) -> str:
    """A value's text on one line: line breaks, tabs and control characters become spaces."""
    return _CONTROL.sub(" ", _BREAKS.sub(" ", "" if value is None else str(value)))


def text(value: Any) -> Md:
    """A value as inline markdown text that renders as itself and nothing more."""
    if isinstance(value, Md):
        return value
    escaped = _INLINE_PUNCT.sub(r"\\\1", one_line(value))
    escaped = escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;")
    escaped = _LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), escaped, count=1)
    return Md(_LIST_START.sub(lambda m: m.group(1) + "\\" + m.group(2), escaped, count=1))


def _longest_backticks(value: str) -> int:
    return max((len(run) for run in re.findall(r"`+", value)), default=0)


def code(value: Any) -> Md:
    """A value as an inline code span (its fence longer than any run of backticks in it); ``–`` when empty."""
    raw = one_line(value)
    if not raw.strip():
        return Md("–") if not raw else Code(raw, "`")
    return Code(raw, "`" * (_longest_backticks(raw) + 1))


def _wrap(body: str, width: int) -> str:
    """Lines longer than ``width`` broken (at a space when there is one), the rest indented by four spaces."""
    out = []
    for line in body.split("\n"):
        while len(line) > width:
            cut = line.rfind(" ", width // 2, width)
            cut = cut if cut > 0 else width
            out.append(line[:cut])
            line = "    " + line[cut:].lstrip(" ")
        out.append(line)
    return "\n".join(out)


def code_block(value: Any, lang: str = "", wrap: int | None = None) -> Md:
    """A fenced code block holding the value verbatim (line breaks kept, other control characters dropped);
    with ``wrap``, lines longer than that are broken for display (the UI does not wrap code blocks)."""
    body = _CONTROL.sub("", _BREAKS.sub(lambda m: "\t" if m.group(0) == "\t" else "\n", str(value)))
    if wrap:
        body = _wrap(body, wrap)
    fence = "`" * max(3, _longest_backticks(body) + 1)
    return Md(f"{fence}{_LANG.sub('', lang)}\n{body}\n{fence}")


def safe_url(url: Any) -> str | None:
    """The URL percent-encoded for a markdown link target, or None when it is not a plain http(s) URL."""
    value = str(url or "")
    if not _URL.fullmatch(value):
        return None
    for char, code_ in (("(", "%28"), (")", "%29"), ("[", "%5B"), ("]", "%5D"), ("|", "%7C"), ("\\", "%5C"),
                        ("*", "%2A"), ("_", "%5F")):
        value = value.replace(char, code_)
    return value


def link(label: Any, url: Any) -> Md:
    """``[label](url)`` for an http(s) URL; the label alone (escaped) for anything else."""
    target = safe_url(url)
    shown = text(label)
    return Md(f"[{shown}]({target})") if target else shown


def emphasis(value: Any) -> Md:
    """Italic text (e.g. a description)."""
    shown = text(value)
    return Md(f"_{shown}_") if shown.strip() else shown


def strong(value: Any) -> Md:
    shown = text(value)
    return Md(f"**{shown}**") if shown.strip() else shown


def cell(value: Any) -> str:
    """A value as one table cell: code spans keep their pipes escaped, everything else is :func:`text`."""
    if isinstance(value, Code):
        return value.in_cell()
    if isinstance(value, Md):
        return one_line(value)
    return text(value)


def table(header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> Md:
    """A markdown table: one line per row, every cell escaped (see :func:`cell`)."""
    head = [cell(h) for h in header]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [cell(v) for v in row]
        cells += [""] * (len(head) - len(cells))
        lines.append("| " + " | ".join(c or " " for c in cells[: len(head)]) + " |")
    return Md("\n".join(lines))


def bullets(items: Iterable[Any]) -> Md:
    """A bullet list, one escaped line per item."""
    return Md("\n".join(f"- {cell(item)}" for item in items))


#: the widest table line (in characters of its source) that the Prefect UI shows whole at 1400 px
TABLE_WIDTH = 110


def shorten(value: Any, limit: int) -> str:
    """A value's text on one line, cut to ``limit`` characters with ``…`` (for table cells; the pack keeps it whole)."""
    flat = one_line(value)
    return flat if len(flat) <= limit else flat[: max(1, limit - 1)].rstrip() + "…"


def message(value: Any, max_lines: int = 40) -> Md:
    """A message as wrapped text (not a one-line code block): each line escaped, hard line breaks between them."""
    lines = _CONTROL.sub(" ", _BREAKS.sub(lambda m: " " if m.group(0) == "\t" else "\n", str(value or ""))).split("\n")
    kept = [text(line) for line in lines[:max_lines]]
    if len(lines) > max_lines:
        kept.append(Md(f"… ({len(lines) - max_lines} more lines in the evidence pack)"))
    return Md("  \n".join(line if line.strip() else Md("&#160;") for line in kept))


def facts(pairs: Iterable[tuple[Any, Any]]) -> Md:
    """Facts as a bullet list (``- **name**: value``): it wraps, where a two-column table would scroll."""
    return Md("\n".join(f"- **{text(name)}**: {cell(value)}" for name, value in pairs))


# ------------------------------------------------------------------------------------------------ Slack mrkdwn
def _slack_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(value: Any) -> str:
    """A value as Slack mrkdwn text: ``& < >`` escaped, ``* _ ~ ``` `` neutralised, on one line."""
    escaped = _slack_escape(one_line(value))
    return _SLACK_FORMAT.sub(lambda m: m.group(1) + ZWSP, escaped)


def slack_code(value: Any) -> str:
    """Inline code in Slack: backticks in the value cannot close it."""
    inner = _slack_escape(one_line(value)).replace("`", "'")
    return f"`{inner}`" if inner else ""


def slack_code_block(value: Any) -> str:
    """A Slack code block: ``& < >`` escaped, runs of backticks broken so none closes the block."""
    body = _CONTROL.sub("", _BREAKS.sub(lambda m: "\t" if m.group(0) == "\t" else "\n", str(value)))
    body = _slack_escape(body).replace("`", "`" + ZWSP)
    return f"```\n{body}\n```"


def slack_link(label: Any, url: Any) -> str:
    """``<url|label>`` for an http(s) URL, else the label as text."""
    value = str(url or "")
    if not _URL.fullmatch(value):
        return slack_text(label)
    target = value.replace("|", "%7C")
    return f"<{target}|{slack_text(label).replace('|', '¦')}>"
