"""A Jinja2 sandbox that cannot be made to eat the machine: every template is bounded in size, work and time.

Jinja's own sandbox stops templates from reaching Python internals, but not from asking for
``{{ 'a' * 3000000000 }}`` or ``{{ 9 ** 99999999 }}``. This one refuses, *before* doing it, any operation whose
result would be too big, and stops a rendering that runs too long:

* only allowed methods and filters exist for a template (an allow-list, :data:`SAFE_METHODS` and
  :data:`SAFE_FILTERS`): each makes a result bounded by its input, or is checked before it runs; so
  ``str.translate`` (whose table can turn one character into a megabyte), ``str.encode``, ``pprint``,
  ``urlize``, ``wordwrap`` and ``random`` are not available, and ``tojson``'s ``indent`` is at most
  :data:`MAX_JSON_INDENT` with the indented size estimated first;
* ``*``, ``+``, ``**`` and ``%`` (intercepted binary operators), ``~`` (string concatenation), method calls
  such as ``str.ljust``/``replace``/``join``/``format``/``strftime``, and filters such as ``center``,
  ``indent``, ``replace``, ``join``, ``format``, ``tojson``, ``batch`` and ``slice`` are checked for the size of
  what they would make;
* every value printed, and the rendered text as a whole, is at most :data:`MAX_TEXT` characters;
* loop iterations, calls and operations count against :data:`MAX_OPERATIONS` per rendering, and the wall
  clock against a deadline (checked as the template runs, so an empty nested loop is stopped too);
* a template's own source is at most :data:`MAX_TEMPLATE` characters, :data:`MAX_TEMPLATE_TAGS` tags and
  :data:`MAX_TAG_CHARS` characters inside tags; ``lipsum`` and other generators of
  text are not available; no constant folding happens at compile time (it would bypass the checks).

A refusal is a :class:`TemplateLimit` naming the limit; the caller turns it into a clear error.
"""

from __future__ import annotations

import copy
import functools
import itertools
import re
import string
import time
import types
from datetime import date, datetime, timedelta
from datetime import time as day_time
from typing import Any, Callable, Iterable, Iterator

from jinja2 import StrictUndefined, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, _PassArg

#: characters of any string a template makes or prints, and of a rendered result
MAX_TEXT = 1_000_000
#: characters of a template's source
MAX_TEMPLATE = 1_000_000
#: tags (``{{ ... }}``, ``{% ... %}``) in a template's source, and characters inside them: compiling costs time
#: and memory per tag and per character of expression (literal text around them costs next to nothing)
MAX_TEMPLATE_TAGS = 200
MAX_TAG_CHARS = 10_000
#: items of a list a template makes (Jinja's ``range`` already stops at 100,000)
MAX_ITEMS = 100_000
#: bits of an integer a template computes (about 30,000 decimal digits)
MAX_INT_BITS = 100_000
#: a width, precision or count given to a filter, a method or a format
MAX_WIDTH = 100_000
#: loop iterations, calls and operations in one rendering
MAX_OPERATIONS = 100_000
#: seconds one rendering may take when the caller sets no earlier deadline
RENDER_SECONDS = 10.0
#: the largest ``indent`` of the tojson filter
MAX_JSON_INDENT = 16
#: methods a template may call, by the type of the object: each makes a result bounded by its input (the
#: ones that could still grow, such as ljust or replace, are checked before they run: _check_call)
_STR_METHODS = frozenset({
    "capitalize", "casefold", "center", "count", "endswith", "expandtabs", "find", "format", "format_map",
    "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric",
    "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "partition",
    "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip",
    "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper", "zfill",
})
_TIME_METHODS = frozenset({"strftime", "isoformat", "weekday", "isoweekday", "isocalendar", "date", "time",
                           "timestamp", "utcoffset", "tzname", "total_seconds"})
SAFE_METHODS: tuple[tuple[type | tuple[type, ...], frozenset[str]], ...] = (
    (str, _STR_METHODS),
    (dict, frozenset({"get", "items", "keys", "values"})),
    ((list, tuple), frozenset({"count", "index"})),
    ((datetime, date, day_time, timedelta), _TIME_METHODS),
    (LoopContext, frozenset({"cycle", "changed"})),
)
#: Jinja's filters a template may use (the others, such as pprint, urlize, wordwrap, xmlattr and random,
#: are not defined): each is bounded by its input, or checked before it runs (_guard_filter)
SAFE_FILTERS = frozenset({
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
    "filesizeformat", "first", "float", "format", "groupby", "indent", "int", "items", "join", "last", "length",
    "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round", "select",
    "selectattr", "slice", "sort", "string", "striptags", "sum", "title", "tojson", "trim", "truncate", "unique",
    "upper", "urlencode", "wordcount",
})
#: where a rendering's budget travels in the template context (not a name a template can spell)
BUDGET_KEY = "pipeline-test budget"


class TemplateLimit(Exception):
    """A template asked for more than a limit allows; the message says which."""


class Budget:
    """The work and time one rendering may still spend."""

    def __init__(self, deadline: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline = deadline
        self.clock = clock
        self.operations = 0

    def tick(self) -> None:
        self.operations += 1
        if self.operations > MAX_OPERATIONS:
            raise TemplateLimit(f"the template does more than {MAX_OPERATIONS:,} loop iterations, calls and "
                                "operations")
        if self.operations % 256 == 0:
            self.check_time()

    def check_time(self) -> None:
        if self.clock() > self.deadline:
            raise TemplateLimit("the template ran out of time (the validation or rendering time limit)")


def text_size(value: Any, limit: int = MAX_TEXT) -> int:
    """About how many characters ``value`` becomes as text; stops counting once past ``limit``.

    Containers count their items (shared items count each time they appear, as they would print);
    generators and other objects count as a few characters, as they are not expanded here.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item)
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend(itertools.chain.from_iterable(item.items()))
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, range):
            total += 8 * len(item)
        else:
            total += 16
        if total > limit:
            break
    return total


def _refuse_text(size: int, what: str) -> None:
    if size > MAX_TEXT:
        raise TemplateLimit(f"{what} would be more than {MAX_TEXT:,} characters")


def _refuse_width(value: Any, what: str, limit: int = MAX_WIDTH) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
        raise TemplateLimit(f"{what} of {value} is more than the limit of {limit:,}")


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def check_printf(fmt: str, args: Any) -> None:
    """Refuse a ``%`` format whose widths, or whose result, are too large."""
    for width, precision in _PRINTF_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*":
                raise TemplateLimit("a '*' width or precision in a % format is not allowed in templates")
            if number:
                _refuse_width(int(number[:12]), "a width or precision in a % format")
    _refuse_text(len(fmt) + fmt.count("%") * text_size(args), "the formatted text")


def check_format(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a ``str.format`` whose widths, or whose result, are too large."""
    _refuse_text(len(fmt) + fmt.count("{") * text_size((args, kwargs)), "the formatted text")
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # format itself raises a clear error
    count = 0
    for _, name, spec, _ in fields:
        if name is None:
            continue
        count += 1
        if spec and "{" in spec:
            raise TemplateLimit("a nested {} in a format spec is not allowed in templates")
        for number in re.findall(r"\d+", spec or ""):
            _refuse_width(int(number[:12]), "a width or precision in a format spec")
    _refuse_text(len(fmt) + count * text_size((args, kwargs)), "the formatted text")


def indented_json_size(value: Any, indent: int, limit: int = MAX_TEXT) -> int:
    """About how many characters ``json.dumps(value, indent=indent)`` makes; stops counting once past ``limit``.

    Each item of a list or a dict goes on its own line, indented by its depth times ``indent``.
    """
    total = text_size(value, limit)
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack and total <= limit:
        item, depth = stack.pop()
        children = list(item.values()) if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else ()
        total += (len(children) + 1) * (depth * indent + 1)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return total


def check_tojson(value: Any, indent: Any) -> None:
    """Refuse a tojson indent that is not a small number, or whose indented result would be too large."""
    if indent is None:
        return
    if not isinstance(indent, int) or isinstance(indent, bool) or not 0 <= indent <= MAX_JSON_INDENT:
        raise TemplateLimit(f"the tojson filter's indent must be a number from 0 to {MAX_JSON_INDENT} "
                            f"(got {shown_value(indent)})")
    _refuse_text(indented_json_size(value, indent), "the indented JSON")


def shown_value(value: Any) -> str:
    """A value as a refusal quotes it: its type for anything but a short number or string."""
    if isinstance(value, (int, float, str)) and len(text := repr(value)) <= 40:
        return text
    return f"a {type(value).__name__}"


def check_strftime(fmt: Any) -> None:
    """Refuse a strftime format whose result could be too large (a directive makes at most ~64 characters)."""
    if isinstance(fmt, str):
        _refuse_text(len(fmt) + 64 * fmt.count("%"), "the strftime text")


def safe_method(obj: Any, name: str) -> bool:
    """May a template call the method ``name`` of ``obj`` (see SAFE_METHODS)?"""
    return any(isinstance(obj, types_) and name in names for types_, names in SAFE_METHODS)


def _materialise(items: Any) -> Any:
    """A sized version of ``items`` (a generator is read, at most MAX_ITEMS + 1 of it)."""
    if isinstance(items, (str, list, tuple, dict, set, frozenset, range)):
        return items
    taken = list(itertools.islice(iter(items), MAX_ITEMS + 1))
    if len(taken) > MAX_ITEMS:
        raise TemplateLimit(f"a sequence of more than {MAX_ITEMS:,} items")
    return taken


def check_join(separator: str, items: Any) -> Any:
    """Refuse a join whose result is too large; returns the items (read, when they were a generator)."""
    items = _materialise(items)
    _refuse_text(text_size(items) + len(separator) * len(items), "the joined text")
    return items


def check_replace(text: str, old: str, new: str) -> None:
    count = text.count(old) if old else len(text) + 1
    _refuse_text(len(text) + count * len(new), "the text after replace")


# ------------------------------------------------------------------------------------------- str methods
def _check_str_method(obj: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Pre-check a str method call that could make a large string; returns the (possibly read) arguments."""
    if name in ("ljust", "rjust", "center", "zfill"):
        width = args[0] if args else kwargs.get("width")
        _refuse_width(width, f"str.{name} width", MAX_TEXT)
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _refuse_text(len(obj) + obj.count("\t") * max(tabsize, 0), "the text after expandtabs")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        check_replace(obj, args[0], args[1])
    elif name == "join" and args:
        args = (check_join(obj, args[0]), *args[1:])
    elif name in ("format", "format_map"):
        mapping = args[0] if name == "format_map" and args else kwargs
        check_format(obj, args if name == "format" else (), mapping if isinstance(mapping, dict) else {})
    return args


# ---------------------------------------------------------------------------------------------- filters
def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a Jinja filter) with its input and the size of what it makes checked."""
    skip = 1 if _PassArg.from_obj(func) is not None else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        value, rest = (args[skip], args[skip + 1:]) if len(args) > skip else (None, ())
        _refuse_text(text_size(value), f"the input of the {name!r} filter")
        if name == "center":
            _refuse_width(rest[0] if rest else kwargs.get("width"), "the center filter's width", MAX_TEXT)
        elif name == "indent":
            width = rest[0] if rest else kwargs.get("width", 4)
            lines = str(value).count("\n") + 1
            per_line = width if isinstance(width, int) else len(str(width))
            _refuse_text(len(str(value)) + lines * max(per_line, 0), "the indented text")
        elif name in ("batch", "slice"):
            _refuse_width(rest[0] if rest else None, f"the {name} filter's count", MAX_ITEMS)
        elif name == "replace" and len(rest) >= 2:
            check_replace(str(value), str(rest[0]), str(rest[1]))
        elif name == "join":
            separator = rest[0] if rest else kwargs.get("d", "")
            value = check_join(str(separator), value)
            args = (*args[:skip], value, *rest)
        elif name == "format":
            check_printf(str(value), (rest, kwargs))
        elif name == "tojson":
            check_tojson(value, rest[0] if rest else kwargs.get("indent"))
        result = func(*args, **kwargs)
        if not isinstance(result, types.GeneratorType):
            _refuse_text(text_size(result), f"the result of the {name!r} filter")
        return result

    return guarded


# ------------------------------------------------------------------------------------------ compilation
class _BoundedCodeGenerator(CodeGenerator):
    """Compiles loops to count their iterations and ``~`` to check the size of what it joins."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        node = copy.copy(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("counted"), [node.iter], [], None, None)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.guarded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _budget(context: Context) -> Budget | None:
    budget = context.get(BUDGET_KEY)
    return budget if isinstance(budget, Budget) else None


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, bounded: see the module's description."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False,
                         optimized=False, finalize=self._finalize)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items() if name in SAFE_FILTERS}
        self.globals = {name: self.globals[name] for name in ("range", "dict", "namespace")}

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """Jinja's own rules, and a method only when it is on the allow-list (data attributes stay readable)."""
        if not super().is_safe_attribute(obj, attr, value):
            return False
        return not callable(value) or isinstance(obj, Namespace) or safe_method(obj, attr)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        return self.undefined(f"{type(obj).__name__}.{attribute} is not allowed in templates (see 'Templates "
                              "and variables' in docs/writing-cases.md for what is)", name=attribute, obj=obj,
                              exc=SecurityError)

    @staticmethod
    def _finalize(value: Any) -> Any:
        _refuse_text(text_size(value), "a printed value")
        return value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget(context)
        if budget is not None:
            budget.tick()
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and ints and right > 0:
            if max(abs(left).bit_length(), 1) * right > MAX_INT_BITS and abs(left) > 1:
                raise TemplateLimit(f"a power with a result of more than {MAX_INT_BITS:,} bits")
        elif operator == "*" and ints:
            if abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"a product of more than {MAX_INT_BITS:,} bits")
        elif operator == "*":
            seq, count = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and count > 0:
                _refuse_text(text_size(seq) * count, "a repeated string or list")
                if not isinstance(seq, str) and len(seq) * count > MAX_ITEMS:
                    raise TemplateLimit(f"a repeated list of more than {MAX_ITEMS:,} items")
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _refuse_text(text_size(left) + text_size(right), "a joined string or list")
            if not isinstance(left, str) and len(left) + len(right) > MAX_ITEMS:
                raise TemplateLimit(f"a joined list of more than {MAX_ITEMS:,} items")
        elif operator == "%" and isinstance(left, str):
            check_printf(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _budget(__context)
        if budget is not None:
            budget.tick()
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str) and isinstance(target, (types.BuiltinMethodType, types.MethodType)):
            public = {k: v for k, v in kwargs.items() if not k.startswith("_")}
            args = _check_str_method(owner, target.__name__, args, public)
        elif isinstance(owner, (date, day_time)) and getattr(target, "__name__", "") == "strftime":
            check_strftime(args[0] if args else kwargs.get("format"))
        result = super().call(__context, __obj, *args, **kwargs)
        if not isinstance(result, (types.GeneratorType, Iterator)):
            _refuse_text(text_size(result), "the result of a call")
        return result

    @pass_context
    def counted(self, context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
        """A loop's items, each counted against the rendering's budget."""
        budget = _budget(context)
        for item in iterable:
            if budget is not None:
                budget.tick()
            yield item

    @staticmethod
    def guarded_concat(parts: tuple[Any, ...]) -> str:
        """``a ~ b``: refused when the result would be too large."""
        _refuse_text(sum(text_size(p) for p in parts), "a string joined with ~")
        return "".join(map(str, parts))
