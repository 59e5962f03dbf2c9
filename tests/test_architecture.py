"""The import graph: no cycles, and no module imports a layer above its own (docs/architecture.md).

Every import counts, at the top of a file or inside a function: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rlreason", "rewards", "curricula")

# unit -> the module-name prefixes that make it up (longest prefix wins)
UNITS = {
    "core": ["rlreason", "rlreason.registry", "rlreason.batch", "rlreason.evaluation"],
    "algos": ["rlreason.algos"],
    "lab": ["rlreason.lab"],
    "curricula": ["curricula"],
    "rewards": ["rewards"],
    "data": ["rlreason.data"],
    "telemetry": ["rlreason.telemetry"],
    "model": ["rlreason.policy", "rlreason.forward", "rlreason.transfer", "rlreason.assets", "rlreason.eval_cache"],
    "moe": ["rlreason.moe"],
    "envs": ["rlreason.envs"],
    "rollout": ["rlreason.rollout"],
    "config": ["rlreason.config"],
    "learner": ["rlreason.learner"],
    "orchestrator": ["rlreason.orchestrator"],
    "trainer": ["rlreason.trainer"],
    "entry": ["rlreason.run", "rlreason.run_dir", "rlreason.launch", "rlreason.report", "rlreason.docs", "rlreason.lab.__main__"],
}
# unit -> the units it may import (besides itself): the layers below it
ALLOWED = {
    "core": set(),
    "algos": {"core"},
    "curricula": {"core", "algos"},
    "rewards": {"core"},
    "data": {"core"},
    "telemetry": {"core"},
    "model": {"core"},
    "moe": {"core", "model"},
    "envs": {"core", "rewards"},  # rewards: the Python tool runs code as the code verifier does (rewards/code_exec.py)
    "rollout": {"core", "model", "moe", "telemetry", "envs"},
    "config": {"core", "algos", "curricula", "rewards", "data", "model", "moe", "envs", "rollout"},
    "learner": {"core", "algos", "rewards", "data", "model", "moe", "telemetry", "config"},  # rewards: the warm start's accuracy
    "orchestrator": {"core", "algos", "curricula", "rewards", "data", "model", "moe", "envs", "rollout", "config", "learner",
                     "telemetry"},
    "trainer": {"core", "algos", "curricula", "rewards", "data", "model", "moe", "envs", "rollout", "config", "learner",
                "telemetry", "orchestrator"},
}
# the estimator lab samples with the engines, loads policies and tasks like the trainer: a top layer too
ALLOWED["lab"] = ALLOWED["trainer"] | {"trainer"}
ALLOWED["entry"] = set(UNITS) - {"entry"}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, file: Path, known: set[str]) -> set[str]:
    """The project modules `file` imports (`from a import b` counts as a.b when a.b is a module)."""
    found = set()
    pkg = name if file.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import rlreason.algos.losses` -> that module; unknown tails dropped
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def unit(module: str) -> str:
    best = max(((p, u) for u, prefixes in UNITS.items() for p in prefixes if module == p or module.startswith(p + ".")),
               key=lambda x: len(x[0]), default=None)
    assert best is not None, f"{module} belongs to no unit: add it to UNITS in tests/test_architecture.py"
    return best[1]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, f, set(mods)) for m, f in mods.items()}


def test_every_import_goes_down_the_layers():
    upward = [f"{a} ({unit(a)}) imports {b} ({unit(b)})" for a, deps in graph().items() for b in deps
              if unit(a) != unit(b) and unit(b) not in ALLOWED[unit(a)]]
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_the_import_graph_has_no_cycle():
    g = graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_lazy_imports_and_packages():
    """The walker must see an import inside a function and resolve `from pkg import module`."""
    g = graph()
    assert "rlreason.algos.group" in g["rlreason.algos.tempo"]
    assert "rlreason.registry" in g["rewards"]  # rewards/__init__.py
    assert "rlreason.learner.warmstart" in g["rlreason.orchestrator.policy_source"]  # imported inside a function
