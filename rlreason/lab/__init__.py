"""The estimator lab (`python -m rlreason.lab`): what an advantage estimator does to the policy gradient,
measured on frozen rollouts instead of training runs.

The lab's decomposition: at the sampling policy (ratio 1) every estimator's policy gradient on a batch is
    g = sum_{i,t} c_{i,t} * grad_theta log pi(o_{i,t} | ...)
with per-token coefficients c = d(surrogate)/d(log pi) that depend on the rewards and the estimator,
not on theta's gradient (`coefficients.py`). So the token log-prob gradients of a frozen pool are
computed once (per-token, or randomly projected for large models), and any estimator's gradient on any
subsample is a weighted sum of them. `stats.py` turns many such subsample gradients into variance,
bias, cosine and signal-to-noise figures.

Files: `pool.py` (sample and cache the pool), `token_grads.py` (projected token gradients by
forward-mode autodiff), `coefficients.py`, `stats.py`, `experiment.py` (arms x group sizes x
subsamples), `__main__.py` (the command: table, CSV, plots).
"""
