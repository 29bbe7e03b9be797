"""Experiment (fourteenth pass, measured and not taken): the LSTM recurrence of
the steps schedule as ONE numba parallel region per pass, two threads each
owning half of the units, with a spin barrier per timestep built from atomic
loads and stores (numba @intrinsic), and OpenBLAS on one thread inside it.

    python benchmarks/experiments/lstm_one_region.py --units 128 --steps 100

It generates the sweep model of those dimensions (benchmarks/sweep.py) into a
temporary folder, runs the generated module's forward and backward
recurrences (`_lstm_recurrence_forward` / `_lstm_recurrence_backward`, steps
schedule) and the one-region versions on the same data, checks that every
output is bit-identical, and prints medians and cycles per step by phase
(barrier wait, product, cells). Batch 32, float32, Keras's default
activations, return_sequences=False: the prototype covers that case only.

The same design wired into the generator, with a deadlock-proof start
(part 1 claims its half by compare-and-swap; part 0 waits a bounded time,
then runs both halves): lstm_parts.patch next to this file. Why neither is
in the generated code: benchmarks/README.md, "Fourteenth pass".
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from workloads import sweep_model_source  # noqa: E402

g = tanh32 = None  # the generated module and its float32 tanh, set by load() before any kernel compiles


@intrinsic
def aload(typingctx, arr, idx):
    """arr[idx] as an atomic acquire load (int64)."""
    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, idx), codegen


@intrinsic
def astore(typingctx, arr, idx, val):
    """arr[idx] = val as an atomic release store (int64)."""
    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        builder.store_atomic(args[2], ptr, "release", 8)
        return context.get_dummy_value()
    return types.void(arr, idx, val), codegen


from llvmlite import ir as llir
@intrinsic
def rdtsc(typingctx):
    def codegen(context, builder, sig, args):
        fnty = llir.FunctionType(llir.IntType(64), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@njit
def _barrier(flags, p, k):
    """Part p has reached barrier k; wait until the other part has too. Each
    part's counter sits on its own 128-byte line (flags[0], flags[16])."""
    astore(flags, p * 16, k)
    while aload(flags, (1 - p) * 16) < k:
        pass


@njit
def _part(p, T, B, U, zs, hbuf, cc, hp, cp, tc, rktp, rectp, bias, flags, base, prof):
    """Forward steps for units lo:hi of every row: the product of its gate
    rows (rktp[p], (4 Uh, U)) with h_{t-1}, then its cells. h is double-
    buffered (hbuf[t % 2] read, hbuf[(t + 1) % 2] written), so one barrier a
    step suffices. prof accumulates cycles: barrier, product, cells."""
    lo = p * U // 2
    hi = (p + 1) * U // 2
    Uh = hi - lo
    half = np.float32(0.5)
    for b in range(B):
        for u in range(lo, hi):
            hbuf[0, b, u] = 0
            cc[b, u] = 0
    rect = rectp[p]
    recb = np.empty((B, 4 * Uh), zs.dtype)
    for t in range(T):
        c0 = rdtsc()
        _barrier(flags, p, base + t + 1)
        c1 = rdtsc()
        hprev = hbuf[t % 2]
        hnext = hbuf[(t + 1) % 2]
        np.dot(rktp[p], hprev.T, rect)   # (4Uh, B)
        c2 = rdtsc()
        g._lstm_transpose(recb, rect)     # (B, 4Uh)
        for b in range(B):
            z = zs[b, t]
            r = recb[b]
            for gg in range(4):
                zg = z[gg * U + lo: gg * U + hi]
                rg = r[gg * Uh: (gg + 1) * Uh]
                bg = bias[gg * U + lo: gg * U + hi]
                for u in range(Uh):
                    zg[u] += rg[u] + bg[u]
            zi = z[lo:hi]
            zf = z[U + lo:U + hi]
            zc = z[2 * U + lo:2 * U + hi]
            zo = z[3 * U + lo:3 * U + hi]
            for u in range(Uh):
                zi[u] = half + half * tanh32(half * zi[u])
                zf[u] = half + half * tanh32(half * zf[u])
                zc[u] = tanh32(zc[u])
                zo[u] = half + half * tanh32(half * zo[u])
            hpr = hp[b, t, lo:hi]
            cpr = cp[b, t, lo:hi]
            hv = hprev[b, lo:hi]
            cv = cc[b, lo:hi]
            for u in range(Uh):
                hpr[u] = hv[u]
                cpr[u] = cv[u]
            tcr = tc[b, t, lo:hi]
            hn = hnext[b, lo:hi]
            for u in range(Uh):
                cn = zf[u] * cv[u] + zi[u] * zc[u]
                cv[u] = cn
                a = tanh32(cn)
                tcr[u] = a
                hn[u] = zo[u] * a
        c3 = rdtsc()
        prof[p, 0] += c1 - c0
        prof[p, 1] += c2 - c1
        prof[p, 2] += c3 - c2
    _barrier(flags, p, base + T + 1)


@njit(parallel=True)
def fwd_region(zs, hbuf, cc, hp, cp, tc, rktp, rectp, bias, flags, base, prof):
    B, T, G = zs.shape
    U = G // 4
    for p in prange(2):
        _part(p, T, B, U, zs, hbuf, cc, hp, cp, tc, rktp, rectp, bias, flags, base, prof)


def onepool_forward(y, zs, hp, cp, tc, hbuf, cc, rktp, rectp, rkernel, bias, flags, prof):
    U = rkernel.shape[0]
    Uh = U // 2
    for p in range(2):   # rows of rkernel.T for own units' gates
        for gg in range(4):
            rktp[p, gg * Uh:(gg + 1) * Uh] = rkernel[:, gg * U + p * Uh: gg * U + (p + 1) * Uh].T
    base = int(max(flags[0], flags[16]))  # the barrier's counter only grows, across calls
    g._blas_one_thread(fwd_region, zs, hbuf, cc, hp, cp, tc, rktp, rectp, bias, flags, base, prof)
    y[:, 0, :] = hbuf[zs.shape[1] % 2]


@njit
def _bpart(p, T, B, U, dzs, dzt2, dht, dh, dc, dy, zs, cp, tc, rkernel, flags, base, prof):
    """Backward steps for units lo:hi: the cells (dz of its gates, copied into
    dzt2[t % 2] for the product), a barrier (all of dz_t written), then its
    units' dh_{t-1} = rkernel[lo:hi] @ dz_t.T."""
    lo = p * U // 2
    hi = (p + 1) * U // 2
    Uh = hi - lo
    one = np.float32(1.0)
    for b in range(B):
        for u in range(lo, hi):
            dh[b, u] = 0
            dc[b, u] = 0
    rk = rkernel[lo:hi]            # (Uh, G) rows of own units: contiguous
    dhtp = dht[p]                  # (Uh, B)
    for t in range(T - 1, -1, -1):
        c0 = rdtsc()
        dzt = dzt2[t % 2]
        for b in range(B):
            gh = dh[b, lo:hi]
            gc = dc[b, lo:hi]
            if t == T - 1:
                dyr = dy[b, 0, lo:hi]
                for u in range(Uh):
                    gh[u] += dyr[u]
            z = zs[b, t]
            d = dzs[b, t]
            a = tc[b, t, lo:hi]
            cpr = cp[b, t, lo:hi]
            zi = z[lo:hi]; zf = z[U + lo:U + hi]; zg = z[2 * U + lo:2 * U + hi]; zo = z[3 * U + lo:3 * U + hi]
            di = d[lo:hi]; df = d[U + lo:U + hi]; dg = d[2 * U + lo:2 * U + hi]; do = d[3 * U + lo:3 * U + hi]
            for u in range(Uh):
                i = zi[u]; f = zf[u]; g_ = zg[u]; o = zo[u]
                au = a[u]
                ghu = gh[u]
                gg = gc[u] + ghu * o * (one - au * au)
                di[u] = i * (one - i) * (gg * g_)
                df[u] = f * (one - f) * (gg * cpr[u])
                dg[u] = (one - g_ * g_) * (gg * i)
                do[u] = o * (one - o) * (ghu * au)
                gc[u] = gg * f
            if t > 0:
                dr = dzt[b]
                for gq in range(4):
                    s = d[gq * U + lo: gq * U + hi]
                    o2 = dr[gq * U + lo: gq * U + hi]
                    for u in range(Uh):
                        o2[u] = s[u]
        c1 = rdtsc()
        if t == 0:
            break
        _barrier(flags, p, base + (T - t))
        c2 = rdtsc()
        np.dot(rk, dzt.T, dhtp)      # (Uh, B) = dh_{t-1}[:, own].T
        for b in range(B):
            for u in range(Uh):
                dh[b, lo + u] = dhtp[u, b]
        c3 = rdtsc()
        prof[p, 0] += c2 - c1
        prof[p, 1] += c3 - c2
        prof[p, 2] += c1 - c0
    _barrier(flags, p, base + T + 1)


@njit(parallel=True)
def bwd_region(dzs, dzt2, dht, dh, dc, dy, zs, cp, tc, rkernel, flags, base, prof):
    B, T, G = zs.shape
    U = G // 4
    for p in prange(2):
        _bpart(p, T, B, U, dzs, dzt2, dht, dh, dc, dy, zs, cp, tc, rkernel, flags, base, prof)




def load(units, steps):
    """Generate the sweep model for (steps, units) and import it as g."""
    global g, tanh32
    work = tempfile.mkdtemp(prefix="gen-one-region-")
    with open(os.path.join(work, "model.py"), "w") as f:
        f.write(sweep_model_source(steps, units))
    subprocess.run([sys.executable, "-m", "gen", os.path.join(work, "model.py"), "-o", os.path.join(work, "out")],
                   check=True, cwd=os.path.dirname(os.path.dirname(HERE)))
    spec = importlib.util.spec_from_file_location("gen_one_region", os.path.join(work, "out", "model.py"))
    g = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(g)
    tanh32 = g._activation_tanh32


def median_ms(fn, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    U, T, B, I = args.units, args.steps, args.batch, 32
    G = 4 * U
    load(U, T)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I), dtype=np.float32)
    kernel = rng.standard_normal((I, G), dtype=np.float32) * np.float32(0.2)
    rkernel = rng.standard_normal((U, G), dtype=np.float32) * np.float32(1 / np.sqrt(U))
    bias = rng.standard_normal(G, dtype=np.float32) * np.float32(0.1)
    zs0 = (x.reshape(B * T, I) @ kernel).reshape(B, T, G)
    dy = rng.standard_normal((B, 1, U), dtype=np.float32)
    prof = np.zeros((2, 8), np.int64)
    flags = np.zeros(64, np.int64)

    def buffers():
        return dict(zs=np.empty((B, T, G), np.float32), y=np.empty((B, 1, U), np.float32),
                    hp=np.empty((B, T, U), np.float32), cp=np.empty((B, T, U), np.float32),
                    tc=np.empty((B, T, U), np.float32), dzs=np.empty((B, T, G), np.float32),
                    dh=np.empty((B, U), np.float32), dc=np.empty((B, U), np.float32))
    cur, new = buffers(), buffers()
    hc, cc, rec = np.empty((B, U), np.float32), np.empty((B, U), np.float32), np.empty((B, G), np.float32)
    rkt, dzt = np.empty((G, U), np.float32), np.empty((B, G), np.float32)
    hbuf, rktp = np.empty((2, B, U), np.float32), np.empty((2, 2 * U, U), np.float32)
    rectp, dzt2 = np.empty((2, 2 * U, B), np.float32), np.empty((2, B, G), np.float32)
    dht = np.empty((2, U // 2, B), np.float32)

    def cur_forward():
        c = cur
        c["zs"][:] = zs0
        g._lstm_recurrence_forward(c["y"], c["zs"], c["hp"], c["cp"], c["tc"], hc, cc, rec, rkt, rkernel, bias,
                                   3, 2, False, True)

    def new_forward():
        n = new
        n["zs"][:] = zs0
        onepool_forward(n["y"], n["zs"], n["hp"], n["cp"], n["tc"], hbuf, cc, rktp, rectp, rkernel, bias, flags, prof)

    def cur_backward():
        c = cur
        g._lstm_recurrence_backward(c["dzs"], c["dh"], c["dc"], dzt, dy, c["zs"], c["cp"], c["tc"], rkernel,
                                    3, 2, False, True)

    def new_backward():
        n = new
        base = int(max(flags[0], flags[16]))
        g._blas_one_thread(bwd_region, n["dzs"], dzt2, dht, n["dh"], n["dc"], dy, n["zs"], n["cp"], n["tc"],
                           rkernel, flags, base, prof)

    for f in (cur_forward, new_forward, cur_backward, new_backward):
        f()
    for k in ("y", "zs", "hp", "cp", "tc", "dzs", "dh", "dc"):
        print(f"{k}: max |current - one region| = {float(np.abs(cur[k] - new[k]).max())}")
    for _ in range(3):
        print(f"U {U} T {T} B {B}: forward current {median_ms(cur_forward, args.repeats):.2f} ms, "
              f"one region {median_ms(new_forward, args.repeats):.2f} ms; backward current "
              f"{median_ms(cur_backward, args.repeats):.2f} ms, one region {median_ms(new_backward, args.repeats):.2f} ms")
    for name, fn in (("forward", new_forward), ("backward", new_backward)):
        prof[:] = 0
        median_ms(fn, args.repeats)
        per = prof[:, :3] / (args.repeats * T) / 1e3
        print(f"{name}, thousands of cycles a step per thread (barrier wait, product, cells): "
              f"{np.round(per, 1).tolist()}")


if __name__ == "__main__":
    main()
