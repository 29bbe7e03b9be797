"""Whole generated models with an Embedding or LSTM (twitter, stacked_lstm):
the sparse embedding update against the dense one, LSTM weight gradients
on threaded panels against BLAS, the fused Embedding -> LSTM's projection
cache in predict, and the table rows' gradients left where the step
computed them."""
import numpy as np
import pytest

from genmods import generated, random_data


@pytest.mark.parametrize("optimizer", [None, ("sgd", {"learning_rate": 0.05})], ids=["rmsprop", "sgd"])
def test_sparse_embedding_update_equals_dense(optimizer, monkeypatch):
    """twitter (RMSprop) updates only the embedding rows a batch used, with
    the skipped steps' decay of v applied later; 30 steps where rows sit out
    for several steps must match the dense update. The row updates also
    zero the gradient rows they read (the next step's scatter adds into
    them): a row left dirty would show here too."""
    mod = generated("twitter", "model")
    monkeypatch.setitem(mod._OPTIMIZER_KERNELS, "sgd", mod.sgd_update)  # the module ships all optimizer kernels
    Sparse = mod.Model if optimizer is None else type("Sparse", (mod.Model,), {"_optimizer": optimizer})

    class DenseUpdate(Sparse):
        _sparse_tables = ()

    sparse, dense = Sparse(seed=0), DenseUpdate(seed=0)
    assert sparse._sparse and not dense._sparse
    rng = np.random.default_rng(0)
    for step in range(30):
        vocab = rng.integers(0, 40, 6)  # a few rows per step, from a small pool: long gaps
        ids = vocab[rng.integers(0, 6, (4, 100))]
        extra = rng.normal(size=(4, 5)).astype(np.float32)
        lab = rng.integers(0, 2, (4, 1)).astype(np.float32)
        a = sparse.train_on_batch([ids, extra], [lab, lab])
        b = dense.train_on_batch([ids, extra], [lab, lab])
        assert a == pytest.approx(b, rel=1e-5)
    for wa, wb in zip(sparse.get_weights(), dense.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-7)
    sparse._flush_sparse()
    if optimizer is None:
        np.testing.assert_allclose(sparse._opt_state[0], dense._opt_state[0], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("example,model", [("twitter", "model"), ("stacked_lstm", "stacked")])
def test_lstm_weight_gradients_on_panels_equal_blas(example, model, monkeypatch):
    """An LSTM's weight gradients (and an embedded LSTM's kernel gradient)
    through the threaded panel product (_lstm_grad_panels), taken here at
    any size, are BLAS's up to float32 rounding."""
    mod = generated(example, model)
    rng = np.random.default_rng(3)
    xs, ys = random_data(mod.Model, 24, rng, np.float32)
    grads = {}
    calls = []
    on_panels = mod._lstm_grad_panels
    for name, least in (("blas", 1 << 62), ("panels", 0)):
        monkeypatch.setattr(mod, "_LSTM_GRAD_MIN_MACS", least)
        monkeypatch.setattr(mod, "_LSTM_GRAD_MAX_OUTPUT", 1 << 62)
        monkeypatch.setattr(mod, "_lstm_grad_panels", lambda *a: calls.append(a[0].shape) or on_panels(*a))
        grads[name] = mod.Model(seed=1).compute_gradients(xs, ys)[1]
        assert bool(calls) == (name == "panels")
    for lname, gs in grads["blas"].items():
        for g, h in zip(gs, grads["panels"][lname]):
            np.testing.assert_allclose(h, g, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(g).max())))


def test_predict_projection_cache_follows_the_weights():
    """A fused Embedding -> LSTM predicts from rows of table @ kernel,
    computed as ids first need them; every API write of the weights drops
    them. A row's projection never depends on what else was computed, so
    predicting a batch again, or after other batches, gives the same bits."""
    mod = generated("twitter", "model")
    m = mod.Model(seed=0)
    rng = np.random.default_rng(3)
    xs, ys = random_data(mod.Model, 6, rng, np.float32)
    first = m.predict(xs, batch_size=6)
    (version, _p, done), = m._proj.values()
    assert 0 < done.sum() <= xs[0].size  # only the batch's rows
    other = random_data(mod.Model, 6, rng, np.float32)[0]
    m.predict(other, batch_size=6)
    for a, b in zip(first, m.predict(xs, batch_size=6)):
        np.testing.assert_array_equal(a, b)
    m.train_on_batch(xs, ys)
    after = m.predict(xs, batch_size=6)  # weights changed: not the stale projection
    assert m._proj[(0, 1)][0] != version
    fresh = mod.Model(seed=0)
    fresh.set_weights(m.get_weights())
    for a, b in zip(after, fresh.predict(xs, batch_size=6)):
        np.testing.assert_array_equal(a, b)
    version = m._proj[(0, 1)][0]
    m.set_layer_weights({"lstm": [w * 0.5 for w in m.layer_weights()["lstm"]]})
    fresh.set_weights(m.get_weights())
    for a, b in zip(m.predict(xs, batch_size=6), fresh.predict(xs, batch_size=6)):
        np.testing.assert_array_equal(a, b)
    assert m._proj[(0, 1)][0] != version
    # the same function as the training path's projection (within rounding)
    b = m._batch(6)
    outs = m._forward(b.bufs, m._prep_inputs(xs), True)
    for a, o in zip(m.predict(xs, batch_size=6), outs):
        np.testing.assert_allclose(a, o, rtol=1e-6, atol=1e-7)


def test_predict_projection_cache_survives_an_interrupt(monkeypatch):
    """Rows are marked computed before the kernel fills them: an interrupt
    in between must unmark them, or later predicts read garbage."""
    mod = generated("twitter", "model")
    xs, _ = random_data(mod.Model, 4, np.random.default_rng(5), np.float32)
    want = mod.Model(seed=0).predict(xs)
    m = mod.Model(seed=0)

    def interrupted(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(mod, "_lstm_project_rows_range", interrupted)
        with pytest.raises(KeyboardInterrupt):
            m.predict(xs)
    for a, b in zip(m.predict(xs), want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("gathered", [True, False], ids=["training-step", "compute-gradients"])
def test_table_row_gradients_checked_where_they_are(gathered):
    """A training step leaves the table rows' gradients in the fused kernel's
    buffer (no scatter into the table's gradient); compute_gradients
    scatters them. Either way the non-finite check reads them, and the
    scatter-free step gives the table's gradient the scatter would."""
    mod = generated("twitter", "model")
    m = mod.Model(seed=0)
    xs, ys = random_data(mod.Model, 4, np.random.default_rng(5), np.float32)
    xs, ts, _kinds, n = m._prep(xs, ys)
    b = m._batch(n)
    m._gradients(b, m._forward(b.bufs, xs, True), ts, gathered=gathered)
    rows, gr, was_gathered = m._rowgrads[0]
    assert was_gathered == gathered and len(rows) == len(np.unique(xs[0]))
    dense = np.zeros_like(m._w[0])
    dense[rows] = gr[:len(rows)] if gathered else gr[rows]
    _, grads = mod.Model(seed=0).compute_gradients(*random_data(mod.Model, 4, np.random.default_rng(5), np.float32))
    np.testing.assert_allclose(dense, grads["embedding"][0], rtol=1e-6, atol=1e-9)
    assert not m._grads_nonfinite()
    (gr[1] if gathered else gr[rows[1]])[3] = np.nan
    assert m._grads_nonfinite()
