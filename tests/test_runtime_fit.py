"""The runtime (templates/runtime*.py) tested through a hand-written fake
generated module (runtime_helpers.py): compute_gradients, train_on_batch,
fit (history, validation, shuffling, buffers, verbose) and how non-finite
losses stop training."""

import math

import numpy as np
import pytest

from runtime_helpers import data, two_data


# -- gradients and steps ------------------------------------------------------

def test_compute_gradients_matches_finite_differences(fake_mod):
    t = fake_mod.TwoOut(seed=0, dtype=np.float64)
    xs, ys = two_data(6)
    before = t.get_weights()
    logs, grads = t.compute_gradients(xs, ys)
    assert list(grads) == ["ids", "embedding", "aux", "o1", "o2"]
    assert grads["ids"] == [] and [g.shape for g in grads["o2"]] == [(4, 3), (3,)]
    assert logs == t.evaluate(xs, ys, batch_size=6)
    assert all(np.array_equal(a, b) for a, b in zip(before, t.get_weights()))
    assert t.iterations == 0
    flat = np.concatenate([g.ravel() for name in grads for g in grads[name]])
    eps, num = 1e-6, np.empty_like(t._params)
    for i in range(t._params.size):
        keep = t._params[i]
        t._params[i] = keep + eps
        up = t.evaluate(xs, ys, batch_size=6)["loss"]
        t._params[i] = keep - eps
        down = t.evaluate(xs, ys, batch_size=6)["loss"]
        t._params[i] = keep
        num[i] = (up - down) / (2 * eps)
    np.testing.assert_allclose(flat, num, rtol=1e-5, atol=1e-8)


def test_train_on_batch_metrics_before_update(fake_mod):
    m = fake_mod.Model(seed=0)
    x, y = data()
    ref = m.evaluate(x, y, batch_size=10)
    _, grads = m.compute_gradients(x, y)
    w0 = m.get_weights()
    logs = m.train_on_batch(x, y)
    assert logs == pytest.approx(ref)
    assert m.iterations == 1
    for w, before, g in zip(m.get_weights(), w0, grads["dense"]):  # sgd, lr 0.1
        np.testing.assert_allclose(w, before - 0.1 * g, rtol=1e-5, atol=1e-7)


def test_adam_first_step(fake_mod):
    t = fake_mod.TwoOut(seed=0, dtype=np.float64)
    xs, ys = two_data()
    _, grads = t.compute_gradients(xs, ys)
    g = np.concatenate([a.ravel() for v in grads.values() for a in v])
    before = t._params.copy()
    t.train_on_batch(xs, ys)
    # Adam's first step: lr * g / (|g| + eps / sqrt(1 - beta_2)) ~ lr * sign(g)
    np.testing.assert_allclose(before - t._params, 0.01 * g / (np.abs(g) + 1e-7 / math.sqrt(1e-3)),
                               rtol=1e-6, atol=1e-12)
    assert t.iterations == 1


def test_fit_history_is_weighted_mean_of_pre_update_batches(fake_mod):
    x, y = data(10)
    m = fake_mod.Model(seed=0)
    hist = m.fit(x, y, verbose=0)  # defaults: 2 epochs, batch 4, no shuffle
    assert list(hist) == ["accuracy", "loss"] and len(hist["loss"]) == 2
    assert hist.history is hist and m.iterations == 6
    ref = fake_mod.Model(seed=0)
    for epoch in range(2):
        sums = {"accuracy": 0.0, "loss": 0.0}
        for s in range(0, 10, 4):
            logs = ref.train_on_batch(x[s:s + 4], y[s:s + 4])
            for k in sums:
                sums[k] += logs[k] * len(x[s:s + 4])
        for k in sums:
            assert hist[k][epoch] == pytest.approx(sums[k] / 10, rel=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), ref.get_weights()))


def test_fit_arguments_override_defaults(fake_mod):
    x, y = data(10)
    m = fake_mod.Model(seed=0)
    hist = m.fit(x, y, epochs=3, batch_size=10, verbose=0)
    assert len(hist["loss"]) == 3 and m.iterations == 3
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(x, y, batch_size=0, verbose=0)


def test_validation_split_takes_last_fraction(fake_mod):
    x, y = data(10)

    class Frozen(fake_mod.Model):
        _optimizer = ("sgd", {"learning_rate": 0.0})

    m = Frozen(seed=0)
    hist = m.fit(x, y, epochs=2, batch_size=3, validation_split=0.3, shuffle=True, verbose=0)
    assert list(hist) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    val = m.evaluate(x[7:], y[7:])
    train = m.evaluate(x[:7], y[:7])
    assert hist["val_loss"][1] == pytest.approx(val["loss"], rel=1e-6)
    assert hist["val_accuracy"][0] == pytest.approx(val["accuracy"])
    assert hist["loss"][0] == pytest.approx(train["loss"], rel=1e-6)
    assert m.iterations == 6  # 7 training samples, batch 3 -> 3 steps per epoch
    with pytest.raises(ValueError, match="not sufficient"):
        m.fit(x[:1], y[:1], validation_split=0.5, verbose=0)


def test_validation_data_multi_output(fake_mod):
    t = fake_mod.TwoOut(seed=0)
    xs, ys = two_data(20)
    vx, vy = two_data(5, seed=9)
    hist = t.fit(xs, ys, epochs=2, validation_data=(vx, vy), verbose=0)
    assert list(hist) == ["loss", "o1_accuracy", "o1_loss", "o2_accuracy", "o2_loss",
                          "val_loss", "val_o1_accuracy", "val_o1_loss", "val_o2_accuracy",
                          "val_o2_loss"]
    assert hist["val_loss"][-1] == pytest.approx(t.evaluate(vx, vy)["loss"], rel=1e-6)


def test_fit_deterministic_and_shuffles(fake_mod):
    xs, ys = two_data(30)
    a, b = fake_mod.TwoOut(seed=5), fake_mod.TwoOut(seed=5)
    ha, hb = a.fit(xs, ys, epochs=3, verbose=0), b.fit(xs, ys, epochs=3, verbose=0)
    assert ha == hb
    assert all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))
    c = fake_mod.TwoOut(seed=5)
    c.fit(xs, ys, epochs=3, shuffle=False, verbose=0)
    assert not np.array_equal(c._params, a._params)


def test_buffers_allocated_once_per_batch_size(fake_mod):
    x, y = data(10)
    m = fake_mod.Model(seed=0)
    m.fit(x, y, epochs=3, batch_size=4, verbose=0)
    m.fit(x, y, epochs=2, batch_size=4, shuffle=True, verbose=0)
    m.evaluate(x, y, batch_size=4)
    assert m.alloc_calls == [4, 2]


def test_verbose_prints_one_line_per_epoch(fake_mod, capsys):
    x, y = data(10)
    fake_mod.Model(seed=0).fit(x, y, epochs=2, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2") and "loss: " in lines[1]


def test_non_finite_loss_stops_fit_and_keeps_weights(fake_mod):
    x, y = data(10)
    m = fake_mod.Model(seed=0)
    huge = [np.full((4, 3), 3e38, np.float32), np.zeros(3, np.float32)]
    huge[0][:, 0] = -3e38
    m.set_weights(huge)
    with np.errstate(all="ignore"):
        with pytest.raises(FloatingPointError, match="epoch 1, batch 1: Non-finite loss.*last finite"):
            m.fit(x, y, verbose=0)
        with pytest.raises(FloatingPointError, match="Non-finite loss"):
            m.train_on_batch(x, y)
    assert m.iterations == 0
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), huge))


def test_divergence_stops_with_finite_weights(fake_mod):
    x, y = data(10)

    class Wild(fake_mod.Linear):
        _optimizer = ("sgd", {"learning_rate": 50.0})

    m = Wild(seed=0)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="Non-finite"):
        m.fit(x * 100, y, epochs=50, batch_size=10, verbose=0)
    assert 0 < m.iterations < 50
    assert np.isfinite(m._params).all()
