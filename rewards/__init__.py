"""Verifiers: the reward functions of rlreason.

A verifier is a callable ``(completion: str, sample: dict) -> float`` (or returning an object with a
``score`` attribute, e.g. `VerifierResult`, whose other fields are logged), or a class whose
instances are such callables. Three ways to name one in ``reward.verifiers=[{name: ..., weight: ...}]``:

- a registered name: the built-ins (``math``, ``format``, ``gsm8k``, ``choice``, ``exact``, ``regex``,
  ``reasoning_gym``) or one added with ``@register("name")``;
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
import importlib
import importlib.metadata
import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol, Union


class Verifier(Protocol):
    def __call__(self, completion: str, sample: dict) -> Union[float, "VerifierResult"]: ...


@dataclass
class VerifierResult:
    score: float
    extras: dict = field(default_factory=dict)


class VerifierNotFound(LookupError):
    pass


log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "rlreason.verifiers"

# name -> "module:attr"; import paths keep the registry usable from fresh worker processes.
BUILTIN: dict[str, str] = {
    "math": "rewards.math:math_verifier",
    "format": "rewards.format:format_verifier",
    "gsm8k": "rewards.gsm8k:gsm8k_verifier",
    "choice": "rewards.choice:choice_verifier",
    "exact": "rewards.text:exact_verifier",
    "regex": "rewards.text:regex_verifier",
    "reasoning_gym": "rewards.reasoning_gym:reasoning_gym_verifier",
}
_REGISTRY: dict[str, str] = dict(BUILTIN)


def register(name: str) -> Callable:
    """Decorator: make a module-level function available as ``reward.verifier=<name>``.

    The module must be importable in the verifier processes (a package, or a module in the working
    directory)."""

    def deco(fn):
        _REGISTRY[name] = f"{fn.__module__}:{fn.__qualname__}"
        return fn

    return deco


def batched(fn=None, *, batch_size: int = 64):
    """Decorator: the verifier takes ``(completions: list[str], samples: list[dict])`` and returns one
    score (or result) per completion. The pool calls it on up to `batch_size` completions at a time;
    one batch is one call for the timeout and the limits."""

    def deco(f):
        f.batched, f.batch_size = True, batch_size
        return f

    return deco(fn) if fn is not None else deco


@functools.lru_cache(maxsize=1)
def entry_points() -> dict[str, str]:
    """Verifiers that installed packages declare in the ``rlreason.verifiers`` entry-point group."""
    found = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN:
            log.warning("entry point %s = %s (group %s) is ignored: %r is a built-in verifier", ep.name, ep.value,
                        ENTRY_POINT_GROUP, ep.name)
            continue
        found[ep.name] = ep.value
    return found


def registry_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(entry_points()))


def import_path(spec: str) -> str:
    """The ``module:attr`` path of a registered name, an entry point's name or an import path."""
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if spec in entry_points():
        return entry_points()[spec]
    if ":" in spec:
        return spec
    raise VerifierNotFound(
        f"unknown verifier {spec!r}; registered verifiers: {', '.join(registry_names())}, "
        f"or give an import path such as 'my_rewards:score'."
    )


def resolve(spec: str) -> Callable:
    path = import_path(spec)
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise VerifierNotFound(f"cannot import module {module_name!r} for verifier {spec!r}: {e}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise VerifierNotFound(f"module {module_name!r} has no attribute {attr!r} (verifier {spec!r})")
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
