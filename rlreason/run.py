"""Entry point: ``python rlreason/run.py [recipe=<name>] [algo=..] [curriculum=..] [moe=..] [model=..] [task=..]
[scale=..] [key.path=value ...]`` (``--help`` lists the groups; ``--cfg`` prints the composed config).

``python rlreason/run.py -m recipe=grpo,tempo seed=0,1,2 [sweep_dir=DIR]`` runs every combination
(see `multirun`); ``python -m rlreason.report DIR`` compares them.

Composes the Hydra config groups under `recipes/` over the schema in `rlreason/config.py` (or, with
``resume=true``, reads the run's saved config: `rlreason/run_dir.py`), validates it (a user mistake ends
in a one-paragraph message and exit code 2, before any actor starts), writes the run directory, and
hands over to `rlreason/launch.py`, which joins the Ray cluster named by ``ray.address`` or
``RAY_ADDRESS`` (as under ``ray job submit``) or starts a local one, and runs the trainer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# run as a script (`python rlreason/run.py`): make the checkout and the working directory importable,
# so rlreason/, rewards/, curricula/ and a team's own verifier modules resolve without installation.
for p in (str(REPO_ROOT), os.getcwd()):
    if p not in sys.path:
        sys.path.insert(0, p)

from rlreason import QUIET_ENV  # noqa: E402  (after the path set-up above)

for k, v in QUIET_ENV.items():
    os.environ.setdefault(k, v)

GROUPS = ("recipe", "algo", "curriculum", "moe", "model", "task", "scale")
CONFIG_DIR = REPO_ROOT / "recipes"


GROUP_HELP = {
    "recipe": "a named method: one choice of algo, curriculum and moe",
    "algo": "the advantage estimator and its loss (overrides the recipe's)",
    "curriculum": "which prompts, how many rollouts each, what token budget",
    "moe": "routing replay and router regularisers (MoE policies)",
    "model": "the policy",
    "task": "the problems and their verifier",
    "scale": "steps and batch sizes",
}


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def usage() -> str:
    """`run.py --help`: the groups, their choices, and where every key is listed."""
    lines = [
        "usage: python rlreason/run.py [group=choice ...] [key.path=value ...]",
        "       python rlreason/run.py --cfg [overrides ...]      print the composed config and exit",
        "       python rlreason/run.py -m key=a,b [...]            a sweep: one run per combination",
        "",
        "config groups (defaults: recipe=grpo model=tiny_moe task=arithmetic scale=default):",
    ]
    for g in GROUPS:
        lines.append(f"  {g + '=':<12} {', '.join(group_choices(g))}")
        lines.append(f"  {'':<12} {GROUP_HELP[g]}")
    lines += [
        "",
        "every key, its default and meaning: docs/configuration.md; the keys a run would use: --cfg.",
        "example: python rlreason/run.py algo=tempo curriculum=knapsack moe=r3 scale=smoke",
    ]
    return "\n".join(lines)


class UserError(Exception):
    pass


def _schema_keys(path: list[str]) -> list[str] | None:
    """Valid child keys of the schema node at `path` (None if `path` is not a node)."""
    import dataclasses

    from rlreason.config import Config

    node = Config
    for part in path:
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return None
        default = fields[part].default_factory() if fields[part].default_factory is not dataclasses.MISSING else None
        if not dataclasses.is_dataclass(default):
            return None
        node = type(default)
    return sorted(f.name for f in dataclasses.fields(node))


def _unknown_key_message(full_key: str) -> str:
    import difflib

    parts = full_key.split(".")
    # walk down as far as the schema knows the path
    depth = 0
    while depth < len(parts) - 1 and _schema_keys(parts[: depth + 1]) is not None:
        depth += 1
    parent, bad = parts[:depth], parts[depth]
    valid = _schema_keys(parent) or []
    where = f"under '{'.'.join(parent)}'" if parent else "at the top level"
    hint = difflib.get_close_matches(bad, valid, n=1)
    msg = f"unknown config key '{full_key}': '{bad}' is not a key {where}."
    if hint:
        msg += f" Did you mean '{'.'.join(parent + [hint[0]])}'?"
    msg += f" Valid keys {where}: {', '.join(valid)}."
    if not parent:
        msg += f" Config groups: {', '.join(GROUPS)}."
    return msg


def compose(overrides: list[str]):
    """Compose and validate the config; raise UserError with a one-paragraph message."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from rlreason.config import Config, ConfigError, validate

    for ov in overrides:
        if "=" not in ov:
            raise UserError(
                f"cannot read argument '{ov}': arguments are key=value overrides, e.g. recipe=grpo scale=smoke "
                f"algo.kl_coef=0.04 (config groups: {', '.join(GROUPS)})."
            )
        key, value = ov.split("=", 1)
        key = key.lstrip("+~")
        if key in GROUPS and value not in group_choices(key):
            raise UserError(
                f"{key}={value!r} is not a known {key}; choose one of: {', '.join(group_choices(key))} "
                f"(files in recipes/{key}/)."
            )
        if key == "hydra" or key.startswith("hydra."):
            raise UserError(f"'{ov}': hydra.* settings are not supported by rlreason/run.py.")
    # keys inside a free-form dict field (learner.deepspeed_config.zero_optimization.stage=2) are new to
    # the struct config: Hydra needs '++' (add or override) for them, which users should not have to know
    free = _free_form_paths()
    overrides = [f"++{ov}" if not ov.startswith("+") and any(ov.split("=", 1)[0].startswith(p + ".") for p in free) else ov
                 for ov in overrides]
    ConfigStore.instance().store(name="rlreason_schema", node=Config)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception as e:  # noqa: BLE001 - translate every composition failure into a user message
        raise UserError(_explain(e)) from None
    choices = dict(cfg.hydra.runtime.choices)
    with_hydra = OmegaConf.to_container(cfg, resolve=False)
    with_hydra.pop("hydra", None)
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), with_hydra))
        validate(obj)
    except ConfigError as e:
        raise UserError(str(e)) from None
    except OmegaConfBaseException as e:
        raise UserError(_explain(e)) from None
    return obj, {g: choices.get(g) for g in GROUPS}


def _free_form_paths() -> list[str]:
    """Schema paths of dict-valued fields whose keys are the user's (e.g. learner.deepspeed_config)."""
    import dataclasses

    from rlreason.config import Config

    out = []

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(value):
                walk(type(value), prefix + f.name + ".")
            elif isinstance(value, dict):
                out.append(prefix + f.name)

    walk(Config, "")
    return out


def _list_item_owner(cls) -> str | None:
    """The schema path of the list field whose entries are `cls` dataclasses (e.g. reward.verifiers)."""
    import dataclasses
    import typing

    from rlreason.config import Config

    if cls is None or not dataclasses.is_dataclass(cls):
        return None

    def walk(node, prefix):
        hints = typing.get_type_hints(node)
        for f in dataclasses.fields(node):
            hint = hints[f.name]
            if typing.get_origin(hint) is list and typing.get_args(hint) == (cls,):
                return prefix + f.name
            if dataclasses.is_dataclass(hint):
                found = walk(hint, prefix + f.name + ".")
                if found:
                    return found
        return None

    return walk(Config, "")


def _unknown_entry_key_message(owner: str, cls, bad: str) -> str:
    import dataclasses
    import difflib

    valid = [f.name for f in dataclasses.fields(cls)]
    hint = difflib.get_close_matches(bad, valid, n=1)
    msg = f"unknown key '{bad}' in an entry of {owner}."
    if hint:
        msg += f" Did you mean '{hint[0]}'?"
    return msg + f" An entry's keys: {', '.join(valid)}."


def _explain(e: BaseException) -> str:
    import re

    from omegaconf.errors import ConfigKeyError, ValidationError

    chain = []
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for err in chain:
        if isinstance(err, ConfigKeyError) and getattr(err, "full_key", None):
            owner = _list_item_owner(getattr(err, "object_type", None))
            if owner:  # a key inside an entry of a list of sections (reward.verifiers=[{...}])
                return _unknown_entry_key_message(owner, err.object_type, str(err.key))
            return _unknown_key_message(err.full_key)
        if isinstance(err, ValidationError) and getattr(err, "full_key", None):
            return f"bad value for '{err.full_key}': {err.msg.splitlines()[0]}"
    text = str(chain[0])
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' (?:is )?not in struct", text)
    if m:
        return _unknown_key_message(m.group(1))
    m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if m and m.group(1) in GROUPS:
        return f"{m.group(1)}={m.group(2)!r} is not known; choose one of: {', '.join(group_choices(m.group(1)))}."
    first = " ".join(text.split())
    return f"invalid configuration: {first}"


METHOD_GROUPS = ("recipe", "algo", "curriculum", "moe")


def default_run_dir(argv: list[str], choices: dict, seed: int) -> Path:
    """runs/<method>-<time>-s<seed>; the method is the recipe and method groups given (e.g. tempo-knapsack-r3)."""
    import time

    given = [ov.split("=", 1)[1] for ov in argv if ov.split("=", 1)[0] in METHOD_GROUPS]
    return Path("runs") / f"{'-'.join(given) or choices['recipe']}-{time.strftime('%Y%m%d-%H%M%S')}-s{seed}"


def _shared_cluster(cfgs) -> dict:
    """A sweep's local Ray cluster, started once for all its jobs (each joins it through RAY_ADDRESS
    instead of starting and stopping its own): the environment for the job processes. Workers take
    PYTHONPATH and the quiet settings from the raylet's environment, set here before it starts."""
    import ray

    from rlreason.launch import local_cluster

    num_cpus, pythonpath = local_cluster(cfgs)
    os.environ.update({**QUIET_ENV, "PYTHONPATH": pythonpath})
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def split_sweep(value: str) -> list[str]:
    """`a,b,c` -> [a, b, c]; commas inside [...], {...} or quotes do not split (list values stay whole)."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    parts.append(cur)
    return parts


def expand_sweep(argv: list[str]) -> list[list[str]]:
    """Hydra-style multirun: the cartesian product of every `key=v1,v2,...` override, in argument order."""
    import itertools

    axes = []
    for ov in argv:
        if "=" not in ov:
            axes.append([ov])
            continue
        key, value = ov.split("=", 1)
        axes.append([f"{key}={v}" for v in split_sweep(value)])
    return [list(job) for job in itertools.product(*axes)]


def job_name(job: list[str], swept: set[str]) -> str:
    import re

    parts = [ov for ov in job if ov.split("=", 1)[0] in swept or ov.split("=", 1)[0] == "recipe"] or ["job"]
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", ",".join(parts))


def multirun(argv: list[str]) -> int:
    """`run.py -m recipe=grpo,tempo seed=0,1,2 [sweep_dir=DIR]`: each combination runs as its own
    `run.py` process, one after another, under DIR/<recipe and swept key=value,...>. Every job's config is
    composed and validated before the first starts. A job whose directory already holds a finished
    run (summary.json) is skipped, an unfinished one resumes, so re-running the same command after an
    interruption completes the sweep. A failing job does not stop the others; the exit code is 1 if
    any failed. Without `ray.address`/RAY_ADDRESS the jobs share one local Ray cluster, started once
    for the sweep. `python -m rlreason.report DIR` then compares them."""
    import time

    sweep_dir = None
    rest = []
    for ov in argv:
        if ov.startswith("sweep_dir="):
            sweep_dir = Path(ov.split("=", 1)[1])
        elif ov.split("=", 1)[0] in ("run_dir", "resume"):
            print(f"rlreason: config error: '{ov}' cannot be given with -m: each job gets sweep_dir/<name> and resumes "
                  "when its directory holds an unfinished run.", file=sys.stderr)
            return 2
        else:
            rest.append(ov)
    sweep_dir = sweep_dir or Path("multirun") / time.strftime("%Y%m%d-%H%M%S")
    jobs = expand_sweep(rest)
    swept = {ov.split("=", 1)[0] for ov in rest if "=" in ov and len(split_sweep(ov.split("=", 1)[1])) > 1}
    names = [job_name(job, swept) for job in jobs]
    if len(set(names)) != len(names):
        print("rlreason: config error: two sweep jobs would share a directory; sweep distinct values.", file=sys.stderr)
        return 2
    cfgs = []
    for job in jobs:
        try:
            cfgs.append(compose(job)[0])
        except UserError as e:
            print(f"rlreason: config error in job {' '.join(job)}: {e}", file=sys.stderr)
            return 2
    sweep_dir.mkdir(parents=True, exist_ok=True)
    print(f"sweep_dir: {sweep_dir.resolve()} ({len(jobs)} jobs)", flush=True)
    todo = [not (sweep_dir / name / "summary.json").exists() for name in names]
    env = None
    if sum(todo) > 1 and not os.environ.get("RAY_ADDRESS") and not any(c.ray.address for c in cfgs):
        env = _shared_cluster([c for c, t in zip(cfgs, todo) if t])
    try:
        return _run_jobs(jobs, names, sweep_dir, env)
    finally:
        if env is not None:
            import ray

            ray.shutdown()


def _run_jobs(jobs, names, sweep_dir: Path, env) -> int:
    import subprocess
    import time

    failed = []
    for i, (job, name) in enumerate(zip(jobs, names), 1):
        run_dir = sweep_dir / name
        if (run_dir / "summary.json").exists():
            print(f"[{i}/{len(jobs)}] {name}: already finished, skipped", flush=True)
            continue
        extra = [f"run_dir='{run_dir}'"] + (["resume=true"] if (run_dir / "metrics.jsonl").exists() else [])
        print(f"[{i}/{len(jobs)}] {name}: {' '.join(job + extra)}", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(Path(__file__).resolve()), *job, *extra], env=env)
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"[{i}/{len(jobs)}] {name}: {status} in {time.time() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"{len(failed)} of {len(jobs)} jobs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(jobs)} jobs done. compare them: python -m rlreason.report {sweep_dir}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    import logging

    if argv and argv[0] in ("-m", "--multirun"):
        return multirun(argv[1:])
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    if "--cfg" in argv:
        from omegaconf import OmegaConf

        try:
            cfg, choices = compose([a for a in argv if a != "--cfg"])
        except UserError as e:
            print(f"rlreason: config error: {e}", file=sys.stderr)
            return 2
        print(f"# choices: {' '.join(f'{g}={c}' for g, c in choices.items() if c)}")
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from rlreason.launch import disk_message, plan_line, train
    from rlreason.run_dir import ResumeError, record_resume, resumed_config, write_start

    changed = None
    try:
        cfg, choices = compose(argv)
        if cfg.resume and not cfg.run_dir:
            raise UserError("resume=true needs run_dir=<the run's directory> to find its checkpoints.")
        if cfg.resume:
            cfg, changed, choices = resumed_config(Path(cfg.run_dir), argv, GROUPS)
        elif cfg.run_dir and (Path(cfg.run_dir) / "metrics.jsonl").exists():
            raise UserError(
                f"run_dir={cfg.run_dir} already holds a run (metrics.jsonl); pass resume=true to continue it, "
                f"or choose another run_dir."
            )
    except (UserError, ResumeError) as e:
        print(f"rlreason: config error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(argv, choices, cfg.seed)
    cfg.run_dir = str(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if changed is None:
            write_start(run_dir, cfg, choices, argv)
        else:
            record_resume(run_dir, argv, changed)
    except OSError as e:
        print(f"rlreason: cannot write the run directory {run_dir}: {disk_message(e)}", file=sys.stderr)
        return 2
    print(plan_line(cfg, choices, argv, changed), flush=True)
    print(f"run_dir: {run_dir.resolve()}", flush=True)
    return train(cfg, run_dir)




if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
