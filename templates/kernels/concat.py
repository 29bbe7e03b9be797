# --------------------------------------------------------------- concat
# Every input is viewed as (outer, width_k); the output as
# (outer, sum_k width_k).  One call per input, each owning the column
# range [offset, offset + width_k).


@njit
def concat_forward(out, x, offset):
    """out[:, offset:offset+w] = x.

    out (n, W)  output, W = total width
    x   (n, w)  one input
    """
    n, w = x.shape
    for r in range(n):
        for j in range(w):
            out[r, offset + j] = x[r, j]


@njit
def concat_backward(dx, dout, offset, mode):
    """dx (mode) = dout[:, offset:offset+w].

    dx   (n, w)  input gradient: mode 0 skip, 1 overwrite, 2 accumulate
    dout (n, W)  output gradient
    """
    if mode == 0:
        return
    n, w = dx.shape
    if mode == 1:
        for r in range(n):
            for j in range(w):
                dx[r, j] = dout[r, offset + j]
    else:
        for r in range(n):
            for j in range(w):
                dx[r, j] += dout[r, offset + j]
