"""Verifiers: the reward functions of rlreason.

A verifier is a callable ``(completion: str, sample: dict) -> float`` (or returning an object with a
``score`` attribute, e.g. `VerifierResult`, whose other fields are logged), or a class whose
instances are such callables. Three ways to name one in ``reward.verifiers=[{name: ..., weight: ...}]``:

- a registered name: the built-ins (``math``, ``format``, ``gsm8k``, ``choice``, ``exact``, ``regex``,
  ``reasoning_gym``, ``code_tests``) or one added with ``@register("name")``;
- an import path ``module:attr`` (a module on ``sys.path``, e.g. ``my_team.verifiers:score``);
- a Python entry point in the group ``rlreason.verifiers`` of any installed package
  (``[project.entry-points."rlreason.verifiers"] team_judge = "team_pkg.judge:Judge"``).

A verifier entry's ``args`` become keyword arguments: of the call for a function, of the constructor
for a class. A verifier marked with `@batched` takes lists, ``(completions, samples) -> scores``; an
``async def`` verifier is awaited, many at once. A verifier may have a ``validate(sample)`` that raises
``ValueError`` for a data row it cannot score; the task loader uses it to report bad rows.

Verifiers run in `rewards.pool.VerifierPool`: worker processes with a wall-clock timeout, a CPU-time
limit and a memory limit per call. A timeout, an exception or a crash scores 0 and is counted; it
never stops training.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass, field
from typing import Callable, Protocol, Union

from rlreason.registry import Registry, load_attr


class Verifier(Protocol):
    def __call__(self, completion: str, sample: dict) -> Union[float, "VerifierResult"]: ...


@dataclass
class VerifierResult:
    score: float
    extras: dict = field(default_factory=dict)


class VerifierNotFound(LookupError):
    pass


# The verifier registry (rlreason/registry.py): built-ins by import path, so that naming one never imports
# the others' dependencies, and import paths are what the verifier processes receive.
VERIFIERS = Registry("verifier", "reward.verifier", error=VerifierNotFound)
BUILTIN: dict[str, str] = {
    "math": "rewards.math:math_verifier",
    "format": "rewards.format:format_verifier",
    "gsm8k": "rewards.gsm8k:gsm8k_verifier",
    "choice": "rewards.choice:choice_verifier",
    "exact": "rewards.text:exact_verifier",
    "regex": "rewards.text:regex_verifier",
    "reasoning_gym": "rewards.reasoning_gym:reasoning_gym_verifier",
    "code_tests": "rewards.code_tests:code_tests_verifier",
}
for _name, _path in BUILTIN.items():
    VERIFIERS.register_path(_name, _path)
ENTRY_POINT_GROUP = VERIFIERS.entry_point_group


def register(name: str) -> Callable:
    """Decorator: make a module-level function or class available as ``reward.verifier=<name>``.

    The module must be importable in the verifier processes (a package, or a module in the working
    directory): they receive the import path, not the object."""
    return VERIFIERS.register(name)


def batched(fn=None, *, batch_size: int = 64):
    """Decorator: the verifier takes ``(completions: list[str], samples: list[dict])`` and returns one
    score (or result) per completion. The pool calls it on up to `batch_size` completions at a time;
    one batch is one call for the timeout and the limits."""

    def deco(f):
        f.batched, f.batch_size = True, batch_size
        return f

    return deco(fn) if fn is not None else deco


def entry_points() -> dict[str, str]:
    """Verifiers that installed packages declare in the ``rlreason.verifiers`` entry-point group."""
    return VERIFIERS.entry_points()


def registry_names() -> list[str]:
    return VERIFIERS.names()


def import_path(spec: str) -> str:
    """The ``module:attr`` path of a registered name, an entry point's name or an import path."""
    return VERIFIERS.import_path(spec)


def resolve(spec: str) -> Callable:
    fn = load_attr(import_path(spec), f"verifier {spec!r}", VerifierNotFound)
    if not callable(fn):
        raise VerifierNotFound(f"verifier {spec!r} resolves to a non-callable {type(fn).__name__}")
    return fn


@dataclass
class Loaded:
    """A verifier ready to call: `call` is the function or the constructed instance, `args` bound."""

    call: Callable
    batched: bool = False
    is_async: bool = False
    batch_size: int = 1
    validate: Callable | None = None


_LOADED: dict[tuple[str, str], Loaded] = {}


def load(spec: str, args: dict | None = None) -> Loaded:
    """Resolve `spec` and bind `args`: a class is constructed with them, a function gets them as
    keyword arguments on every call. Cached per process: a class verifier is constructed once in
    each process that calls it (config check, data validation and pool share the driver's)."""
    key = (spec, json.dumps(args or {}, sort_keys=True, default=str))
    if key not in _LOADED:
        _LOADED[key] = _load(spec, args)
    return _LOADED[key]


def _load(spec: str, args: dict | None) -> Loaded:
    obj = resolve(spec)
    args = dict(args or {})
    if inspect.isclass(obj):
        try:
            owner = obj(**args)
        except TypeError as e:
            raise VerifierNotFound(f"verifier {spec!r}: cannot construct {obj.__name__}(**{args}): {e}") from None
        if not callable(owner):
            raise VerifierNotFound(f"verifier {spec!r}: instances of {obj.__name__} are not callable (define __call__)")
        call, probe = owner, owner.__call__
    else:
        owner = obj
        if args and not getattr(obj, "batched", False):
            try:
                inspect.signature(obj).bind("", {}, **args)
            except TypeError as e:
                raise VerifierNotFound(f"verifier {spec!r} does not take the arguments {sorted(args)}: {e}") from None
        call, probe = (functools.partial(obj, **args) if args else obj), obj
    is_batched = bool(getattr(owner, "batched", False))
    validate = getattr(owner, "validate", None)
    if validate is not None and args and owner is obj:  # a function's validate may take its args too
        try:
            inspect.signature(validate).bind({}, **args)
            validate = functools.partial(validate, **args)
        except (TypeError, ValueError):
            pass
    return Loaded(call=call, batched=is_batched, is_async=inspect.iscoroutinefunction(probe),
                  batch_size=max(1, int(getattr(owner, "batch_size", 64))) if is_batched else 1,
                  validate=validate)


def to_score(result) -> tuple[float, dict]:
    """Normalise a verifier's return value to (score, extras)."""
    if isinstance(result, (int, float, bool)):
        return float(result), {}
    score = getattr(result, "score", None)
    if score is None:
        raise TypeError(f"verifier returned {type(result).__name__}, expected a float or an object with .score")
    extras = getattr(result, "extras", None)
    if extras is None and hasattr(result, "__dict__"):
        extras = {k: v for k, v in vars(result).items() if k != "score"}
    return float(score), dict(extras or {})
