"""Verifiers: the reward functions of rlreason.

A verifier is any callable ``(completion: str, sample: dict) -> float`` or one returning an object
with a ``score`` attribute (e.g. `VerifierResult`) whose other fields are logged. Register one by
name with `@register("name")`, or give it in the config as an import path ``module:function``; a team
can drop its own module next to this package and point `reward.verifier` at it without touching the
framework.

Verifiers run in `rewards.pool.VerifierPool`: separate processes, one call at a time each, with a
per-call timeout. A timeout or an exception scores 0 and is counted; it never stops training.
"""

from __future__ import annotations

import importlib
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


# name -> "module:function"; import paths keep the registry usable from fresh worker processes.
_REGISTRY: dict[str, str] = {
    "math": "rewards.math:math_verifier",
    "format": "rewards.format:format_verifier",
}


def register(name: str) -> Callable:
    """Decorator: make a module-level function available as ``reward.verifier=<name>``.

    The module must be importable in the verifier processes (a package, or a module in the working
    directory)."""

    def deco(fn):
        _REGISTRY[name] = f"{fn.__module__}:{fn.__qualname__}"
        return fn

    return deco


def registry_names() -> list[str]:
    return sorted(_REGISTRY)


def import_path(spec: str) -> str:
    """The ``module:function`` path of a registered name or an import path."""
    if spec in _REGISTRY:
        return _REGISTRY[spec]
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
