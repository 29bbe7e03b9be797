# --------------------------------------------------------------- concat
# Every input is viewed as (outer, width_k); the output as
# (outer, sum_k width_k).  One call per input, each owning the column
# range [offset, offset + width_k). Rows are copied through slices indexed
# from 0, so the loops vectorize (docs/DESIGN.md, "Kernel contract").


@njit
def concat_forward(out, x, offset):
    """out[:, offset:offset+w] = x.

    out (n, W)  output, W = total width
    x   (n, w)  one input
    """
    n, w = x.shape
    for r in range(n):
        dst, src = out[r, offset:offset + w], x[r]
        for j in range(w):
            dst[j] = src[j]


@njit
def concat_backward(dx, dout, offset, mode):
    """dx (mode) = dout[:, offset:offset+w].

    dx   (n, w)  input gradient: mode 0 skip, 1 overwrite, 2 accumulate
    dout (n, W)  output gradient
    """
    if mode == 0:
        return
    n, w = dx.shape
    for r in range(n):
        dst, src = dx[r], dout[r, offset:offset + w]
        if mode == 1:
            for j in range(w):
                dst[j] = src[j]
        else:
            for j in range(w):
                dst[j] += src[j]
