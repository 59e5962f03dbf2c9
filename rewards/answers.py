"""Final-answer extraction and safe comparison of answers, shared by the verifiers.

Model completions are untrusted text. Nothing here evaluates it: no ``eval``/``exec``, and no sympy
``parse_expr``/``sympify`` (both call ``eval``). Plain numbers, fractions, decimals and percentages
are read by `parse_number`, a regular-expression reader into `fractions.Fraction`. Everything else
goes to math-verify's LaTeX parser (latex2sympy2, a grammar, no ``eval``) only after `latex_guard`
has bounded its size: length, brace nesting, digits per number, exponents, factorials and big
operators. Those bounds keep each call to milliseconds; the verifier pool's timeout, memory limit and
CPU-time limit are the backstop for whatever they miss.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache

MAX_COMPLETION_CHARS = 100_000  # only the last this many characters of a completion are read
MAX_ANSWER_CHARS = 200  # longer extracted answers are compared as strings only
MAX_NUMBER_DIGITS = 60  # digits in one literal
MAX_DEPTH = 12  # brace/parenthesis nesting
MAX_EXPONENT = 1000  # |literal exponent| after ^
MAX_FACTORIAL = 200  # n! with a literal n

_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_NUMBER_IN_TEXT = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?")


def tail(text: str) -> str:
    return text[-MAX_COMPLETION_CHARS:] if len(text) > MAX_COMPLETION_CHARS else text


def last_braced(text: str, command: str = "\\boxed") -> str | None:
    """The argument of the last ``\\boxed{...}`` (or another command), braces balanced; else None."""
    start = text.rfind(command + "{")
    if start < 0:
        return None
    i, depth = start + len(command) + 1, 1
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion: the last ``<answer>...</answer>``, else the last
    ``\\boxed{...}``, else the text after the last ``#`` (``####`` included) up to the end of its line,
    else the last number. Linear time in the (tail of the) completion."""
    text = tail(completion)
    tags = _TAG.findall(text[-20_000:])
    if tags:
        return tags[-1].strip() or None
    boxed = last_braced(text)
    if boxed is not None:
        return boxed.strip() or None
    if "#" in text:
        after = text.rsplit("#", 1)[1].strip()
        return after.split("\n", 1)[0].strip() or None
    numbers = _NUMBER_IN_TEXT.findall(text[-10_000:])
    return numbers[-1] if numbers else None


# --- normalisation -------------------------------------------------------------------------------
_WRAPPERS = ("\\boxed", "\\text", "\\textbf", "\\mathrm", "\\mbox", "\\fbox")
_DROP = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |~|\\displaystyle|\$")


def normalize(ans: str) -> str:
    """Strip the notation around an answer: ``$``, ``\\boxed{}``/``\\text{}`` wrappers, spacing
    commands, a leading ``x =``, a trailing period. Bounded: works on at most MAX_ANSWER_CHARS * 4."""
    s = ans.strip()[: MAX_ANSWER_CHARS * 4]
    s = "".join(ch for ch in s if ch >= " " or ch in "\t\n")  # control characters
    for _ in range(4):
        before = s
        for w in _WRAPPERS:
            if s.startswith(w + "{") and s.endswith("}"):
                inner = last_braced(s, w)
                if inner is not None and len(inner) == len(s) - len(w) - 2:
                    s = inner.strip()
        s = _DROP.sub("", s).strip()
        s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5"
        s = s.rstrip(".").strip()
        if s == before:
            break
    return s


# --- numbers -------------------------------------------------------------------------------------
_DEC = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_RE_DEC = re.compile(rf"([-+])?\s*\\?\$?\s*({_DEC})\s*(\\?%)?")
_RE_SLASH = re.compile(rf"([-+])?\s*({_DEC})\s*/\s*([-+])?\s*({_DEC})")
_FRAC_ARG = r"(?:\{\s*([-+])?\s*(" + _DEC + r")\s*\}|(\d))"  # {-12} or a single digit (\frac12)
_RE_FRAC = re.compile(r"([-+])?\s*\\[dt]?frac\s*" + _FRAC_ARG + r"\s*" + _FRAC_ARG)


def _dec(s: str) -> Fraction | None:
    digits = sum(c.isdigit() for c in s)
    if digits == 0 or digits > MAX_NUMBER_DIGITS:
        return None
    return Fraction(s.replace(",", ""))  # a validated decimal literal: no exponent, no eval


def _sign(*signs: str | None) -> int:
    return -1 if sum(s == "-" for s in signs) % 2 else 1


def parse_number(ans: str) -> tuple[Fraction, bool] | None:
    """(value, is_percent) of a plain number, ``a/b``, ``\\frac{a}{b}`` (``\\dfrac``, ``\\frac12``),
    ``50%``/``50\\%``, ``$1,000``, with signs; None for anything else. Never evaluates the text."""
    s = normalize(ans)
    if len(s) > MAX_ANSWER_CHARS:
        return None
    m = _RE_DEC.fullmatch(s)
    if m:
        v = _dec(m.group(2))
        return None if v is None else (_sign(m.group(1)) * v, bool(m.group(3)))
    m = _RE_SLASH.fullmatch(s)
    if m:
        a, b = _dec(m.group(2)), _dec(m.group(4))
        if a is None or b is None or b == 0:
            return None
        return _sign(m.group(1), m.group(3)) * a / b, False
    m = _RE_FRAC.fullmatch(s)
    if m:
        a = _dec(m.group(3) or m.group(4))
        b = _dec(m.group(6) or m.group(7))
        if a is None or b is None or b == 0:
            return None
        return _sign(m.group(1), m.group(2), m.group(5)) * a / b, False
    return None


def numbers_equal(pred: tuple[Fraction, bool], gold: tuple[Fraction, bool], rel_tol: float = 1e-6) -> bool:
    """A percentage matches either reading: 50% equals 0.5 and also 50 (a "what percent" gold)."""
    (p, p_pct), (g, g_pct) = pred, gold
    cands_p = [p, p / 100] if p_pct else [p]
    cands_g = [g, g / 100] if g_pct else [g]
    for a in cands_p:
        for b in cands_g:
            if a == b or abs(a - b) <= Fraction(rel_tol) * max(1, abs(b)):
                return True
    return False


# --- LaTeX through math-verify, bounded ---------------------------------------------------------
_BIG_OPS = re.compile(r"\\(?:sum|prod|int|iint|iiint|oint|lim|coprod|bigcup|bigcap)(?![A-Za-z])")
_EXP = re.compile(r"\^\s*(\{|[-+]?\d+|\\?[A-Za-z])")
_FACT = re.compile(r"(\d+)\s*!")
_BINOM = re.compile(r"\\[dt]?binom")


def _depth(s: str) -> int:
    depth = best = 0
    for c in s:
        if c in "{([":
            depth += 1
            best = max(best, depth)
        elif c in "})]":
            depth -= 1
    return best


def _braced_at(s: str, i: int) -> str:
    """The text inside the brace group opening at s[i] (to the end when it never closes)."""
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1:j]
    return s[i + 1:]


def latex_guard(s: str) -> str | None:
    """Why `s` must not go to the LaTeX parser (a short reason), or None when it may."""
    if len(s) > MAX_ANSWER_CHARS:
        return "too_long"
    if _depth(s) > MAX_DEPTH:
        return "too_deep"
    if any(len(run) > MAX_NUMBER_DIGITS for run in re.findall(r"\d+", s)):
        return "huge_number"
    if _BIG_OPS.search(s):
        return "big_operator"
    if "!!" in s or any(int(n) > MAX_FACTORIAL for n in _FACT.findall(s)) or re.search(r"[})\]]\s*!", s):
        return "factorial"
    if _BINOM.search(s) and any(len(n) > 4 for n in re.findall(r"\d+", s)):
        return "binomial"
    for m in _EXP.finditer(s):
        tok = m.group(1)
        if tok == "{":
            arg = _braced_at(s, m.start(1))
            if "^" in arg or "!" in arg:
                return "power_tower"
            if any(int(n) > MAX_EXPONENT for n in re.findall(r"\d+", arg)):
                return "huge_exponent"
        elif tok.lstrip("+-").isdigit() and int(tok.lstrip("+-")) > MAX_EXPONENT:
            return "huge_exponent"
    if re.search(r"\^\s*\{?\s*\(", s):
        return "power_tower"
    return None


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=4096)
def parse_latex(s: str):
    """math-verify's LaTeX extraction of ``$s$`` (a list; empty when nothing parsed). `s` must have
    passed `latex_guard`. math-verify's own timeout (``signal.alarm``) is used on a main thread."""
    from math_verify import LatexExtractionConfig, parse

    timeout = 2 if _on_main_thread() else None
    out = parse(f"${s}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=timeout)
    return out if any(not isinstance(x, str) for x in out) else []  # only the raw string back: unparsed


def math_equal(pred: str, gold: str, rel_tol: float = 1e-6) -> tuple[bool, str]:
    """(equal, how): ``how`` is exact | numeric | latex | no_match | guard:<reason> | unparsed."""
    p, g = normalize(pred), normalize(gold)
    if p == g and p:
        return True, "exact"
    pn, gn = parse_number(p), parse_number(g)
    if pn is not None and gn is not None:
        return numbers_equal(pn, gn, rel_tol), "numeric"
    for s in (p, g):
        why = latex_guard(s)
        if why:
            return False, f"guard:{why}"
    gp, pp = parse_latex(g), parse_latex(p)
    if not gp or not pp:
        return False, "unparsed"
    from math_verify import verify

    ok = verify(gp, pp, timeout_seconds=2 if _on_main_thread() else None)
    return bool(ok), "latex" if ok else "no_match"


def check_math_gold(gold) -> None:
    """Raise ValueError when a gold answer cannot be compared (missing, wrong type, unparseable)."""
    if gold is None:
        raise ValueError("no answer")
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise ValueError(f"answer has type {type(gold).__name__}, expected a string or a number")
    s = normalize(str(gold))
    if not s:
        raise ValueError("empty answer")
    if parse_number(s) is not None:
        return
    why = latex_guard(s)
    if why:
        raise ValueError(f"answer {s[:60]!r} is outside the safe parser's bounds ({why})")
    if not parse_latex(s):
        raise ValueError(f"answer {s[:60]!r} does not parse as a number or LaTeX")
