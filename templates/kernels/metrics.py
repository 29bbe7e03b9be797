# -------------------------------------------------------------- metrics
# Keras accuracy, per sample (the runtime averages):
#   binary      mean_j (t == (y > 0.5))     strict >, exact compare with t
#   categorical argmax(y) == argmax(t)      first maximum wins, like argmax
#   sparse      argmax(y) == t
# y (n, c) prediction, t (n, c) target (or (n,) int ids), out (n,) in {0, 1}
# (binary: a fraction when c > 1).


@njit
def _metrics_argmax(a, k):
    """Column of the first maximum of row k of a (n, c)."""
    best = 0
    m = a[k, 0]
    for j in range(1, a.shape[1]):
        if a[k, j] > m:
            m = a[k, j]
            best = j
    return best


@njit
def binary_accuracy(out, y, t):
    """out (n,)  y (n, c)  t (n, c)"""
    n, c = y.shape
    for k in range(n):
        hits = 0
        for j in range(c):
            pred = 1.0 if y[k, j] > 0.5 else 0.0
            if t[k, j] == pred:
                hits += 1
        out[k] = hits / c


@njit
def categorical_accuracy(out, y, t):
    """out (n,)  y (n, c)  t (n, c)"""
    n = y.shape[0]
    for k in range(n):
        out[k] = 1.0 if _metrics_argmax(y, k) == _metrics_argmax(t, k) else 0.0


@njit
def sparse_categorical_accuracy(out, y, t):
    """out (n,)  y (n, c)  t (n,) int class ids"""
    n = y.shape[0]
    for k in range(n):
        out[k] = 1.0 if _metrics_argmax(y, k) == t[k] else 0.0
