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

import math
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


#: the width of an artifact's markdown box in the Prefect UI at a 1400 px window (measured: 828 to 846 px); the UI
#: never wraps a table cell (``white-space: nowrap``), so a wider table scrolls sideways and hides its last columns
TABLE_PX = 820
#: estimated pixels: per character of a cell (the UI's fonts, code and text alike, rounded up), per column (padding)
CHAR_PX, COLUMN_PX = 7.5, 26
#: the narrowest a cell is cut to (in characters) before its full value moves under the table
MIN_CELL_CHARS = 12
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_ENTITY = re.compile(r"&#?[A-Za-z0-9]+;")
_WIDE_CHAR = re.compile(r"[\u2600-\u27bf\U0001f300-\U0001faff]")


def shown_chars(markdown: str) -> int:
    """About how many characters a markdown cell shows (link targets, escapes and fences are not shown; an emoji
    counts twice)."""
    shown = _ENTITY.sub("x", _LINK_TARGET.sub("]", markdown)).replace("\\", "")
    shown = shown.replace("`", "").replace("[", "").replace("]", "")
    return len(shown) + len(_WIDE_CHAR.findall(shown))


def _cut(value: Any, limit: int) -> str | None:
    """A cell's value cut to ``limit`` shown characters, as a cell; None when it cannot be cut (built markdown)."""
    if isinstance(value, Code):  # an identifier (a key, an id): its start and its end tell it apart
        return code(shorten_middle(value.raw, limit)).in_cell()  # type: ignore[attr-defined]
    if isinstance(value, Md):
        return None
    flat = one_line(value)  # a name or a URI (no space): its start and end tell it apart; prose: its start
    return text(shorten_middle(flat, limit) if " " not in flat.strip() else shorten(flat, limit))


def table(header: Iterable[Any], rows: Iterable[Iterable[Any]], width_px: int = TABLE_PX,
          whole_below: bool = True) -> Md:
    """A markdown table: one line per row, every cell escaped (see :func:`cell`), that fits ``width_px``.

    The Prefect UI does not wrap table cells, so a table wider than its box hides its last columns (often the
    verdict). When the cells' estimated width is over the budget, the widest columns' longest cells are cut (with
    ``…``) until it fits; with ``whole_below`` (the default) each cut cell gets a note number and its whole value
    is listed under the table (without: where the whole texts are elsewhere, e.g. each step's own evidence)."""
    head_values = list(header)
    head = [cell(h) for h in head_values]
    raw: list[list[Any]] = []
    for row in rows:
        values = list(row)[: len(head)]
        raw.append(values + [""] * (len(head) - len(values)))
    whole = [[cell(v) for v in row] for row in raw]
    limits: list[int | None] = [None] * len(head)

    def cut_at(r: int, c: int) -> str | None:
        """The cell cut to its column's limit, or None when it is shown whole."""
        limit = limits[c]
        if limit is None or shown_chars(whole[r][c]) <= limit:
            return None
        return _cut(raw[r][c], limit)

    def widths() -> list[int]:
        return [max([shown_chars(head[c])] + [shown_chars(cut_at(r, c) or whole[r][c]) + (5 if cut_at(r, c) else 0)
                                              for r in range(len(raw))]) for c in range(len(head))]

    while raw:
        current = widths()
        over = sum(w * CHAR_PX + COLUMN_PX for w in current) - width_px
        if over <= 0:
            break
        for column in sorted(range(len(head)), key=lambda c: -current[c]):
            limit = max(MIN_CELL_CHARS, shown_chars(head[column]), current[column] - 5 - math.ceil(over / CHAR_PX))
            if limits[column] is not None and limit >= limits[column]:  # type: ignore[operator]
                continue
            before = limits[column]
            limits[column] = limit
            if any(cut_at(r, column) for r in range(len(raw))):
                break
            limits[column] = before  # nothing in this column can be cut to that
        else:
            break  # nothing left that can be cut (built markdown): leave it as it is
    notes: list[str] = []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, row in enumerate(whole):
        shown = []
        for c, value in enumerate(row):
            cut = cut_at(r, c)
            if cut is not None and not whole_below:
                value = cut
            elif cut is not None:
                notes.append(f"{len(notes) + 1}. {text(one_line(head_values[c]) or 'value')}: {value}")
                value = f"{cut} ({len(notes)})"
            shown.append(value or " ")
        lines.append("| " + " | ".join(shown) + " |")
    if notes:
        lines += ["", "Whole values of the cells cut above:", "", *notes]
    return Md("\n".join(lines))


def fitting_columns(header: list[Any], rows: list[list[Any]], width_px: int = TABLE_PX) -> int:
    """How many leading columns of a data table fit ``width_px`` whole (at least one): a preview of rows shows
    those and says how many more there are, rather than cutting every value."""
    used = 0
    for column, name in enumerate(header):
        widest = max([shown_chars(cell(name))] + [shown_chars(cell(row[column])) for row in rows if column < len(row)])
        used += round(widest * CHAR_PX) + COLUMN_PX
        if used > width_px:
            return max(1, column)
    return len(header)


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


def shorten_middle(value: Any, limit: int) -> str:
    """A value's text on one line, cut in the middle to ``limit`` characters (``head…tail``)."""
    flat = one_line(value)
    if len(flat) <= limit:
        return flat
    tail = max(1, (limit - 1) // 2)
    return flat[: max(1, limit - 1 - tail)] + "…" + flat[-tail:]


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
