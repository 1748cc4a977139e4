"""Sigmoid search: closer sigmoid surrogates at more depth and more epochs (issue 25).

Can a sigmoid polynomial of higher degree (one or two more levels than
today's degree 5) plus more epochs make the 21-set cross-validation of
``benchmarks/defaults.py`` pass? Answered in plaintext, by emulation: the
CKKS runs this would need take hours (``docs/benchmark-defaults.md``,
"Third pass").

**The emulator.** ``EncryptedLogisticRegression``'s own client steps
(validation, class weights, ``_design``, ``_cap_row_norms``, ``_mean_one``,
``_prior_start``, the planner's batch size and minibatch count, the
``random_state`` order, ``_set_coef``) around the recurrence of
:func:`sklearn_he.training.nag_reference` in NumPy, with ``g`` any function:
a polynomial of any degree, or the exact ``sigmoid(-u)``. The rates and
momentum weights are the estimator's ``NAGSchedule`` (learning rate,
``alpha`` and schedule read from a default estimator). ``--verify`` checks
it against ``fit(backend="plaintext")`` (the polynomial put into the
estimator), fold 0 of each set given: coefficients agree to about 1e-12.
Optionally the bias column holds a fixed value ``b`` instead of
``1 / row_scale`` (``-bias<b>``): the intercept's weight is then ``b`` times
the state's first entry, so it learns faster and its penalty is
``alpha / b**2`` (the estimator has no such option; not verified).

**Settings** (``--setting``): ``today`` (the estimator's degree-5
least-squares polynomial on [-8, 8]), ``exact`` (the logistic function), or
``d{degree}R{radius}[w{sigma} | ls][c{k}]``: odd polynomials ``p ~
sigmoid(-u)`` on [-R, R] fitted in the Chebyshev basis of ``t = u / R``:

* ``d31R20``: minimax (a linear programme), constrained to decrease on
  [0, k R] (k = 3 up to degree 15, 2 above; ``c{k}`` sets it);
* ``d15R12w3``: the same with the error weighted by ``1 / (exp(-u**2 / (2
  sigma**2)) + 0.1)``: about 10 times closer near 0 than at R;
* ``d15R12ls``: least squares, unconstrained (turns back up beyond R).

A suffix ``-bias<b>`` sets the bias column (above). The plan (batch size)
is made for the setting's polynomial (degree 5 for ``exact``).

**Epochs** (``--epochs``): a number, or ``S1000`` for ``max(5, ceil(1000 /
n_batches))`` (about 1,000 steps), ``S1000c80`` the same capped at 80.

**Scoring**: ``benchmarks/defaults.py``'s sets, 5 folds, scikit-learn
reference and pass rule (accuracy and AUC at most 0.01 below), through its
``cross_validate`` on an estimator that trains by emulation. Gaps are in
accuracy points (percent) and AUC.

Usage::

    python benchmarks/sigmoid_search.py --setting d31R20-bias0.5 --epochs 80 --sets all
    python benchmarks/sigmoid_search.py --setting exact --epochs 20 --sets seven
    python benchmarks/sigmoid_search.py --verify --setting d15R12w3 --sets wine
    python benchmarks/sigmoid_search.py --describe --setting d31R20
    python benchmarks/sigmoid_search.py --plan-costs

``--sets``: names of ``defaults.py``, ``all`` (its 21) or ``seven`` (the
four that fail today and three that sit near the line). Each run (setting,
epochs, seed, sets) replaces its earlier row of ``--out`` (default
``benchmarks/results/sigmoid_search.json``); ``--verify``, ``--describe``
and ``--plan-costs`` write their own sections. On the 2-core development
machine the seven sets take about 5 s at 5 epochs and all 21 take 15-40 s
at 80 epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

sys.path.insert(0, str(Path(__file__).resolve().parent))
import defaults

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sigmoid_search.json"
SEVEN = [
    "digits",
    "synth-n200-f50-r9",
    "synth-n2000-f50-r9",
    "synth-n2000-f200-r9",
    "synth-n200-f5-r9",
    "synth-n200-f200-r9",
    "synth-n20000-f5-r9",
]
#: A state entry beyond this (in the circuit's coordinates) counts as diverged.
DIVERGED = 2.0**16
SETTING = re.compile(
    r"^(?:today|exact|d(?P<deg>\d+)R(?P<R>\d+(?:\.\d+)?)(?P<kind>ls|w\d+(?:\.\d+)?)?"
    r"(?:c(?P<mono>\d+(?:\.\d+)?))?)(?:-bias(?P<bias>\d+(?:\.\d+)?))?$"
)


# -- polynomial fits ---------------------------------------------------------


def _to_power_basis(odd_t: np.ndarray, degree: int, R: float) -> tuple[float, ...]:
    """``c[0..degree]`` in ``u`` from the power-basis coefficients of ``p(t) - 1/2``."""
    c = [0.0] * (degree + 1)
    c[0] = 0.5
    for k in range(1, degree + 1, 2):
        c[k] = float(odd_t[k] / R**k) if k < len(odd_t) else 0.0
    return tuple(c)


@functools.lru_cache(None)
def fit_ls(degree: int, R: float, sigma: float | None = None) -> tuple[float, ...]:
    """Least squares on [-R, R], odd part, optionally weighted ``exp(-u^2 / 2 sigma^2) + 0.05``."""
    t = np.linspace(0, 1, 4001)[1:]
    target = 1.0 / (1.0 + np.exp(R * t)) - 0.5
    ks = list(range(1, degree + 1, 2))
    V = np.stack([t**k for k in ks], axis=1)
    wt = np.ones_like(t) if sigma is None else np.exp(-((R * t) ** 2) / (2 * sigma**2)) + 0.05
    b, *_ = np.linalg.lstsq(V * np.sqrt(wt)[:, None], target * np.sqrt(wt), rcond=None)
    odd = np.zeros(degree + 1)
    odd[ks] = b
    return _to_power_basis(odd, degree, R)


@functools.lru_cache(None)
def fit_minimax(
    degree: int, R: float, mono: float = 3.0, sigma: float | None = None
) -> tuple[float, ...]:
    """Minimax fit of ``sigmoid(-u)`` on [0, R] (odd), decreasing on [0, mono * R].

    A linear programme in the Chebyshev basis of ``t = u / R`` (well
    conditioned at any degree). ``sigma``: the error is weighted by
    ``1 / (exp(-u^2 / 2 sigma^2) + 0.1)`` (closer near 0); None: uniform.
    """
    from numpy.polynomial import chebyshev
    from scipy.optimize import linprog

    ks = list(range(1, degree + 1, 2))
    t = np.linspace(0, 1, 2001)
    target = 1.0 / (1.0 + np.exp(R * t)) - 0.5
    basis = [chebyshev.Chebyshev.basis(k) for k in ks]
    V = np.stack([b(t) for b in basis], axis=1)
    tc = np.linspace(0, mono, 3001)
    D = np.stack([b.deriv()(tc) for b in basis], axis=1)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    # |V b - target| <= e wt: wt = 1 / (gauss + 0.1) is e / 1.1 at 0, 10 e at R
    wt = np.ones_like(t) if sigma is None else 1 / (np.exp(-((R * t) ** 2) / (2 * sigma**2)) + 0.1)
    nb, ones = len(ks), np.ones((len(t), 1))
    # variables (b, e): minimise e subject to |V b - target| / wt <= e and p'(t) <= 0
    A = np.vstack(
        [
            np.hstack([V / wt[:, None], -ones]),
            np.hstack([-V / wt[:, None], -ones]),
            np.hstack([D, np.zeros((len(tc), 1))]),
        ]
    )
    ub = np.r_[target / wt, -target / wt, np.zeros(len(tc))]
    res = linprog(
        np.r_[np.zeros(nb), 1.0], A_ub=A, b_ub=ub, bounds=[(None, None)] * (nb + 1), method="highs"
    )
    if res.status != 0:
        raise RuntimeError(f"minimax fit d{degree} R{R}: {res.message}")
    cheb = np.zeros(degree + 1)
    cheb[ks] = res.x[:nb]
    return _to_power_basis(chebyshev.cheb2poly(cheb), degree, R)


def describe(coeffs: tuple[float, ...], R: float) -> dict[str, Any]:
    """How close the polynomial is, where it turns up, its largest coefficient in ``u / R``."""
    p = np.asarray(coeffs)[::-1]
    u = np.linspace(0, R, 4001)
    err = np.abs(np.polyval(p, u) - 1 / (1 + np.exp(u)))
    uu = np.linspace(0, 4 * R, 16001)
    up = uu[np.polyval(np.polyder(p), uu) > 1e-3]  # rising, not just flat
    on_t = [abs(c) * R**k for k, c in enumerate(coeffs) if k]
    return {
        "degree": len(coeffs) - 1,
        "radius": R,
        "max_error": round(float(err.max()), 4),
        "max_error_u<=2": round(float(err[u <= 2].max()), 4),
        "max_error_u<=4": round(float(err[u <= 4].max()), 4),
        "rises_from_u": round(float(up[0]), 2) if len(up) else None,  # up to 4R
        "value_at_1.5R": round(float(np.polyval(p, 1.5 * R)), 1),
        "largest_coefficient_on_u/R": float(f"{max(on_t):.3g}"),
    }


# -- settings -----------------------------------------------------------------


def parse_setting(name: str) -> dict[str, Any]:
    """``{"g", "coeffs" (None for exact), "plan_coeffs", "radius", "bias"}`` of a setting name."""
    from scipy.special import expit

    from sklearn_he.training import sigmoid_poly

    m = SETTING.match(name)
    if m is None:
        raise ValueError(
            f"unknown setting {name!r}: today, exact or d<degree>R<radius>[w<sigma>|ls][c<k>], "
            "each optionally with -bias<value>, e.g. d31R20-bias0.5"
        )
    bias = float(m["bias"]) if m["bias"] else None
    base = name.split("-bias")[0]
    if base == "exact":
        return {"g": lambda u: expit(-u), "coeffs": None, "plan_coeffs": None, "bias": bias}
    if base == "today":
        coeffs, R = tuple(float(c) for c in sigmoid_poly(5)), 8.0
    else:
        degree, R, kind = int(m["deg"]), float(m["R"]), m["kind"]
        if degree % 2 == 0 or degree < 3:
            raise ValueError(f"setting {name!r}: the degree must be odd and at least 3")
        mono = float(m["mono"]) if m["mono"] else (3.0 if degree <= 15 else 2.0)
        if kind == "ls":
            coeffs = fit_ls(degree, R)
        else:
            sigma = float(kind[1:]) if kind else None
            coeffs = fit_minimax(degree, R, mono, sigma)
    p = np.asarray(coeffs)[::-1]
    return {
        "g": lambda u: np.polyval(p, u),
        "coeffs": coeffs,
        "plan_coeffs": coeffs,
        "radius": R,
        "bias": bias,
    }


def epoch_rule(spec: str) -> int | Callable[[int], int]:
    """``"80"``: 80; ``"S1000"``: n_batches -> max(5, ceil(1000 / n_batches)); ``"S1000c80"``."""
    m = re.fullmatch(r"(\d+)|S(\d+)(?:c(\d+))?", spec)
    if m is None:
        raise ValueError(f"--epochs {spec!r}: a number, S<steps> or S<steps>c<cap>")
    if m[1]:
        return int(m[1])
    steps, cap = int(m[2]), int(m[3]) if m[3] else None
    return lambda nb: min(cap or 10**9, max(5, math.ceil(steps / nb)))


# -- the emulator -------------------------------------------------------------


def _estimator(seed: int, balanced: bool) -> Any:
    from sklearn_he import EncryptedLogisticRegression

    return EncryptedLogisticRegression(
        backend="plaintext", random_state=seed, class_weight="balanced" if balanced else None
    )


_PLANS: dict[tuple[int, ...], tuple[int, int]] = {}


def plan_for(est: Any, n: int, ncol: int, coeffs: Any) -> tuple[int, int]:
    """(batch size, minibatches per epoch) of the estimator's plan for this polynomial."""
    key = (n, ncol, len(coeffs), int(est.max_iter))
    if key not in _PLANS:
        plan = est._plan(n, ncol, np.asarray(coeffs, dtype=float), None)
        _PLANS[key] = (plan.batch_size, plan.n_batches)
    return _PLANS[key]


def schedule_steps(learning_rate: float, l2: float, T: int) -> tuple[np.ndarray, ...]:
    """``NAGSchedule(learning_rate, "inverse", "nesterov", l2)``'s rate, e_t, d_t for t < T."""
    from sklearn_he.training import NAGSchedule

    steps = NAGSchedule(learning_rate, "inverse", "nesterov", l2=l2).steps(0, T, 1)
    rate, e, d = (np.array(column) for column in zip(*steps, strict=True))
    return rate, e, d


def fit_emulated(
    X: np.ndarray,
    y: np.ndarray,
    *,
    setting: str,
    epochs: str | int,
    seed: int = 0,
    balanced: bool = False,
) -> Any:
    """A fitted ``EncryptedLogisticRegression`` whose weights the emulated recurrence trained.

    Raises FloatingPointError when training diverges.
    """
    from sklearn.utils import check_random_state

    from sklearn_he._estimator import _cap_row_norms, _drop_zero_weights, _mean_one
    from sklearn_he.training import sigmoid_poly

    s = parse_setting(setting)
    est = _estimator(seed, balanced)
    if (est.learning_rate_schedule, est.momentum) != ("inverse", "nesterov"):
        raise RuntimeError("the emulator implements the inverse / nesterov schedule only")
    X, y, classes = est._check_fit_data(X, y)
    sw = est._sample_weight(X, y, classes, None)
    X, y, sw, _ = _drop_zero_weights(X, y, sw)
    est.classes_ = classes
    design = est._design(X, fit=True, sample_weight=sw)
    r, bias = est._row_scale, s["bias"]
    if bias is not None:
        design[:, 0] = bias
    design = _cap_row_norms(design)
    weights = _mean_one(sw)
    n, ncol = design.shape
    pc = sigmoid_poly(5) if s["plan_coeffs"] is None else s["plan_coeffs"]
    rule = epoch_rule(str(epochs))
    if callable(rule):
        est.max_iter = 5
        rule = int(rule(plan_for(est, n, ncol, pc)[1]))
    est.max_iter = rule
    m, nb = plan_for(est, n, ncol, pc)
    rate, e, d = schedule_steps(float(est.learning_rate), float(est.alpha) / r**2, nb * rule)
    order = check_random_state(seed).permutation(n)  # as fit's minibatch order
    batches = [order[b * m : (b + 1) * m] for b in range(nb)]
    targets = [classes[1]] if classes.size == 2 else list(classes)
    s_all = np.ones(n) if weights is None else weights
    g, W = s["g"], []
    for target in targets:
        sign = np.where(y == target, 1.0, -1.0)
        Z = sign[:, None] * design
        Zb, Sb = [Z[rows] for rows in batches], [s_all[rows] for rows in batches]
        w = est._prior_start(sign, weights, ncol)
        if bias is not None:
            w[0] = w[0] / r / bias
        v, t = w.copy(), 0
        for _ in range(rule):
            for b in range(nb):  # nag_reference's step, g any function
                q = Zb[b].T @ (Sb[b] * g(Zb[b] @ v))
                w_next = d[t] * v + (rate[t] / m) * q
                v = (1 - e[t]) * w_next + e[t] * w
                w = w_next
                t += 1
            top = max(np.abs(w).max(), np.abs(v).max())
            if not np.isfinite(top) or top > DIVERGED:
                raise FloatingPointError(f"training diverged ({setting}, {rule} epochs)")
        W.append(w)
    W = np.array(W)
    est._set_coef(W)
    if bias is not None:
        est.intercept_ = W[:, 0] * bias - est.coef_ @ est._mean
    est.n_epochs_ = rule
    return est


class Emulated(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier that trains by :func:`fit_emulated` (for ``cross_validate``)."""

    def __init__(
        self, setting: str = "today", epochs: str = "5", seed: int = 0, balanced: bool = False
    ):
        self.setting = setting
        self.epochs = epochs
        self.seed = seed
        self.balanced = balanced

    def fit(self, X: np.ndarray, y: np.ndarray) -> Emulated:
        self.model_ = fit_emulated(
            X, y, setting=self.setting, epochs=self.epochs, seed=self.seed, balanced=self.balanced
        )
        self.classes_ = self.model_.classes_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.model_.decision_function(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict(X)


# -- runs ---------------------------------------------------------------------


@functools.lru_cache(None)
def _data(name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    return defaults.load(name)


@functools.lru_cache(None)
def _sklearn(name: str) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, imbalanced = _data(name)
    balanced = "balanced" if imbalanced else None
    reference = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=5000, class_weight=balanced)
    )
    return defaults.cross_validate(reference, X, y)


def evaluate(name: str, setting: str, epochs: str, seed: int = 0) -> dict[str, Any]:
    """One set, 5 folds: ours (emulated) against scikit-learn, as ``defaults.run_one``."""
    X, y, imbalanced = _data(name)
    sk = _sklearn(name)
    model = Emulated(setting, epochs, seed, imbalanced)
    try:
        ours = defaults.cross_validate(model, X, y)
    except FloatingPointError:
        return {"set": name, "diverged": True, "passes": False}
    acc_gap, auc_gap = ours["accuracy"] - sk["accuracy"], ours["auc"] - sk["auc"]
    return {
        "set": name,
        "accuracy_gap_points": round(100 * acc_gap, 2),
        "auc_gap": round(auc_gap, 4),
        "passes": defaults.passes(acc_gap, auc_gap),
        "ours": {"accuracy": ours["accuracy"], "auc": ours["auc"]},
        "sklearn": {"accuracy": sk["accuracy"], "auc": sk["auc"]},
        "accuracy_gap": acc_gap,
    }


def run(setting: str, epochs: str, sets: list[str], seed: int = 0, log=print) -> dict[str, Any]:
    t0 = time.perf_counter()
    rows = []
    log(f"{setting}, {epochs} epochs, seed {seed}; gap: accuracy points / AUC")
    for name in sets:
        row = evaluate(name, setting, epochs, seed)
        rows.append(row)
        if row.get("diverged"):
            log(f"  {name:22s} diverged")
        else:
            log(
                f"  {name:22s} {row['accuracy_gap_points']:+6.2f} / {row['auc_gap']:+.4f}  "
                f"{'pass' if row['passes'] else 'FAIL'}"
            )
    passed = sum(r["passes"] for r in rows)
    log(f"{setting}, {epochs} epochs, seed {seed}: {passed}/{len(rows)} pass")
    return {
        "setting": setting,
        "epochs": str(epochs),
        "seed": seed,
        "passes": passed,
        "n_sets": len(rows),
        "sets": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "source": "regenerated: " + command(setting, epochs, sets, seed),
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def command(setting: str, epochs: str, sets: list[str], seed: int = 0) -> str:
    which = "all" if sets == defaults.set_names() else "seven" if sets == SEVEN else " ".join(sets)
    extra = f" --seed {seed}" if seed else ""
    return (
        f"python benchmarks/sigmoid_search.py --setting {setting} --epochs {epochs} "
        f"--sets {which}{extra}"
    )


@contextlib.contextmanager
def _estimator_polynomial(coeffs: tuple[float, ...] | None) -> Iterator[None]:
    """The estimator's ``sigmoid_poly`` returning ``coeffs`` (None: unchanged) meanwhile."""
    import sklearn_he._estimator as module

    original = module.sigmoid_poly
    if coeffs is not None:
        module.sigmoid_poly = lambda degree=5, radius=8.0: np.asarray(coeffs, dtype=float)
    try:
        yield
    finally:
        module.sigmoid_poly = original


def verify(setting: str, sets: list[str]) -> dict[str, Any]:
    """Largest coefficient difference, emulation against ``fit(backend="plaintext")``, fold 0."""
    from sklearn.model_selection import StratifiedKFold

    s = parse_setting(setting)
    if s["coeffs"] is None or s["bias"] is not None:
        raise ValueError("--verify takes a polynomial setting without -bias (the estimator's)")
    out = {}
    with _estimator_polynomial(None if setting == "today" else s["coeffs"]):
        for name in sets:
            X, y, imbalanced = _data(name)
            tr, _ = next(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y))
            ref = _estimator(0, imbalanced).fit(X[tr], y[tr])
            emu = fit_emulated(
                X[tr], y[tr], setting=setting, epochs=ref.max_iter, balanced=imbalanced
            )
            out[name] = {
                "coef_max_abs_diff": float(np.abs(ref.coef_ - emu.coef_).max()),
                "intercept_max_abs_diff": float(np.abs(ref.intercept_ - emu.intercept_).max()),
                "coef_max_abs": float(np.abs(ref.coef_).max()),
                "batch_size": int(ref.report_.batch_size),
                "depth_per_minibatch": float(ref.report_.depth_per_minibatch),
                "circuit_depth": int(ref.report_.circuit_depth),
            }
            print(f"  {name:22s} {out[name]}")
    return out


PLAN_SHAPES = [(455, 31), (1437, 65), (160, 51), (1600, 201), (16000, 6)]


def plan_costs(settings: list[str]) -> list[dict[str, Any]]:
    """The CKKS planner's choice and estimated seconds per sample-epoch for each polynomial.

    Shapes: the training folds (rows x columns with the bias) of breast cancer,
    digits, n=200 x 50, n=2000 x 200 and n=20,000 x 5. The estimate uses this
    machine's measured operation costs (a few seconds to measure, once per ring).
    """
    from sklearn_he import EncryptedLogisticRegression

    rows = []
    for n, cols in PLAN_SHAPES:
        base = None
        for setting in settings:
            est = EncryptedLogisticRegression(backend="ckks")
            plan = est._plan(n, cols, np.asarray(parse_setting(setting)["coeffs"]), None)
            sec = float(plan.estimated_seconds_per_sample)
            base = sec if base is None else base
            rows.append(
                {
                    "rows": n,
                    "columns": cols,
                    "setting": setting,
                    "batch_size": plan.batch_size,
                    "ring": plan.params.poly_modulus_degree,
                    "primes": len(plan.params.coeff_modulus_bits),
                    "seconds_per_sample_epoch": sec,
                    "relative": round(sec / base, 2),
                }
            )
            print(f"  {n} x {cols} {setting:10s} {rows[-1]}", flush=True)
    return rows


def _save(out: Path, update: Callable[[dict[str, Any]], None]) -> None:
    results: dict[str, Any] = {"machine": "", "runs": []}
    if out.exists():
        results = json.loads(out.read_text())
    update(results)
    results["about"] = (
        "benchmarks/sigmoid_search.py: plaintext emulation, 5-fold gaps to scikit-learn "
        "(accuracy points, AUC); each run's source is the command that regenerates it"
    )
    results["machine"] = f"{os.cpu_count()} CPUs, {platform.python_version()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


def _sets(args: list[str]) -> list[str]:
    if args == ["all"]:
        return defaults.set_names()
    if args == ["seven"]:
        return list(SEVEN)
    unknown = sorted(set(args) - set(defaults.set_names()))
    if unknown:
        raise SystemExit(f"unknown sets {unknown}: all, seven or names of {defaults.set_names()}")
    return args


def main(argv: list[str] | None = None) -> int:
    import warnings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="today")
    p.add_argument("--epochs", default="5")
    p.add_argument("--seed", type=int, default=0, help="random_state: the minibatch order")
    p.add_argument("--sets", nargs="+", default=["seven"])
    p.add_argument("--out", default=str(DEFAULT_OUT))
    what = p.add_mutually_exclusive_group()
    what.add_argument("--verify", action="store_true", help="emulation against fit, fold 0")
    what.add_argument("--describe", action="store_true", help="the setting's polynomial")
    what.add_argument("--plan-costs", action="store_true", help="CKKS plans of today, d15, d31")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    out, sets = Path(args.out), _sets(args.sets)
    parse_setting(args.setting)  # refuse a bad name before any work
    epoch_rule(args.epochs)
    if args.verify:
        found = verify(args.setting, sets)
        _save(out, lambda r: r.setdefault("verify", {}).setdefault(args.setting, {}).update(found))
    elif args.describe:
        s = parse_setting(args.setting)
        if s["coeffs"] is None:
            raise SystemExit("--describe takes a polynomial setting")
        found = describe(s["coeffs"], s["radius"])
        print(args.setting, found)
        _save(out, lambda r: r.setdefault("polynomials", {}).update({args.setting: found}))
    elif args.plan_costs:
        found = plan_costs(["today", "d15R12w3", "d31R20"])
        _save(out, lambda r: r.update(plan_costs=found))
    else:
        row = run(args.setting, args.epochs, sets, args.seed)

        def put(results: dict[str, Any]) -> None:
            key = (row["setting"], row["epochs"], row["seed"], [s["set"] for s in row["sets"]])
            results["runs"] = [
                r
                for r in results["runs"]
                if (r["setting"], r["epochs"], r["seed"], [s["set"] for s in r["sets"]]) != key
            ] + [row]

        _save(out, put)
    return 0


if __name__ == "__main__":
    sys.exit(main())
