"""Every problem of a bad model file is one pinned diagnostic: position, code, message."""
import pytest

from gen.compiler import compile_source

H = "import keras\nfrom keras.layers import Input, Dense, Embedding, LSTM, concatenate, Activation\nfrom keras.models import Model\n"
IN4 = "a = Input(shape=(4,))\n"
TWO = IN4 + "m = Model(a, [Dense(1, name='p')(a), Dense(1, name='q')(a)])\n"

CASES = [
    ("unknown_loss", IN4 + "m = Model(a, Dense(2)(a))\nm.compile('adam', loss='binary_crossentropi')\n",
     "6:24 unknown-loss: Unknown loss. Received: loss='binary_crossentropi'. Did you mean \"binary_crossentropy\"?"),
    ("unknown_metric", IN4 + "m = Model(a, Dense(2)(a))\nm.compile('adam', 'mse', metrics=['acuracy'])\n",
     "6:34 unknown-metric: Unknown metric. Received: 'acuracy'. Did you mean \"accuracy\"?"),
    ("unknown_activation", IN4 + "m = Model(a, Dense(2, activation='rellu')(a))\n",
     "5:34 unknown-activation: Unknown activation for `activation` of Dense. Received: activation='rellu'. Did you mean \"relu\"?"),
    ("unknown_layer", IN4 + "m = Model(a, keras.layers.Conv2D(2, 3)(a))\n",
     "5:14 unknown-layer: gen does not support keras.layers.Conv2D."),
    ("unknown_optimizer", IN4 + "m = Model(a, Dense(1)(a))\nm.compile('adamw', 'mse')\n",
     "6:11 unknown-optimizer: Could not interpret optimizer identifier: 'adamw'. Did you mean \"adam\"?"),
    ("negative_units", IN4 + "m = Model(a, Dense(-2)(a))\n",
     "5:20 bad-argument: Argument `units` of Dense must be a positive integer. Received: units=-2"),
    ("zero_vocab", "a = Input(shape=(4,), dtype='int32')\nm = Model(a, Embedding(0, 8)(a))\n",
     "5:24 bad-argument: Argument `input_dim` of Embedding must be a positive integer. Received: input_dim=0"),
    ("dense_on_int", "a = Input(shape=(4,), dtype='int32')\nm = Model(a, Dense(2)(a))\n",
     "5:14 bad-dtype: Layer Dense expects a float input. Received: dtype=int32, shape=(None, 4)"),
    ("lstm_on_int", "a = Input(shape=(4, 3), dtype='int32')\nm = Model(a, LSTM(2)(a))\n",
     "5:14 bad-dtype: Layer LSTM expects a float input. Received: dtype=int32, shape=(None, 4, 3)"),
    ("embedding_on_float", IN4 + "m = Model(a, Embedding(10, 2)(a))\n",
     "5:14 bad-dtype: Embedding expects integer token ids. Received: dtype=float32, shape=(None, 4)"),
    ("lstm_rank", IN4 + "m = Model(a, LSTM(3)(a))\n",
     "5:14 bad-shape: LSTM expects a 3-D input (batch, timesteps, features). Received: shape=(None, 4)"),
    ("concat_shapes", "a = Input(shape=(4, 2))\nb = Input(shape=(3, 2))\nm = Model([a, b], concatenate([a, b]))\n",
     "6:19 bad-shape: A `Concatenate` layer requires inputs with matching shapes except for the concatenation axis. "
     "Received: axis=2, shapes=(None, 4, 2), (None, 3, 2)"),
    ("disconnected", IN4 + "b = Input(shape=(4,))\nm = Model(a, concatenate([a, b]))\n",
     "5:5 disconnected: Graph disconnected: the Input 'input_layer_1' is used but is not among the model's inputs."),
    ("no_inputs", IN4 + "m = Model([], Dense(1)(a))\n",
     "5:11 not-a-tensor: All `inputs` values must be KerasTensors. Received: inputs=[]."),
    ("loss_dict_unknown", TWO + "m.compile('sgd', loss={'p': 'mse', 'r': 'mse'})\n",
     "6:41 unknown-output: `loss` names an output the model does not have. Received: 'r'."),
    ("loss_weights_len", TWO + "m.compile('sgd', loss='mse', loss_weights=[1.0])\n",
     "6:43 bad-structure: `loss_weights` must have one entry per output (2: p, q). Received: 1 entries"),
    ("loss_list_len", TWO + "m.compile('sgd', loss=['mse'])\n",
     "6:23 bad-structure: `loss` must have one entry per output (2: p, q). Received: 1 entries"),
    ("metrics_dict_unknown", TWO + "m.compile('sgd', 'mse', metrics={'z': 'accuracy'})\n",
     "6:33 unknown-output: `metrics` names an output the model does not have. Received: 'z'."),
    ("metrics_list_multi", TWO + "m.compile('sgd', loss='mse', metrics=['accuracy'])\n",
     "6:38 bad-structure: For a model with several outputs, `metrics` must be a dict by output name or a list of lists. "
     "Received: metrics=('accuracy',)"),
    ("fit_structure", IN4 + "m = Model(a, Dense(1)(a))\nm.compile('sgd', 'mse')\nm.fit([x1, x2], y)\n",
     "7:7 bad-structure: fit() data has 2 arrays but the model has 1 inputs (input_layer)."),
    ("fit_dict_unknown", IN4 + "m = Model(a, Dense(1)(a))\nm.compile('sgd', 'mse')\nm.fit({'b': x}, y)\n",
     "7:7 unknown-name: fit() data names an unknown input. Received: 'b'."),
    ("undefined", "m = Model(x, Dense(1)(x))\n", "4:11 undefined-name: name 'x' is not defined."),
    ("same_file", IN4 + "m = Model(a, Dense(1)(a), name='net')\nn = Model(a, Dense(2)(a), name='net')\n",
     "6:5 duplicate-output: Two models would write the same file 'net.py'."),
    ("bad_model_name", IN4 + "m = Model(a, Dense(1)(a), name='../evil')\n",
     "5:32 bad-name: Argument `name` must be a non-empty string without '/'. Received: name='../evil'"),
    ("not_identifier", IN4 + "m = Model(a, Dense(1)(a), name='my-net')\n",
     "5:32 bad-name: The model name must be a valid Python identifier to name its module. Received: 'my-net'"),
    ("no_model", IN4, "1:1 no-model: No Model(...) found in the file; there is nothing to generate."),
]


@pytest.mark.parametrize("name,body,expected", CASES, ids=[c[0] for c in CASES])
def test_first_error_is_pinned(name, body, expected):
    files, diags = compile_source("m.py", H + body if name != "empty" else body)
    errors = [d for d in diags.sorted() if d.severity == "error"]
    assert errors and not files
    first = errors[0]
    assert f"{first.span.line}:{first.span.col} {first.code}: {first.message}" == expected
    rendered = diags.render()
    assert f"m.py:{first.span.line}:{first.span.col}: error[{first.code}]: {first.message}\n" in rendered
    assert "^" in rendered


def test_empty_file():
    files, diags = compile_source("m.py", "")
    assert not files and [d.code for d in diags.items] == ["no-model"]


def test_every_problem_in_one_run():
    body = IN4 + "h = Dense(-1)(a)\nh = Dense(3, activation='nope')(h)\nm = Model(a, h)\nm.compile('sgd', 'msee')\n"
    _, diags = compile_source("m.py", H + body)
    codes = [d.code for d in diags.sorted() if d.severity == "error"]
    assert codes == ["bad-argument", "unknown-activation", "unknown-loss"], diags.render()
