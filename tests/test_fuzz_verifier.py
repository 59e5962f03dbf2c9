"""Fuzz: 10,000 adversarial completions through the math verifier in the sandboxed pool.

Python payloads that would create a sentinel file if anything evaluated them, LaTeX and number bombs,
megabyte strings and control characters, in every answer position the extractor looks at, mutated
and spliced at random. Asserts: the sentinel never appears, every call answers within the pool's
timeout (status ok: no timeout, no error, no worker replaced), and the workers' peak memory stays
bounded. A control first proves the payloads are live: sympy's `sympify`, which the math path must
never use, runs them and creates the sentinel.
"""

import random
import subprocess
import sys

import pytest

from rewards.pool import Job, VerifierPool

N = 10_000
TIMEOUT_S = 10.0
PEAK_RSS_LIMIT_MB = 512


def payloads(sentinel: str) -> list[str]:
    touch = f"__import__('os').system('touch {sentinel}')"
    return [
        touch,
        f"open('{sentinel}', 'w').write('x')",
        f"exec(\"open('{sentinel}', 'w')\")",
        f"eval(\"{touch}\")",
        f"(lambda: {touch})()",
        f"[c for c in ().__class__.__bases__[0].__subclasses__() if c.__name__ == 'Popen'][0](['touch', '{sentinel}'])",
        f"__import__('subprocess').run(['touch', '{sentinel}'])",
        f"getattr(__import__('os'), 'system')('touch {sentinel}')",
        f"Symbol('x').__class__.__init__.__globals__['__builtins__']['__import__']('os').system('touch {sentinel}')",
        f"1 + {touch}",
        f"\\text{{{touch}}}",
        f"\\operatorname{{{touch}}}",
        "().__class__.__bases__[0].__subclasses__()",
        "lambda x: x",
        "globals()['__builtins__']",
    ]


BOMBS = [
    "10^{10^{10}}", "2^{2^{2^{2^{2^{2}}}}}", "9^{9^{9^{9}}}", "99999999999^{99999999}", "10^{-10^{10}}", "e^{e^{e^{e^{10}}}}",
    "1000000!", "(10^{6})!", "100!!!!!!", "\\binom{100000000}{5000000}", "\\sum_{i=1}^{10^{9}} i^{i}", "\\prod_{k=1}^{10^9} k",
    "\\int_0^\\infty e^{x^{x}} dx", "\\lim_{n\\to\\infty} n^{n^n}", "10**10**10", "2**2**2**2**2", "1e999999999", "9" * 5000,
    "\\frac{" * 300 + "1" + "}{2}" * 300, "\\sqrt{" * 200 + "2" + "}" * 200, "(" * 500 + "1" + ")" * 500, "{" * 1000,
    "x^{99999999}", "\\underbrace{" * 50 + "1" + "}" * 50, "10^{10000}", "\\frac{1}{0}", "0^{0}", "\\infty^{\\infty}",
    "\\left(" * 100 + "1" + "\\right)" * 100, "1" + "0" * 400, "\\begin{pmatrix}" + "1&" * 500 + "1\\end{pmatrix}",
]
SPICE = ["{", "}", "^", "\\frac", "!", "(", ")", "\\", "$", "#", "9999", "^{", "\x00", "\x1b[2J", "\u202e", "\ufeff", "\r", "%"]


def wrap(rng: random.Random, core: str) -> str:
    forms = [
        lambda s: s,
        lambda s: f"\\boxed{{{s}}}",
        lambda s: f"The answer is #{s}",
        lambda s: f"Let me think.\n#### {s}",
        lambda s: f"$${s}$$",
        lambda s: f"<answer>{s}</answer>",
        lambda s: f"\\boxed{{{s}}} and then \\boxed{{3}} #{s}",
        lambda s: f"{s}\nso the result is {s}",
    ]
    return rng.choice(forms)(core)


def mutate(rng: random.Random, s: str) -> str:
    for _ in range(rng.randint(0, 3)):
        i = rng.randint(0, len(s))
        s = s[:i] + rng.choice(SPICE) + s[i:]
    if rng.random() < 0.1 and len(s) > 4:
        i, j = sorted(rng.sample(range(len(s)), 2))
        s = s[:i] + s[j:]
    return s


def completions(sentinel: str, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pay = payloads(sentinel)
    control = "".join(chr(i) for i in range(32))
    huge = ["1" * 1_000_000, "\\frac{" * 200_000, "#" * 500_000 + "5", "\\boxed{" * 100_000 + "3", "a" * 1_000_000 + "\\boxed{3}",
            control * 1000 + "\\boxed{3}"]
    out = list(huge)
    while len(out) < n:
        r = rng.random()
        if r < 0.35:
            core = rng.choice(pay)
        elif r < 0.7:
            core = rng.choice(BOMBS)
        elif r < 0.85:
            core = rng.choice(pay) + rng.choice(["+", "^{", "\\cdot", " "]) + rng.choice(BOMBS)
        else:
            core = "".join(rng.choice(SPICE + ["1", "2", "x"]) for _ in range(rng.randint(1, 60)))
        out.append(wrap(rng, mutate(rng, core)))
    return out


def test_payloads_are_live_under_sympify(tmp_path):
    """The control: what the verifier must never do (sympify) does run the payloads."""
    sentinel = tmp_path / "pwned"
    code = f"import sympy\ntry:\n    sympy.sympify({payloads(str(sentinel))[0]!r})\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert sentinel.exists()


@pytest.mark.integration
def test_math_verifier_survives_10000_adversarial_completions(tmp_path):
    sentinel = tmp_path / "pwned"
    texts = completions(str(sentinel), N)
    assert len(texts) == N and max(map(len, texts)) >= 1_000_000
    samples = [{"answer": a} for a in ("3", "\\frac{1}{2}", "10") * (N // 3 + 1)][:N]
    with VerifierPool(num_workers=2, timeout_s=TIMEOUT_S, memory_limit_mb=2048) as pool:
        pids = pool.pids()
        res = pool.score([Job("math", texts, samples)])[0]
        peaks = [_peak_rss_mb(p) for p in pool.pids()]
        assert pool.restarts == 0 and pool.pids() == pids
    assert not sentinel.exists()
    bad = [(texts[i][:80], r.status, r.error) for i, r in enumerate(res) if r.status != "ok"]
    assert not bad, bad[:5]
    assert max(r.latency_s for r in res) < TIMEOUT_S
    assert max(peaks) < PEAK_RSS_LIMIT_MB, peaks
    # the fuzz did reach the parser: some completions are scored 1 (the planted \boxed{3} answers)
    assert 0 < sum(r.score for r in res) < N


def _peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")
