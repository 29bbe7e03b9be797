"""Keras conformance (marker ``conformance``) of what the examples' batch of 8
does not reach: the LSTM's blocks schedule over threads and the data-parallel
passes (gen/parts.py), run at bigger batches against Keras."""

import textwrap

import numpy as np
import pytest

from conftest import EXAMPLES
import keras_oracle as ko

from conformance import (ATOL, ATOL64, RTOL, RTOL64, SEED, STEPS, _batch, as_list, assert_close,
                         assert_layer_grads_close, assert_metrics_close, assert_weights_close,
                         load_pair)


@pytest.fixture(scope="session")
def variant_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("variants")


# The LSTM's blocks schedule (templates/kernels/lstm.py, _lstm_blocks) runs
# float32 layers of 16k units from 2 rows, most passes in one block; two
# blocks (threads) need a bigger pass than BATCH's examples. These two run
# them against Keras: a wide layer in two blocks of 10 rows (8 and 2 at a
# time through the packed product), another in one block of 20, and
# twitter.py's 32 units in two blocks of 45.
WIDE_LSTM = textwrap.dedent("""\
    from keras.layers import Input, LSTM, Dense
    from keras.models import Model

    seq = Input(shape=(24, 20), name='seq')
    h = LSTM(128, return_sequences=True)(seq)
    h = LSTM(80)(h)
    out = Dense(1, activation='sigmoid')(h)
    model = Model(inputs=seq, outputs=out)
    model.compile(optimizer='rmsprop', loss='binary_crossentropy')
    """)
# The sweep's model (benchmarks/sweep.py): 32 units in two blocks of 48
# rows, each summing its share of the weight gradients over the steps
# (_LSTM_BLOCK_GRADS_MAX_OUTPUT), as twitter.py's recurrent weights are.
NARROW_LSTM = textwrap.dedent("""\
    from keras.layers import Input, LSTM, Dense
    from keras.models import Model

    seq = Input(shape=(30, 12))
    out = Dense(1, activation='sigmoid')(LSTM(32)(seq))
    model = Model(inputs=seq, outputs=out)
    model.compile(optimizer='rmsprop', loss='binary_crossentropy')
    """)
# batch, steps, [(units, per_step, blocks: one a thread, up to this many)]
BLOCKS_CASES = {"wide": (20, 24, [(128, True, 2), (80, True, 1)]), "twitter": (90, 100, [(32, False, 5)]),
                "narrow": (96, 30, [(32, False, 6)])}
BLOCKS_MODELS = {"wide": WIDE_LSTM, "narrow": NARROW_LSTM}


@pytest.mark.conformance
@pytest.mark.parametrize("case", sorted(BLOCKS_CASES))
def test_conformance_lstm_blocks_schedule(case, gen_modules, variant_dir):
    batch, steps, layers = BLOCKS_CASES[case]
    if case in BLOCKS_MODELS:
        path = variant_dir / f"{case}_lstm.py"
        path.write_text(BLOCKS_MODELS[case], encoding="utf-8")
    else:
        path = EXAMPLES / "twitter.py"
    mod, kmodel = load_pair(gen_modules, path, "model")
    threads = mod.numba.get_num_threads()
    for units, per_step, blocks in layers:
        assert mod._lstm_blocks(batch, steps, units, np.float32, per_step) == min(blocks, threads), units
    m = mod.Model(seed=0)
    kmodel.set_weights(m.get_weights())
    x, y = ko.random_batch(kmodel, batch, np.random.default_rng(SEED))
    want = ko.keras_step_results(kmodel, ko.recompile_kwargs(kmodel), x, y, steps=STEPS)
    for k, (g, w) in enumerate(zip(as_list(m.predict(x, batch_size=batch)), want["predictions"])):
        assert_close(f"prediction {k}", g, w, scaled=False)
    metrics, grads = m.compute_gradients(x, y)
    assert_metrics_close("compute_gradients metrics", metrics, want["metrics"][0])
    assert_layer_grads_close("gradient", grads, want["layer_grads"])
    for step in range(STEPS):
        assert_metrics_close(f"train_on_batch step {step}", m.train_on_batch(x, y), want["metrics"][step])
    assert_weights_close(f"weights after {STEPS} steps", m.get_weights(), want["weights"])


# Data-parallel passes (gen/parts.py): a model of Dense, Activation and
# Concatenate layers runs a pass over 64 rows or more (and 2^21 multiply-adds,
# lowered to 0 here) in parts of its rows, a thread each, with one-thread
# products (panels.py). BATCH keeps the examples out of them, so these run
# them against Keras: mlp.py at batch 96, in float32 and float64, and a model
# with every step the parts take: a shared Dense, a concatenation, a Dense
# without bias and with 48 columns, an Activation, two outputs with loss
# weights, sparse targets, at batch 70 (parts of 35 rows: 8, 2 and 1 at a
# time through the packed product).
PARTS_MODEL = textwrap.dedent("""\
    from keras.layers import Input, Dense, Activation, concatenate
    from keras.models import Model

    a = Input(shape=(40,), name='a')
    b = Input(shape=(40,), name='b')
    shared = Dense(32, activation='tanh')
    h = concatenate([shared(a), shared(b)])
    h = Dense(48, use_bias=False)(h)
    h = Activation('relu')(h)
    cls = Dense(5, activation='softmax', name='cls')(h)
    reg = Dense(16, name='reg')(h)
    model = Model(inputs=[a, b], outputs=[cls, reg])
    model.compile(optimizer='adam', loss=['sparse_categorical_crossentropy', 'mse'], loss_weights=[1.0, 0.5])
    """)
PARTS_CASES = {"mlp": (96, None), "mlp-float64": (96, "float64"), "mixed": (70, None)}


@pytest.mark.conformance
@pytest.mark.parametrize("case", sorted(PARTS_CASES))
def test_conformance_parts(case, gen_modules, variant_dir, monkeypatch):
    batch, floatx = PARTS_CASES[case]
    if case == "mixed":
        path = variant_dir / "parts_model.py"
        path.write_text(PARTS_MODEL, encoding="utf-8")
    else:
        path = EXAMPLES / "mlp.py"
    mod, kmodel = load_pair(gen_modules, path, "model", floatx=floatx)
    monkeypatch.setattr(mod, "_RT_PARTS_MIN_MACS", 0)
    threads = mod.numba.get_num_threads()
    m = mod.Model(seed=0, dtype=np.float64 if floatx else np.float32)
    assert m._parts_for(batch) == (threads if threads > 1 else 0)
    assert m._parts_for(63) == 0
    kmodel.set_weights(m.get_weights())
    x, y = _batch(kmodel, floatx, n=batch)
    want = ko.keras_step_results(kmodel, ko.recompile_kwargs(kmodel), x, y, steps=STEPS)
    rtol, atol = (RTOL64, ATOL64) if floatx else (RTOL, ATOL)
    for k, (g, w) in enumerate(zip(as_list(m.predict(x, batch_size=batch)), want["predictions"])):
        assert_close(f"prediction {k}", g, w, rtol, atol)
    for step in range(STEPS):
        assert_metrics_close(f"train_on_batch step {step}", m.train_on_batch(x, y), want["metrics"][step])
    assert (m._pgrads is not None) == (threads > 1)  # the steps ran in parts
    assert_weights_close(f"weights after {STEPS} steps", m.get_weights(), want["weights"], rtol, atol)
