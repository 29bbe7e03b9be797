"""Cross-checks of the LSTM, loss and optimizer kernels against Keras 3 on
the torch backend, run in a subprocess (skipped when keras or torch does
not import there)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fd import (F32, LINEAR, LOSSES, OPT_CONFIGS, RELU, SIGMOID, TANH, loss_data, loss_fns,
                lstm_run, rng, run_ours)


# ------------------------------------------------- Keras (torch) cross-check

KERAS_SCRIPT = r"""
import json, sys, os
import numpy as np
import keras, torch
d = np.load(sys.argv[1], allow_pickle=True)
spec = json.loads(sys.argv[2])
res = {}
for key, item in spec.items():
    kind = item["kind"]
    if kind == "opt":
        cls = {"sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop,
               "adam": keras.optimizers.Adam}[item["name"]]
        opt = cls(**item["cfg"])
        w = keras.Variable(d[key + "_w"])
        g = torch.as_tensor(d[key + "_g"])
        for _ in range(item["steps"]):
            opt.apply_gradients([(g, w)])
        res[key] = keras.ops.convert_to_numpy(w)
    elif kind == "loss":
        y = torch.tensor(d[key + "_y"], requires_grad=True)
        t = torch.as_tensor(d[key + "_t"])
        fn = getattr(keras.losses, item["name"])
        out = fn(t, y)
        (out.sum() * item["scale"]).backward()
        res[key] = out.detach().numpy()
        res[key + "_grad"] = y.grad.numpy()
    elif kind == "lstm":
        layer = keras.layers.LSTM(item["units"], activation=item["act"],
                                  recurrent_activation=item["ract"],
                                  return_sequences=item["rs"], use_bias=item["use_bias"])
        x = d[key + "_x"]
        layer.build(x.shape)
        ws = [d[key + "_W"], d[key + "_R"]] + ([d[key + "_b"]] if item["use_bias"] else [])
        layer.set_weights(ws)
        res[key] = keras.ops.convert_to_numpy(layer(x))
np.savez(sys.argv[3], **res)
"""


def run_keras(tmp_path, arrays, spec):
    inp, outp = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inp, **arrays)
    env = dict(os.environ, KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES="")
    script = tmp_path / "keras_ref.py"
    script.write_text(textwrap.dedent(KERAS_SCRIPT))
    p = subprocess.run([sys.executable, str(script), str(inp), json.dumps(spec), str(outp)],
                       env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        if "No module named" in p.stderr and ("keras" in p.stderr or "torch" in p.stderr):
            pytest.skip("keras/torch not importable")
        raise AssertionError(p.stderr[-3000:])
    return dict(np.load(outp))


def test_optimizers_match_keras_torch(tmp_path):
    r = rng(16)
    P = 257
    arrays, spec, ours = {}, {}, {}
    for k, (kind, cfg) in enumerate(OPT_CONFIGS):
        key = "opt%d" % k
        w0 = r.standard_normal(P).astype(F32)
        g = r.standard_normal(P).astype(F32)
        arrays[key + "_w"], arrays[key + "_g"] = w0, g
        spec[key] = dict(kind="opt", name=kind, cfg=cfg, steps=3)
        ours[key] = run_ours(kind, cfg, w0, [g, g, g])
    ref = run_keras(tmp_path, arrays, spec)
    for key in spec:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-5, atol=1e-7, err_msg=str(spec[key]))


def test_losses_match_keras_torch(tmp_path):
    r = rng(17)
    arrays, spec, ours = {}, {}, {}
    for name in LOSSES:
        y, t = loss_data(name, r, n=8, c=5, dtype=F32)
        if name == "binary_crossentropy":  # saturated and boundary predictions
            y[1, :4] = [1.0, 0.0, F32(1 - 1e-7), F32(1e-7)]
        if name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
            y[2] = [1.0, 0, 0, 0, 0]
        key = name
        arrays[key + "_y"], arrays[key + "_t"] = y, t
        spec[key] = dict(kind="loss", name=name, scale=0.25)
        fwd, bwd = loss_fns(name)
        out = np.empty(len(y), F32)
        fwd(out, y, t)
        dy = np.empty_like(y)
        bwd(dy, y, t, 0.25)
        ours[key], ours[key + "_grad"] = out, dy
    ref = run_keras(tmp_path, arrays, spec)
    for key in ours:
        np.testing.assert_allclose(ours[key], ref[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_lstm_matches_keras_torch(tmp_path):
    r = rng(18)
    B, T, I, U = 3, 5, 4, 6
    names = {LINEAR: "linear", RELU: "relu", SIGMOID: "sigmoid", TANH: "tanh"}
    arrays, spec, ours = {}, {}, {}
    for k, ((act, ract), rs, use_bias) in enumerate(
            [((TANH, SIGMOID), True, True), ((RELU, TANH), False, True),
             ((SIGMOID, SIGMOID), True, False)]):
        key = "lstm%d" % k
        x = r.standard_normal((B, T, I)).astype(F32)
        W = (0.5 * r.standard_normal((I, 4 * U))).astype(F32)
        Rk = (0.5 * r.standard_normal((U, 4 * U))).astype(F32)
        b = (0.5 * r.standard_normal(4 * U)).astype(F32)
        arrays.update({key + "_x": x, key + "_W": W, key + "_R": Rk, key + "_b": b})
        spec[key] = dict(kind="lstm", units=U, act=names[act], ract=names[ract], rs=rs,
                         use_bias=use_bias)
        y, _ = lstm_run(x, W, Rk, b if use_bias else np.zeros(0, F32), act, ract, rs)
        ours[key] = y if rs else y[:, 0]
    ref = run_keras(tmp_path, arrays, spec)
    for key in ours:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
