# ----------------------------------------------------------- activation
# Codes: 0 linear, 1 relu, 2 sigmoid, 3 tanh, 4 softmax (over the last axis).
# The backward pass only needs the forward *output* y:
#   relu' = (y > 0), sigmoid' = y (1 - y), tanh' = 1 - y^2,
#   softmax: dz = y * (dy - sum(dy * y)).
# Constants are made with z.dtype.type(...) so float32 arrays are computed
# in float32 (a bare 1.0 literal would promote the arithmetic to float64).
# Each kernel works on a range of rows, with one loop per code: a branch
# on the code inside the element loop kept it from vectorizing (relu over
# 256 x 64: 6.8 us, 1.0 us with the branch outside). Parallel kernels hand
# threads blocks of rows. Waking numba's sleeping threads costs ~40 us on
# the benchmark machine, more than relu over a 1024 x 64 batch (3 us), so
# only the exp-based codes (sigmoid, tanh, softmax) go parallel, and only
# from _ACTIVATION_PARALLEL_MIN elements (1024 x 64 sigmoid: 128 us serial,
# 112 us parallel).

_ACTIVATION_PARALLEL_MIN = 1 << 16  # elements; below this, run serially
_ACTIVATION_BLOCK = 16  # rows per parallel task
# Constant arguments of one kernel to another are np.int64(...) /
# np.bool_(...): numba compiles a callee once more for each literal value a
# caller passes (Literal[int](0), next to its int64 copy for the parallel
# kernels' blocks), and a literal passed on goes down the calls (tested in
# a cold process: tests/test_compile.py).
# float32 sigmoid and softmax take exp from _activation_exp32: plain
# arithmetic that vectorizes, where libm's exp is a call per value (softmax
# over 1024 x 10: 31 -> 12 us). float64 keeps libm's exp.


@njit
def _activation_tanh(v, one):
    """tanh(v) in v's dtype, as accurate as libm tanh and 1.3-2.7x faster.

    1 - exp(-2|v|) cancels near 0, so small |v| goes through expm1.
    """
    two = one + one
    a = abs(v)
    if a < 0.625:
        e = math.expm1(-two * a)
        r = -e / (e + two)
    else:
        e = math.exp(-two * a)
        r = (one - e) / (one + e)
    return r if v >= 0 else -r


@njit(inline="always")
def _activation_tanh32(v):
    """Eigen's float32 rational tanh (what XLA runs for Keras on JAX):
    |error| < 4e-7, branch-free, so loops of it vectorize (libm's tanh is a
    call per value: Dense(64, tanh) over 1024 rows 290 -> 25 us)."""
    x = min(max(v, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return (p * x) / q


@njit(inline="always")
def _activation_exp32(x):
    """exp(x) for float32 x <= 0: Cephes's expf (within 0.54 ulp of exp on
    [-85.9, 0]; 0 below, where exp(x) < 4.8e-38; NaN stays NaN). 2^n comes
    from integer shifts, not from the float's bits, which numba cannot
    reinterpret."""
    lo = np.float32(-85.9)
    xc = max(x, lo)
    fx = math.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))
    r = xc - fx * np.float32(0.693359375)  # x - n ln2 in two parts (Cody-Waite)
    r = r - fx * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    e = p * (r * r) + r + np.float32(1.0)
    k = np.int64(-fx)  # 0 <= k <= 124: 2^k = 2^a 2^b with a, b <= 62
    a = min(k, 62)
    scale = np.float32(np.int64(1) << a) * np.float32(np.int64(1) << (k - a))
    v = e / scale
    return v if x >= lo else (np.float32(0.0) if x < lo else x)


@njit(inline="always")
def _activation_sigmoid32(v):
    """sigmoid(v) for float32 v, from exp(-|v|), which never overflows."""
    one = np.float32(1.0)
    e = _activation_exp32(-abs(v))
    return one / (one + e) if v >= np.float32(0.0) else e / (one + e)


@njit
def _activation_forward_rows(y, z, r0, r1, act):
    """Rows r0:r1 of y = act(z); y may alias z. y is C-contiguous (every
    buffer and view the module passes is): float32 softmax takes exp over
    the block's rows as one flat loop."""
    c = z.shape[1]
    one = z.dtype.type(1.0)
    zero = one - one
    if _USES_RELU and act == 1:
        for r in range(r0, r1):
            for j in range(c):
                v = z[r, j]
                y[r, j] = v if v > zero else zero
    elif _USES_SIGMOID and act == 2:
        if z.itemsize == 4:
            for r in range(r0, r1):
                for j in range(c):
                    y[r, j] = _activation_sigmoid32(z[r, j])
        else:
            for r in range(r0, r1):
                for j in range(c):
                    y[r, j] = one / (one + math.exp(-z[r, j]))
    elif _USES_TANH and act == 3:
        if z.itemsize == 4:
            for r in range(r0, r1):
                for j in range(c):
                    y[r, j] = _activation_tanh32(z[r, j])
        else:
            for r in range(r0, r1):
                for j in range(c):
                    y[r, j] = _activation_tanh(z[r, j], one)
    elif _USES_SOFTMAX and act == 4:
        # subtract the row max so exp never overflows
        for r in range(r0, r1):
            m = z[r, 0]
            for j in range(1, c):
                if z[r, j] > m:
                    m = z[r, j]
            for j in range(c):
                y[r, j] = z[r, j] - m
        _activation_softmax_tail(y, r0, r1)
    else:
        for r in range(r0, r1):
            for j in range(c):
                y[r, j] = z[r, j]


@njit
def _activation_softmax_inplace(y, r0, r1):
    """Rows r0:r1 of y = softmax(y): the softmax of _activation_forward_rows
    through one name. Through two (y and z the same array), LLVM's run-time
    overlap check fails and the subtraction of the row max runs scalar
    (Dense(10, softmax)'s epilogue over 1024 rows: 16.0 -> 12.6 us)."""
    for r in range(r0, r1):
        m = y[r, 0]
        for j in range(1, y.shape[1]):
            if y[r, j] > m:
                m = y[r, j]
        for j in range(y.shape[1]):
            y[r, j] = y[r, j] - m
    _activation_softmax_tail(y, r0, r1)


@njit
def _activation_softmax_tail(y, r0, r1):
    """Rows r0:r1 of y, less their max: y = exp(y) / the row's sum."""
    c = y.shape[1]
    one = y.dtype.type(1.0)
    zero = one - one
    if y.itemsize == 4:
        # one loop over the whole block: rows of a few classes are too
        # short to vectorize on their own (1024 x 10: 35 against 12 us)
        yf = y[r0:r1].reshape(-1)
        for i in range(yf.shape[0]):
            yf[i] = _activation_exp32(yf[i])
    else:
        for r in range(r0, r1):
            for j in range(c):
                y[r, j] = math.exp(y[r, j])
    for r in range(r0, r1):
        s = zero
        for j in range(c):
            s += y[r, j]
        inv = one / s
        for j in range(c):
            y[r, j] *= inv


@njit
def _activation_backward_rows_inplace(dz, y, r0, r1, act):
    """_activation_backward_rows with dz as dy, mode 1. For relu, sigmoid
    and tanh the element loop names one array: two names for one buffer
    make the compiler's runtime overlap check fail, and it runs the scalar
    loop (relu over 1024 x 64: 20 -> 4.5 us). Same operations, same bits."""
    one = y.dtype.type(1.0)
    zero = one - one
    c = y.shape[1]
    if _USES_RELU and act == 1:
        for r in range(r0, r1):
            for j in range(c):
                d = dz[r, j]
                dz[r, j] = d if y[r, j] > zero else zero
    elif _USES_SIGMOID and act == 2:
        for r in range(r0, r1):
            for j in range(c):
                dz[r, j] = dz[r, j] * (y[r, j] * (one - y[r, j]))
    elif _USES_TANH and act == 3:
        for r in range(r0, r1):
            for j in range(c):
                dz[r, j] = dz[r, j] * (one - y[r, j] * y[r, j])
    elif _USES_SOFTMAX:  # the one other code callers pass (never linear)
        _activation_backward_rows(dz, dz, y, r0, r1, act, np.int64(1))


@njit
def _activation_backward_rows(dz, dy, y, r0, r1, act, mode):
    """Rows r0:r1 of dz (mode 1 =, 2 +=) dy * act'(z), from the output y; dz
    may alias dy in mode 1 (softmax takes its row's dot product before it
    writes the row). The mode test in the loops is loop-invariant: the
    compiler moves it out (measured as fast as one loop per mode)."""
    c = y.shape[1]
    one = y.dtype.type(1.0)
    zero = one - one
    for r in range(r0, r1):
        s = zero
        if _USES_SOFTMAX and act == 4:
            for j in range(c):
                s += dy[r, j] * y[r, j]
        if _USES_RELU and act == 1:
            for j in range(c):
                # load dy unconditionally: a load under the test cannot be
                # made a select, and the branch mispredicts on real data
                # (1024 x 64: 203 us)
                d = dy[r, j]
                g = d if y[r, j] > zero else zero
                if mode == 1:
                    dz[r, j] = g
                else:
                    dz[r, j] += g
        elif _USES_SIGMOID and act == 2:
            for j in range(c):
                g = dy[r, j] * (y[r, j] * (one - y[r, j]))
                if mode == 1:
                    dz[r, j] = g
                else:
                    dz[r, j] += g
        elif _USES_TANH and act == 3:
            for j in range(c):
                g = dy[r, j] * (one - y[r, j] * y[r, j])
                if mode == 1:
                    dz[r, j] = g
                else:
                    dz[r, j] += g
        elif _USES_SOFTMAX and act == 4:
            for j in range(c):
                g = y[r, j] * (dy[r, j] - s)
                if mode == 1:
                    dz[r, j] = g
                else:
                    dz[r, j] += g
        else:
            for j in range(c):
                if mode == 1:
                    dz[r, j] = dy[r, j]
                else:
                    dz[r, j] += dy[r, j]


@njit
def _activation_forward_serial(y, z, act):
    _activation_forward_rows(y, z, np.int64(0), z.shape[0], act)


@njit(parallel=True)
def _activation_forward_parallel(y, z, act):
    n, blk = z.shape[0], _ACTIVATION_BLOCK
    for i in prange((n + blk - 1) // blk):
        _activation_forward_rows(y, z, i * blk, min(n, i * blk + blk), act)


@njit
def _activation_backward_serial(dz, dy, y, act, mode):
    _activation_backward_rows(dz, dy, y, np.int64(0), y.shape[0], act, mode)


@njit(parallel=True)
def _activation_backward_parallel(dz, dy, y, act, mode):
    n, blk = y.shape[0], _ACTIVATION_BLOCK
    for i in prange((n + blk - 1) // blk):
        _activation_backward_rows(dz, dy, y, i * blk, min(n, i * blk + blk), act, mode)


# The entry points choose serial or parallel in Python, so a model whose
# arrays are all small never compiles the parallel kernels (each costs
# about a second of numba compilation on the first run). The test is
# inline, not a helper call: predict at batch 1 is mostly calls.

def activation_forward(y, z, act):
    """y = act(z).

    y (n, c)  output (may alias z)
    z (n, c)  pre-activation
    """
    if z.size < _ACTIVATION_PARALLEL_MIN or not 2 <= act <= 4:
        _activation_forward_serial(y, z, act)
    else:
        _activation_forward_parallel(y, z, act)


def activation_backward(dz, dy, y, act, mode):
    """dz (mode) = dy * act'(z), computed from the output y.

    dz (n, c)  pre-activation gradient: mode 0 skip, 1 overwrite,
               2 accumulate; may alias dy when mode == 1
    dy (n, c)  output gradient
    y  (n, c)  forward output
    """
    if mode == 0:
        return
    if y.size < _ACTIVATION_PARALLEL_MIN or not 2 <= act <= 4:
        _activation_backward_serial(dz, dy, y, act, mode)
    else:
        _activation_backward_parallel(dz, dy, y, act, mode)
