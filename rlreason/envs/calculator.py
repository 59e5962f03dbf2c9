"""The calculator tool: exact arithmetic on what a model writes, never `eval`.

The expression is parsed with `ast` and only numbers, + - * / // % **, unary signs and parentheses are
evaluated, on Python's exact integers and `Fraction`s (so 1/3 * 3 is 1, not 0.9999999999999999). Powers are
limited (|exponent| <= 64, base digits x exponent <= 10,000) so that 9**9**9 is refused instead of
running for ever. Any other construct (names, calls, attributes) is an error. The result is written as an
integer, a finite decimal, or a fraction when it has no finite decimal form.
"""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

MAX_EXPONENT = 64
MAX_POWER_DIGITS = 10_000
MAX_CHARS = 500

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate (the message is the observation)."""


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, as text; CalculatorError for anything else."""
    expression = expression.strip()
    if not expression:
        raise CalculatorError("empty expression")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"not an arithmetic expression: {e.msg}") from None
    return render(_value(tree.body))


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(node.value) if isinstance(node.value, int) else Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _value(node.operand)
        return v if isinstance(node.op, ast.UAdd) else -v
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _power(_value(node.left), _value(node.right))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if right == 0 and isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)):
            raise CalculatorError("division by zero")
        return Fraction(_BINARY[type(node.op)](left, right))
    raise CalculatorError(f"unsupported: {ast.unparse(node)!r} (numbers, + - * / // % ** and parentheses only)")


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise CalculatorError("only whole-number exponents")
    e = int(exponent)
    if abs(e) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {e} is beyond +-{MAX_EXPONENT}")
    digits = max(len(str(abs(base.numerator))), len(str(base.denominator)))
    if digits * abs(e) > MAX_POWER_DIGITS:
        raise CalculatorError("result too large")
    if base == 0 and e < 0:
        raise CalculatorError("division by zero")
    return base**e


def render(x: Fraction) -> str:
    """An integer, a finite decimal (denominator 2^a 5^b), or 'p/q'."""
    if x.denominator == 1:
        return str(x.numerator)
    d = x.denominator
    twos = fives = 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:
        return f"{x.numerator}/{x.denominator}"
    places = max(twos, fives)
    scaled = abs(x.numerator) * 10**places // x.denominator
    sign = "-" if x < 0 else ""
    return f"{sign}{scaled // 10**places}.{scaled % 10**places:0{places}d}"
