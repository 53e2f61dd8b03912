"""Jinja's sandbox, bounded: templates may come from strangers, and Jinja's sandbox keeps them
away from Python's internals, not from memory and time.

`{{ 'x' * 1000000000 }}` allocates 4 GB (while parsing, even: Jinja folds constants), `range(10**9)`
raises OverflowError and a template that includes itself RecursionError. `BoundedSandbox` bounds
every value a render builds (MAX_SIZE characters or items beyond the variables it was given), the
work it does (MAX_STEPS loop iterations, calls and items measured) and its output, and turns every
failure into a jinja2.TemplateError, which the stages record as the row's failure with its reason.
`static_problem` folds a template's constant expressions as a render would, so `synth validate`
finds the ones that fail every render.
"""

from __future__ import annotations

import functools
import inspect
import re
import string
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Namespace, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from jinja2.visitor import NodeTransformer

MAX_SIZE = 1_000_000  # characters (or items) a render may build beyond the size of its variables
MAX_STEPS = 2_000_000  # loop iterations, calls and items measured in one render
MAX_SECONDS = 5.0  # one render: macros calling macros are slow long before they are many
MAX_INT_BITS = 16_384  # no prompt needs a larger number, and computing one can take minutes
MAX_TEMPLATE_BYTES = 2**20


class TemplateRefused(jinja2.TemplateNotFound):
    """A template synth will not read: a link out of its folder, not a regular file, too large or not UTF-8."""


class MissingValue(jinja2.UndefinedError):
    """`{{ x }}` where x is None: rendered, it would send the word "None" in the prompt."""


class RenderError(jinja2.TemplateRuntimeError):
    """Any other failure of a template (OverflowError, RecursionError, TypeError...), as a TemplateError."""


def _raise(message: str):
    raise jinja2.TemplateError(message)


# ---- the budget of one render ----


@dataclass
class _Budget:
    limit: int  # the largest value this render may build (characters or items); its output may be twice that
    steps: int = 0
    measured: dict[int, tuple[Any, int]] = field(default_factory=dict)  # id -> (collection, weight)
    deadline: float = field(default_factory=lambda: time.monotonic() + MAX_SECONDS)
    next_clock: int = 0

    def spend(self, steps: int) -> None:
        self.steps += steps
        if self.steps > MAX_STEPS:
            raise SecurityError(f"the template did more than {MAX_STEPS:,} loop steps and calls in one render")
        if self.steps >= self.next_clock:  # the clock is read every thousand steps
            self.next_clock = self.steps + 1000
            if time.monotonic() > self.deadline:
                raise SecurityError(f"the template took more than {MAX_SECONDS:g} seconds to render")

    def too_big(self) -> SecurityError:
        return SecurityError(
            f"the template makes a value of more than {self.limit:,} characters or items, "
            f"the most it may build ({MAX_SIZE:,} beyond the size of its variables)"
        )


_budget: ContextVar[_Budget | None] = ContextVar("synth_template_budget", default=None)


def _current() -> _Budget:
    """This render's budget; a fresh one where Jinja evaluates constants while compiling."""
    return _budget.get() or _Budget(MAX_SIZE)


_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_COLLECTIONS = (list, tuple, set, frozenset, *_VIEWS)
_SEQUENCES = (str, bytes, list, tuple)


def _weight(value: Any, stop: float) -> tuple[int, int]:
    """Roughly how many characters `value` prints as (its strings and digits, 4 per item of its
    collections), counted no further than past `stop`; and how many items that visited."""
    total, visited, stack = 0, 0, [value]
    while stack and total <= stop:
        item = stack.pop()
        visited += 1
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, Namespace):
            stack.append(object.__getattribute__(item, "_Namespace__attrs"))
        elif isinstance(item, (dict, *_COLLECTIONS)):
            total += 4 * len(item)
            if total <= stop:
                stack.extend(item.items() if isinstance(item, dict) else item)
        else:
            total += 1
    return total, visited


def _measure(value: Any, budget: _Budget) -> int:
    """The weight of `value`, its visits paid from the budget; a large collection is measured once
    per render (the sandbox keeps templates from changing one)."""
    big = isinstance(value, (dict, *_COLLECTIONS)) and len(value) >= 64
    if big and id(value) in budget.measured:
        return budget.measured[id(value)][1]
    weight, visited = _weight(value, budget.limit)
    budget.spend(visited)
    if big:
        budget.measured[id(value)] = (value, weight)
    return weight


def _checked(value: Any, budget: _Budget) -> Any:
    if _measure(value, budget) > budget.limit:
        raise budget.too_big()
    return value


def _arguments(budget: _Budget, args: tuple, kwargs: dict) -> int:
    """The weight of a call's arguments, which must be within the limit."""
    # _loop_vars and _block_vars are Jinja's own, holding the loop's variables
    values = [*args, *(v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars"))]
    weight = sum(_measure(v, budget) for v in values)
    if weight > budget.limit:
        raise budget.too_big()
    return weight


# ---- estimates: the size of a result before computing it ----

_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_width(number: str, what: str, budget: _Budget) -> None:
    if number == "*" or (number and (len(number) > 9 or int(number) > budget.limit)):
        raise SecurityError(f"{what} '{number}' is wider than the {budget.limit:,} characters a template may build")


def _printf_size(fmt: str, arguments: int, budget: _Budget) -> int:
    """The size of `fmt % arguments`: each conversion may use the whole of the arguments (with
    %(name)s, many times); a width must be a number within the limit."""
    conversions = _PRINTF.findall(fmt)
    for width, precision in conversions:
        _check_width(width, "the % format width", budget)
        _check_width(precision, "the % format precision", budget)
    return len(fmt) + len(conversions) * arguments


def _check_format(fmt: str, budget: _Budget) -> None:
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec and "{" in spec:
            raise SecurityError("str.format with a nested {} in a format spec is not allowed in templates")
        for number in re.findall(r"\d+", spec or ""):
            _check_width(number, "the format width", budget)


def _format_size(fmt: str, arguments: int) -> int:
    fields = sum(1 for _, name, _, _ in string.Formatter().parse(fmt) if name is not None)
    return len(fmt) + fields * arguments


def _replace_size(s: str, old: str, new: str, count: int | None = None) -> int:
    found = len(s) + 1 if old == "" else s.count(old)
    if count is not None and count >= 0:
        found = min(found, count)
    return len(s) + found * (len(new) - len(old))


def _breaks(s: str) -> int:
    return s.count(" ") + s.count("\n") + s.count("\t") + s.count("-") + 1


def _refuse_binop(operator: str, left: Any, right: Any, budget: _Budget) -> None:
    """Raise before `left operator right` is computed when its result would be too large."""
    if isinstance(left, int) and isinstance(right, int):
        bits = 0
        if operator == "*":
            bits = left.bit_length() + right.bit_length()
        elif operator == "**" and abs(left) > 1 and right > 0:
            bits = abs(left).bit_length() * right
        if bits > MAX_INT_BITS:
            raise SecurityError(f"'{operator}' makes a number of more than {MAX_INT_BITS:,} bits")
        return
    size = 0
    if operator == "*":
        sequence, times = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(sequence, _SEQUENCES) and isinstance(times, int):
            size = _measure(sequence, budget) * max(times, 0)
    elif operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        size = _measure(left, budget) + _measure(right, budget)
    elif operator == "%" and isinstance(left, str):
        size = _printf_size(left, _measure(right, budget), budget)
    if size > budget.limit:
        raise budget.too_big()


def _method_size(method: Any, args: tuple, arguments: int, budget: _Budget) -> int | None:
    """The size of what a str method returns, for the methods whose result can be far larger than
    their string and arguments (`arguments`: their weight); None for the others."""
    target = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format
    owner, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
    if not isinstance(owner, (str, bytes)):
        return None
    if name in ("format", "format_map") and isinstance(owner, str):
        return _format_size(owner, arguments)
    if not args:
        return None
    if name in ("ljust", "rjust", "center", "zfill") and isinstance(args[0], int):
        return max(len(owner), args[0])
    if name == "expandtabs" and isinstance(args[0], int):
        return len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * max(args[0], 0)
    if name == "replace" and isinstance(owner, str) and len(args) >= 2:
        return _replace_size(owner, str(args[0]), str(args[1]), args[2] if len(args) > 2 else None)
    if name == "join" and isinstance(args[0], list):
        return _joined_size(args[0], owner, budget)
    return None


def _joined_size(items: list, separator: Any, budget: _Budget) -> int:
    return sum(_measure(i, budget) for i in items) + max(len(items) - 1, 0) * len(str(separator))


def _filter_size(name: str, arguments: dict, budget: _Budget) -> int | None:
    """The size of what a built-in filter returns, for the filters whose result can be far larger
    than their input (`center(1000000000)`); None for the others."""
    a = arguments
    if name == "center":
        return max(len(str(a["value"])), int(a.get("width", 80)))
    if name == "indent":
        s, width = str(a["s"]), a.get("width", 4)
        return len(s) + (s.count("\n") + 1) * (len(width) if isinstance(width, str) else max(int(width), 0))
    if name == "wordwrap":
        s, wrap = str(a["s"]), a.get("wrapstring") or "\n"
        return len(s) + (len(s) // max(int(a.get("width", 79)), 1) + _breaks(s)) * len(str(wrap))
    if name == "replace":
        return _replace_size(str(a["s"]), str(a["old"]), str(a["new"]), a.get("count"))
    if name in ("join", "sum"):
        key = "value" if name == "join" else "iterable"
        a[key] = list(a[key])  # measured, then joined: a generator could not be read twice
        extra = _measure(a.get("start", 0), budget) if name == "sum" else 0
        return _joined_size(a[key], a.get("d", "") if name == "join" else "", budget) + extra
    if name == "format":
        return _printf_size(str(a["value"]), _measure((a.get("args"), a.get("kwargs")), budget), budget)
    if name in ("batch", "slice"):
        count = int(a.get("linecount" if name == "batch" else "slices", 1))
        fill = a.get("fill_with")
        pads = count * (_measure(fill, budget) + 4) if name == "slice" or fill is not None else 0
        return _measure(a["value"], budget) + pads
    if name == "tojson":
        indent = a.get("indent")
        width = len(indent) if isinstance(indent, str) else (indent or 0)
        return _measure(a["value"], budget) * (1 + max(int(width), 0))
    if name == "urlize":
        s = str(a["value"])
        extra = len(str(a.get("target") or "")) + len(str(a.get("rel") or "")) + 80
        return 2 * len(s) + _breaks(s) * extra
    return None


def _bounded_filter(name: str, func: Any) -> Any:
    normal = inspect.unwrap(func)  # the sync function behind an async variant
    passes = getattr(func, "jinja_pass_arg", None) is not None  # Jinja passes the context or environment first
    dropped = passes and getattr(normal, "jinja_pass_arg", None) is None  # ...which an async variant drops
    signature = inspect.signature(normal)

    @functools.wraps(func)
    def bounded(*args, **kwargs):
        budget = _current()
        budget.spend(1)
        _arguments(budget, args[1:] if passes else args, kwargs)
        head, rest = (args[:1], args[1:]) if dropped else ((), args)
        bound = signature.bind(*rest, **kwargs)
        size = _filter_size(name, bound.arguments, budget)
        if size is not None and size > budget.limit:
            raise budget.too_big()
        return _checked(func(*head, *bound.args, **bound.kwargs), budget)

    return bounded


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if int(n) * int(max) > 100_000:
        raise SecurityError("lipsum() asked for more than 100,000 words")
    return generate_lorem_ipsum(n, html, min, max)


class _Namespace(Namespace):
    """`namespace()`, whose attributes are the one place a value outlives a loop iteration: each
    assignment is measured, so doubling a string in a loop stops at the limit."""

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, _checked(value, _current()))


# ---- the environments ----


def _expression(node: nodes.Node) -> str | None:
    """`row.topic` for the node of {{ row.topic }}, to name it in an error; None when not a plain name."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        base = _expression(node.node)
        return base and f"{base}.{node.attr}"
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        base = _expression(node.node)
        return base and f"{base}[{node.arg.value!r}]"
    return None


class _Guard(NodeTransformer):
    """Routes what the sandbox cannot intercept through the environment: `~` (concatenation),
    the iterable of each `for` (every iteration is a step) and each `{{ }}` (measured before it is
    turned into text, and checked for None)."""

    def __init__(self, name: str | None):
        self.name = name

    @staticmethod
    def _call(method: str, *args: nodes.Expr, lineno: int) -> nodes.Call:
        return nodes.Call(nodes.EnvironmentAttribute(method), list(args), [], None, None, lineno=lineno)

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return self._call("_concat", *node.nodes, lineno=node.lineno)

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = self._call("_iterate", node.iter, lineno=node.lineno)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        node = self.generic_visit(node)
        node.nodes = [child if isinstance(child, nodes.TemplateData) else self._show(child) for child in node.nodes]
        return node

    def _show(self, child: nodes.Expr) -> nodes.Call:
        where = f"template '{self.name}' line {child.lineno}" if self.name else f"line {child.lineno}"
        expression = _expression(child) or ""
        return self._call("_show", child, nodes.Const(where), nodes.Const(expression), lineno=child.lineno)


class BoundedTemplate(jinja2.Template):
    def render(self, *args: Any, **kwargs: Any) -> str:
        """Render within a budget sized by the variables; any failure is a jinja2.TemplateError."""
        variables = dict(*args, **kwargs)
        budget = _Budget(MAX_SIZE + _weight(variables, float("inf"))[0])
        token = _budget.set(budget)
        try:
            parts, size = [], 0
            for part in self.generate(variables):
                size += len(part)
                if size > 2 * budget.limit:
                    raise SecurityError(f"the template's output is longer than {2 * budget.limit:,} characters")
                parts.append(part)
            return "".join(parts)
        except jinja2.TemplateError:
            raise
        except RecursionError:
            raise RenderError("templates include or call each other too deeply (RecursionError)") from None
        except Exception as exc:
            raise RenderError(f"{type(exc).__name__}: {exc}") from None
        finally:
            _budget.reset(token)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with every value a render builds, its work and its output bounded.
    Intercepting the operators also stops Jinja folding `'x' * 1000000000` while compiling."""

    template_class = BoundedTemplate
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.filters = {name: _bounded_filter(name, func) for name, func in self.filters.items()}
        self.globals.update(lipsum=_lipsum, namespace=_Namespace)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        budget = _current()
        budget.spend(1)
        _refuse_binop(operator, left, right, budget)
        return _checked(super().call_binop(context, operator, left, right), budget)

    def call(self, context, obj, /, *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.spend(1)
        if getattr(obj, "__name__", "") == "join" and isinstance(getattr(obj, "__self__", None), str) and args:
            args = (list(args[0]), *args[1:])  # measured, then joined: a generator could not be read twice
        size = _method_size(obj, args, _arguments(budget, args, kwargs), budget)
        if size is not None and size > budget.limit:
            raise budget.too_big()
        return _checked(super().call(context, obj, *args, **kwargs), budget)

    def wrap_str_format(self, value: Any):
        wrapper = super().wrap_str_format(value)
        if wrapper is not None:
            _check_format(value.__self__, _current())
        return wrapper

    def compile(self, source, name=None, filename=None, raw=False, defer_init=False):
        """Compile, with Python's own failures (the lexer's int() of a 5,000-digit number, nesting
        too deep to parse) reported as syntax errors."""
        try:
            return super().compile(source, name, filename, raw, defer_init)
        except jinja2.TemplateError:
            raise
        except RecursionError:
            raise jinja2.TemplateSyntaxError("nested too deeply to compile", 0, name, filename) from None
        except Exception as exc:
            raise jinja2.TemplateSyntaxError(f"cannot be compiled ({exc})", 0, name, filename) from None

    def _generate(self, source, name, filename, defer_init=False):
        return super()._generate(_Guard(name).visit(source), name, filename, defer_init)

    @jinja2.pass_eval_context
    def _concat(self, eval_ctx, *parts: Any) -> str:
        return markup_join(parts) if eval_ctx.autoescape else str_join(parts)

    def _iterate(self, iterable: Any):
        budget = _current()
        for item in iterable:
            budget.spend(1)
            yield item

    def _show(self, value: Any, where: str, expression: str) -> Any:
        return value


# ---- what `synth validate` checks ----

_UNKNOWN = object()


class _Found(Exception):
    def __init__(self, lineno: int, message: str):
        super().__init__(message)
        self.lineno = lineno


def _attempt(node: nodes.Node, func: Any, *args: Any) -> Any:
    try:
        return func(*args)
    except (SecurityError, OverflowError) as exc:
        raise _Found(node.lineno, str(exc)) from None
    except Exception:
        return _UNKNOWN


def _evaluate(node: nodes.Node, env: BoundedSandbox) -> Any:
    """Fold the constant expressions under `node` as a render would, so that one that fails every
    render (`'x' * 1000000000`, `range(1000000000)`) is found by `synth validate`; _UNKNOWN where
    a value depends on the variables."""
    if isinstance(node, nodes.BinExpr) and node.operator in env.intercepted_binops:
        left, right = _evaluate(node.left, env), _evaluate(node.right, env)
        if left is _UNKNOWN or right is _UNKNOWN:
            return _UNKNOWN
        return _attempt(node, env.call_binop, None, node.operator, left, right)
    if isinstance(node, (nodes.Call, nodes.Filter)) and not node.kwargs and not node.dyn_args:
        is_range = isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range"
        target = _evaluate(node.node, env) if node.node is not None and not is_range else _UNKNOWN
        args = [_evaluate(arg, env) for arg in node.args]
        if any(a is _UNKNOWN for a in args):
            return _UNKNOWN
        if is_range:
            return _attempt(node, env.globals["range"], *args)
        func = env.filters.get(node.name) if isinstance(node, nodes.Filter) else None
        if target is not _UNKNOWN and func is not None and getattr(func, "jinja_pass_arg", None) is None:
            return _attempt(node, func, target, *args)
        return _UNKNOWN
    values = [_evaluate(child, env) for child in node.iter_child_nodes()]
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, (nodes.List, nodes.Tuple)) and all(v is not _UNKNOWN for v in values):
        return values if isinstance(node, nodes.List) else tuple(values)
    return _UNKNOWN


def static_problem(env: BoundedSandbox, source: str) -> str | None:
    token = _budget.set(_Budget(MAX_SIZE))
    try:
        _evaluate(env.parse(source), env)
    except _Found as found:
        return f"line {found.lineno}: {found}"
    except RecursionError:
        return "nested too deeply to check"
    finally:
        _budget.reset(token)
    return None
