"""The read-only guard of ``athena_query``: sqlglot (Athena dialect) decides what a statement is.

:func:`check_sql` refuses what must not reach Athena: several statements, SQL that cannot be parsed or that
writes (only SELECT, WITH, VALUES, SHOW, DESCRIBE and EXPLAIN read), a wrong number of ``?`` parameters; and it
judges the statement as it will run, with its parameters in place. :func:`check_literal` allows only SQL
literals as parameters (a string in quotes, a number, a typed literal such as ``DATE '2024-01-31'``, TRUE,
FALSE, NULL): ``(DELETE FROM t)`` or ``'x'); DROP TABLE t; --`` are refused. The runner calls both before any
AWS call; the spec validator too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from tasks.kit.errors import StepError

__all__ = ["READ_KINDS", "SqlCheck", "check_literal", "check_sql", "classify_sql"]

#: the statements that run without allow_write
READ_KINDS = ("SELECT", "WITH", "VALUES", "SHOW", "DESCRIBE", "EXPLAIN")


_DIALECT = Dialect.get_or_raise("athena")
_READ_ROOTS: tuple[type[exp.Expr], ...] = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values, exp.Describe)
#: nodes that change data or metadata; one anywhere in a statement makes it a write
_WRITE_NODES: tuple[type[exp.Expr], ...] = tuple(
    getattr(exp, name)
    for name in ("Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "Command", "Into",
                 "TruncateTable", "Copy", "LoadData", "Grant", "Revoke", "Analyze", "Refresh", "Use", "Set",
                 "Transaction", "Commit", "Rollback", "Cache", "Uncache", "Kill", "Pragma")
    if hasattr(exp, name)
)
_EXPLAIN_OPTIONS = frozenset({"FORMAT", "TYPE"})
#: the longest parameter (a literal)
MAX_PARAMETER_CHARS = 10_000
_LITERAL = re.compile(
    r"\s*(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"              # a number
    r"|(?:(?:DATE|TIME|TIMESTAMP|DECIMAL|VARCHAR|CHAR|X|U&)\s*)?'(?:[^']|'')*'"  # a string, maybe typed
    r"|INTERVAL\s*'(?:[^']|'')*'\s*[A-Za-z]+(?:\s+TO\s+[A-Za-z]+)?"       # an interval
    r"|TRUE|FALSE|NULL)\s*", re.IGNORECASE)


def check_literal(value: str) -> str:
    """A parameter must be one SQL literal (see the module's description); ValueError saying what it may be."""
    if len(value) > MAX_PARAMETER_CHARS:
        raise ValueError(f"a parameter is at most {MAX_PARAMETER_CHARS:,} characters")
    if not _LITERAL.fullmatch(value):
        raise ValueError("a parameter must be one SQL literal: a string in single quotes ('2024-01-31', a quote "
                         "inside doubled: 'O''Brien'), a number (42, -1.5), a typed literal (DATE '2024-01-31', "
                         "TIMESTAMP '...'), TRUE, FALSE or NULL; not an expression or a statement")
    return value


def with_parameters(sql: str, parameters: Sequence[str]) -> str:
    """The statement as it runs: each ``?`` placeholder (a token, not a '?' in a string) replaced by its
    parameter, in order; extra parameters are left out (the count is checked separately)."""
    places = [t for t in _tokenize(sql) if t.token_type == TokenType.PLACEHOLDER]
    out, last = [], 0
    for token, value in zip(places, parameters):
        out += [sql[last:token.start], f" {value} "]
        last = token.end + 1
    return "".join(out) + sql[last:]


@dataclass(frozen=True)
class SqlCheck:
    """What :func:`classify_sql` found: the kind of statement, whether it only reads, its ``?`` parameters."""

    kind: str
    read_only: bool
    #: number of ``?`` placeholders, None when the statement was not parsed in full (SHOW, commands)
    placeholders: int | None = None
    #: the parser's complaint when sqlglot could not parse the statement
    parse_error: str | None = None


def _tokenize(sql: str) -> list[Token]:
    """sqlglot's Athena tokens, without its internal Hive marker; unreadable SQL is a StepError."""
    try:
        tokens = _DIALECT.tokenize(sql)
    except TokenError as exc:
        raise StepError(f"The SQL could not be read (an unclosed quote or comment?): {exc}") from None
    return [t for t in tokens if t.token_type != TokenType.HIVE_TOKEN_STREAM]


def _split_statements(tokens: list[Token]) -> list[list[Token]]:
    """Tokens grouped into statements at top-level semicolons (a ';' in a string is no separator)."""
    statements: list[list[Token]] = [[]]
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            statements.append([])
        else:
            statements[-1].append(token)
    return [s for s in statements if s]


def _parse_error_text(exc: ParseError) -> str:
    """The first parse error as 'line L, col C: description', without the terminal underline codes."""
    errors = exc.errors or []
    if not errors:
        return re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()[0]
    first = errors[0]
    return f"line {first.get('line')}, col {first.get('col')}: {first.get('description')}"


def _explain_target(text: str) -> tuple[bool, str]:
    """Strip EXPLAIN's ANALYZE, VERBOSE and ``(FORMAT ..., TYPE ...)`` options; return (analyze, statement)."""
    analyze = False
    while True:
        tokens = _tokenize(text)
        if not tokens:
            raise StepError("The SQL is EXPLAIN without a statement to explain")
        head = tokens[0]
        word = head.text.upper()
        if word in ("ANALYZE", "VERBOSE"):
            analyze = analyze or word == "ANALYZE"
            text = text[head.end + 1:]
            continue
        if head.token_type == TokenType.L_PAREN and len(tokens) > 1 and tokens[1].text.upper() in _EXPLAIN_OPTIONS:
            close = next((t for t in tokens if t.token_type == TokenType.R_PAREN), None)
            if close is None:
                raise StepError("The SQL's EXPLAIN options have no closing parenthesis")
            text = text[close.end + 1:]
            continue
        return analyze, text


def _classify_parsed(expression: exp.Expr) -> SqlCheck:
    """Read-only when the root is a query or DESCRIBE and nothing inside it writes."""
    placeholders = len(list(expression.find_all(exp.Placeholder)))
    if isinstance(expression, exp.Command):
        return SqlCheck(str(expression.this).upper(), False, None)
    if isinstance(expression, _READ_ROOTS):
        writer = expression.find(*_WRITE_NODES)
        if writer is not None:
            return SqlCheck(writer.key.upper(), False, placeholders)
        if isinstance(expression, exp.Describe):
            kind = "DESCRIBE"
        elif isinstance(expression, exp.Values):
            kind = "VALUES"
        elif expression.args.get("with_") or expression.args.get("with"):
            kind = "WITH"
        else:
            kind = "SELECT"
        return SqlCheck(kind, True, placeholders)
    return SqlCheck(expression.key.upper(), False, placeholders)


def _classify_statement(sql: str, tokens: list[Token]) -> SqlCheck:
    """Classify one statement: SHOW and commands by their first token, EXPLAIN by its target, the rest parsed."""
    head = tokens[0]
    if head.token_type == TokenType.SHOW:
        return SqlCheck("SHOW", True, None)
    if head.token_type == TokenType.COMMAND and head.text.upper() == "EXPLAIN":
        analyze, target = _explain_target(sql[head.end + 1:])
        inner = classify_sql(target)
        # plain EXPLAIN only plans; EXPLAIN ANALYZE runs the statement, so it reads only if its target does
        read_only = inner.read_only or (not analyze and inner.parse_error is None)
        kind = "EXPLAIN ANALYZE" if analyze else "EXPLAIN"
        return SqlCheck(kind, read_only, inner.placeholders, inner.parse_error)
    if head.token_type == TokenType.COMMAND:
        return SqlCheck(head.text.upper(), False, None)
    try:
        expression = sqlglot.parse_one(sql, read=_DIALECT)
    except ParseError as exc:
        return SqlCheck(head.text.upper(), False, None, _parse_error_text(exc))
    return _classify_parsed(expression)


def classify_sql(sql: str) -> SqlCheck:
    """Parse ``sql`` with sqlglot (Athena dialect) and say what it is; empty or several statements are errors."""
    statements = _split_statements(_tokenize(sql))
    if not statements:
        raise StepError("The SQL is empty")
    if len(statements) > 1:
        raise StepError(
            f"The SQL holds {len(statements)} statements separated by ';'; an athena_query step runs exactly "
            "one (split it into several steps)"
        )
    return _classify_statement(sql, statements[0])


def check_sql(sql: str, *, allow_write: bool = False, parameters: Sequence[str] = ()) -> SqlCheck:
    """Refuse what must not reach Athena: several statements, unparseable or writing SQL, wrong ``?`` count.

    The runner calls this before any AWS call; a spec validator can call it on the templated SQL. With
    ``allow_write`` any single statement passes, even one sqlglot cannot parse (Athena will judge it).
    """
    found = classify_sql(sql)
    for i, value in enumerate(parameters, 1):
        try:
            check_literal(value)
        except ValueError as exc:
            raise StepError(f"parameter {i}: {exc}") from None
    if parameters and not allow_write and found.read_only:
        whole = classify_sql(with_parameters(sql, parameters))
        if whole.parse_error or not whole.read_only:
            raise StepError("Refused: with its parameters in place the statement is not one reading statement "
                            f"({whole.parse_error or whole.kind}); parameters must be literals")
    if not allow_write:
        if found.parse_error:
            raise StepError(
                f"The SQL could not be parsed ({found.parse_error}), so it cannot be shown to be read-only; "
                "fix it, or set allow_write: true to send it to Athena as it is"
            )
        if not found.read_only:
            raise StepError(
                f"Refused to run a {found.kind} statement: athena_query runs only reading statements "
                f"({', '.join(READ_KINDS)}) unless the step sets allow_write: true"
            )
    if found.placeholders is not None and found.placeholders != len(parameters):
        raise StepError(
            f"The SQL has {found.placeholders} '?' placeholder(s) but the step gives {len(parameters)} "
            "parameter(s); give one parameter per '?', in order"
        )
    return found
