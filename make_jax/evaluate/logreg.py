"""Multinomial logistic regression on frozen features, fitted with L-BFGS (scipy), float64 — the linear probe's
classifier, defined exactly as scikit-learn's `LogisticRegression(C=C)` (lbfgs, multinomial, L2 on the weights,
unpenalised intercept), so its optimum is the same:

    min_{W, b}  C · Σ_i −log softmax(x_i W + b)[y_i]  +  ½ ‖W‖²_F          W (D, K), b (K,)

(minimised here divided by C·N, which changes the scale, not the minimiser). Pure numpy + scipy; no jax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["LogReg", "C_GRID", "fit", "select_c"]

# The coarse grid of the regularisation search (CLIP's linear probes sweep 1e-6..1e6 on a log scale); the best
# coarse value is refined on a finer grid between its neighbours.
C_GRID = tuple(float(c) for c in np.logspace(-6, 6, 13))


@dataclass
class LogReg:
    """A fitted classifier: weights (D, K), intercept (K,), its C and whether L-BFGS converged."""

    coef: np.ndarray
    intercept: np.ndarray
    C: float
    converged: bool
    iterations: int

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x (N, D) → (N, K) float64."""
        return np.asarray(x, np.float64) @ self.coef + self.intercept

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(x), axis=1)


def _objective(theta: np.ndarray, x: np.ndarray, onehot: np.ndarray, lam: float):
    """Mean cross-entropy + lam/2 ‖W‖² and its gradient; theta = [W.ravel(), b]."""
    n, d = x.shape
    k = onehot.shape[1]
    w, b = theta[: d * k].reshape(d, k), theta[d * k:]
    z = x @ w + b
    z -= z.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1, keepdims=True))
    logp = z - logz
    loss = -np.sum(onehot * logp) / n + 0.5 * lam * np.sum(w * w)
    g = (np.exp(logp) - onehot) / n  # (N, K)
    grad_w = x.T @ g + lam * w
    return loss, np.concatenate([grad_w.ravel(), g.sum(axis=0)])


def fit(x: np.ndarray, y: np.ndarray, num_classes: int, C: float, *, max_iter: int = 1000, tol: float = 1e-10,
        init: LogReg | None = None) -> LogReg:
    """Fits on x (N, D), integer labels y (N,) in [0, num_classes). `init` warm-starts (a regularisation path)."""
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features must be (N, D) and labels (N,); got {x.shape} and {y.shape}")
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    n, d = x.shape
    onehot = np.zeros((n, num_classes))
    onehot[np.arange(n), y] = 1.0
    theta0 = (np.concatenate([init.coef.ravel(), init.intercept]) if init is not None
              else np.zeros(d * num_classes + num_classes))
    res = minimize(_objective, theta0, args=(x, onehot, 1.0 / (C * n)), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    w = res.x[: d * num_classes].reshape(d, num_classes)
    return LogReg(w, res.x[d * num_classes:], float(C), bool(res.success), int(res.nit))


def select_c(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, num_classes: int,
             grid: Sequence[float] = C_GRID, refine: int = 4, tol: float = 1e-6) -> tuple[float, list[dict]]:
    """The C of best validation accuracy (ties: the smaller C, i.e. the stronger regularisation), searched on
    `grid` and then on `refine` log-spaced values on each side of the best coarse value, halfway to its grid
    neighbours. The search fits stop at gradient tolerance `tol` (only their validation accuracy is used; the
    final classifier is fitted tighter by the caller). Returns (C, [{C, val_accuracy}, ...] sorted by C)."""
    tried: dict[float, float] = {}

    def run(cs):
        prev = None
        for c in sorted(cs):
            if c in tried:
                continue
            prev = fit(x_train, y_train, num_classes, c, init=prev, tol=tol)
            tried[c] = float(np.mean(prev.predict(x_val) == y_val))

    run(grid)
    best = max(sorted(tried), key=lambda c: tried[c])  # max() keeps the first (smallest) of equal accuracies
    g = sorted(grid)
    i = g.index(best)
    lo = np.log10(g[i - 1]) if i > 0 else np.log10(best) - 1
    hi = np.log10(g[i + 1]) if i + 1 < len(g) else np.log10(best) + 1
    mid = np.log10(best)
    below = np.logspace((lo + mid) / 2, mid, refine + 1)[:-1]
    above = np.logspace(mid, (mid + hi) / 2, refine + 1)[1:]
    fine = list(below) + list(above)
    run([float(c) for c in fine])
    best = max(sorted(tried), key=lambda c: tried[c])
    return best, [{"C": c, "val_accuracy": a} for c, a in sorted(tried.items())]
