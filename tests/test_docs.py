"""The docs match the code: the configuration reference is what `python -m rlreason.docs` generates, every
key has a meaning, README stays short, every local link resolves, and nothing points outside the repository."""

import dataclasses
import re
import subprocess

from conftest import ROOT

from rlreason import docs
from rlreason.config import Config

TEXT_SUFFIXES = {".py", ".md", ".yaml", ".toml", ".txt", ".cfg"}


def test_the_configuration_reference_is_what_the_code_generates():
    assert (ROOT / "docs" / "configuration.md").read_text() == docs.render(), (
        "docs/configuration.md drifted from rlreason/config.py or recipes/: run `python -m rlreason.docs`")


def _leaf_keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        path = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(default):
            yield from _leaf_keys(type(default), path)
        else:
            yield path


def test_every_key_is_documented_with_its_default_and_a_meaning():
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(r"^\| `([^`]+)` \| (.+?) \| (.*) \|$", text, re.M)}
    keys = list(_leaf_keys(Config))
    assert len(keys) > 150
    for key in keys:
        assert key in rows, f"{key} is missing from docs/configuration.md"
        default, meaning = rows[key]
        assert meaning.strip(), f"{key} has no meaning: add a comment beside its field in rlreason/config.py"


def test_the_generator_catches_a_change_in_the_code(tmp_path, monkeypatch):
    """Rename a field's comment in a copy of config.py: the rendered reference changes with it."""
    source = docs.CONFIG_SOURCE.read_text().replace("# AdamW learning rate", "# the AdamW step size")
    copy = tmp_path / "config.py"
    copy.write_text(source)
    monkeypatch.setattr(docs, "CONFIG_SOURCE", copy)
    assert "| `learner.lr` | `0.0005` | the AdamW step size |" in docs.render()
    assert docs.render() != (ROOT / "docs" / "configuration.md").read_text()


def test_readme_is_short_and_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12_500, f"README.md is {len(readme.encode())} bytes; move detail to docs/"
    first = readme.splitlines()[3:5]  # the two commands open the README
    assert first[0].startswith("make run ") and first[1].startswith("make test ")
    for md in [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            assert (md.parent / target).exists(), f"{md.relative_to(ROOT)} links to {target}, which does not exist"


def test_nothing_in_the_repository_refers_to_paths_outside_it():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = []
    for name in files:
        path = ROOT / name
        if path.suffix not in TEXT_SUFFIXES and path.name != "Makefile" or name.startswith("benchmarks/results/"):
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "../shared" in line or "/work/" in line:
                outside.append(f"{name}:{n}: {line.strip()[:100]}")
    outside = [x for x in outside if not x.startswith("tests/test_docs.py")]
    assert not outside, "references to paths outside the repository:\n" + "\n".join(outside)
