"""Keras oracle for the conformance tests.

Runs a model file with real Keras 3 (torch backend) the way a fresh process
would, and computes, for a batch, what the generated module must reproduce:
predictions, per-output and total losses, gradients of the total loss, the
metrics dicts of a few ``train_on_batch`` steps and the weights after them.

The model file is executed (this is test code: gen itself never executes a
model file), with ``Model.fit`` disabled, ``Model.compile`` captured instead
of run, and every undefined name (``data``, ``labels``, ``headline_data``...)
resolving to ``None``.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import inspect
import os
import weakref

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import keras  # noqa: E402
import torch  # noqa: E402
from keras.src.backend.common import dtypes as _dtypes  # noqa: E402
from keras.src.models.functional import Functional  # noqa: E402

assert keras.backend.backend() == "torch", "the oracle needs KERAS_BACKEND=torch"

_COMPILE_PARAMS = [
    p for p in inspect.signature(keras.Model.compile).parameters if p != "self"
]


@contextlib.contextmanager
def keras_floatx(floatx):
    """Set Keras's floatx for the duration; for 'float64' also make Keras
    really compute in float64: on the torch backend its type promotion maps
    float64 to float32 (JAX's x64-disabled rule, ``BIT64_TO_BIT32_DTYPE`` in
    ``backend/common/dtypes.py``), so a float64 model's matmuls otherwise run
    in float32 (measured: 1e-7 error on mlp predictions)."""
    if floatx is None:
        yield
        return
    saved_floatx = keras.config.floatx()
    saved_map = dict(_dtypes.BIT64_TO_BIT32_DTYPE)
    keras.config.set_floatx(floatx)
    if floatx == "float64":
        _dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
    try:
        yield
    finally:
        keras.config.set_floatx(saved_floatx)
        _dtypes.BIT64_TO_BIT32_DTYPE.clear()
        _dtypes.BIT64_TO_BIT32_DTYPE.update(saved_map)


def _model_floatx(kmodel):
    return "float64" if any(v.dtype == "float64" for v in kmodel.weights) else None


# model -> keyword arguments of the last compile() the model file made on it.
_COMPILE_CALLS: "weakref.WeakKeyDictionary[keras.Model, dict]" = weakref.WeakKeyDictionary()


class _ModelNamespace(dict):
    """Module namespace in which undefined names are ``None``.

    Used as both globals and locals of the exec: module-level LOAD_NAME and
    (non-exact-dict globals) LOAD_GLOBAL go through ``__getitem__``, so
    ``__missing__`` is consulted. Builtins and dunder names are not shadowed.
    """

    def __missing__(self, key):
        if key.startswith("__") or hasattr(builtins, key):
            raise KeyError(key)
        return None


def build_keras_models(path, floatx=None) -> dict[str, keras.Model]:
    """Run the model file at ``path`` with Keras; return its module-level models.

    Keys follow SPEC §2: the model's explicit ``name=``, else the variable it
    is (first) bound to. Each model's compile arguments, as written in the
    file, are available from :func:`captured_compile` / :func:`recompile_kwargs`.
    The models are not compiled. ``floatx='float64'`` builds them in float64
    (float inputs and every layer); the default is Keras's (float32).
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    code = compile(source, path, "exec")

    keras.backend.clear_session()  # resets the auto-naming counters

    explicit_names: dict[int, str] = {}
    orig_init = Functional.__init__
    orig_compile = keras.Model.compile
    orig_fit = keras.Model.fit

    @functools.wraps(orig_init)
    def init(self, *args, **kwargs):
        name = kwargs.get("name", args[2] if len(args) > 2 else None)
        if name is not None:
            explicit_names[id(self)] = name
        return orig_init(self, *args, **kwargs)

    def capture_compile(self, *args, **kwargs):
        if len(args) > len(_COMPILE_PARAMS):
            raise TypeError("too many positional arguments to compile()")
        call = dict(zip(_COMPILE_PARAMS, args))
        for k, v in kwargs.items():
            if k in call:
                raise TypeError(f"compile() got multiple values for {k!r}")
            call[k] = v
        _COMPILE_CALLS[self] = call

    def no_fit(self, *args, **kwargs):
        return None

    ns = _ModelNamespace(__name__="__main__", __file__=path, __builtins__=builtins)
    Functional.__init__ = init
    keras.Model.compile = capture_compile
    keras.Model.fit = no_fit
    try:
        with keras_floatx(floatx):
            exec(code, ns)
    finally:
        Functional.__init__ = orig_init
        keras.Model.compile = orig_compile
        keras.Model.fit = orig_fit

    models: dict[str, keras.Model] = {}
    seen: set[int] = set()
    for var, value in list(ns.items()):
        if isinstance(value, keras.Model) and id(value) not in seen:
            seen.add(id(value))
            key = explicit_names.get(id(value), var)
            if key in models:
                raise ValueError(f"{path}: two models would be named {key!r}")
            models[key] = value
    return models


def captured_compile(kmodel) -> dict | None:
    """The compile() keyword arguments of the model file, verbatim (or None)."""
    call = _COMPILE_CALLS.get(kmodel)
    return None if call is None else dict(call)


def input_layer_names(kmodel) -> list[str]:
    return [t._keras_history.operation.name for t in kmodel.inputs]


def _fresh_optimizer(opt):
    if isinstance(opt, str):
        return opt
    if isinstance(opt, keras.optimizers.Optimizer):
        return opt.__class__.from_config(opt.get_config())
    raise TypeError(f"unsupported optimizer {opt!r}")


def recompile_kwargs(kmodel) -> dict | None:
    """The file's compile arguments, normalised to what Keras 3 accepts with
    the meaning gen gives them (SPEC §1), or None if the file never compiles
    this model.

    - ``loss_weight`` -> ``loss_weights``;
    - one loss for a model with several outputs -> that loss per output;
    - a flat metrics list that Keras 3 rejects for a multi-output model
      (length != number of outputs) -> that list for every output (Keras 2);
    - the optimizer stays as written: a string, or the file's own optimizer
      object (keras_step_results compiles with a fresh copy of it; its
      learning_rate is a variable of the floatx the file ran under).
    """
    call = captured_compile(kmodel)
    if call is None:
        return None
    kw = dict(call)
    if "loss_weight" in kw:
        if "loss_weights" in kw:
            raise TypeError("both loss_weight and loss_weights given")
        kw["loss_weights"] = kw.pop("loss_weight")
    n_out = len(kmodel.outputs)
    loss = kw.get("loss")
    if n_out > 1 and loss is not None and not isinstance(loss, (list, tuple, dict)):
        kw["loss"] = [loss] * n_out
    metrics = kw.get("metrics")
    if n_out > 1 and metrics is not None:
        if isinstance(metrics, str):
            metrics = [metrics]
        if isinstance(metrics, (list, tuple)) and len(metrics) != n_out:
            kw["metrics"] = [list(metrics) for _ in range(n_out)]
    return kw


def _per_output(value, output_names, default=None):
    """A compile argument (single, list in output order, or dict by output
    name) as a list in output order."""
    if isinstance(value, dict):
        unknown = set(value) - set(output_names)
        if unknown:
            raise ValueError(f"unknown output names {sorted(unknown)}")
        return [value.get(n, default) for n in output_names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(output_names):
            raise ValueError(f"{value!r} does not match outputs {output_names}")
        return list(value)
    return [value if value is not None else default] * len(output_names)


def _loss_fn(loss):
    return keras.losses.get(loss) if isinstance(loss, str) else loss


def loss_kind(loss) -> str:
    """Canonical name of a loss given as a string, function or Loss object."""
    fn = _loss_fn(loss)
    fn = getattr(fn, "fn", fn)  # LossFunctionWrapper
    return fn.__name__


def _embedding_bound(kmodel, input_layer) -> int | None:
    """input_dim of the Embedding(s) consuming ``input_layer`` (followed
    through nested models and TimeDistributed), the smallest if several."""
    bounds = []

    def visit(layer):
        for node in layer._outbound_nodes:
            op = node.operation
            inner = op.layer if isinstance(op, keras.layers.TimeDistributed) else op
            if isinstance(inner, keras.layers.Embedding):
                bounds.append(inner.input_dim)
            elif isinstance(inner, Functional):
                # which input of the nested model is fed by this layer's output
                outs = {id(t) for t in layer.output} if isinstance(layer.output, list) \
                    else {id(layer.output)}
                for t, sub_in in zip(node.input_tensors, inner.inputs):
                    if id(t) in outs:
                        visit(sub_in._keras_history.operation)
            else:
                visit(op)

    visit(input_layer)
    return min(bounds) if bounds else None


def random_batch(kmodel, n, rng, losses=None):
    """(x, y) for a batch of ``n``: arrays when the model has one input /
    output, lists in Keras order otherwise. Int inputs get ids in
    [0, input_dim) of the Embedding they feed; targets suit each output's
    loss (``losses`` defaults to the file's compile call; y is None when the
    model is never compiled)."""
    xs = []
    for t in kmodel.inputs:
        shape = (n,) + tuple(t.shape[1:])
        dtype = np.dtype(t.dtype)
        if dtype.kind in "iu":
            bound = _embedding_bound(kmodel, t._keras_history.operation) or 2
            xs.append(rng.integers(0, bound, size=shape).astype(dtype))
        else:
            xs.append(rng.standard_normal(shape).astype(dtype))
    if losses is None:
        kw = recompile_kwargs(kmodel)
        losses = None if kw is None else kw.get("loss")
    ys = None
    if losses is not None:
        ys = []
        for t, loss in zip(kmodel.outputs, _per_output(losses, kmodel.output_names)):
            shape = (n,) + tuple(t.shape[1:])
            kind = loss_kind(loss)
            if kind == "categorical_crossentropy":
                ids = rng.integers(0, shape[-1], size=shape[:-1])
                ys.append(np.eye(shape[-1], dtype=np.float32)[ids])
            elif kind == "sparse_categorical_crossentropy":
                ys.append(rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int32))
            elif kind == "binary_crossentropy":
                ys.append(rng.integers(0, 2, size=shape).astype(np.float32))
            elif kind == "mean_squared_error":
                ys.append(rng.standard_normal(shape).astype(np.float32))
            else:
                raise ValueError(f"no target generator for loss {kind!r}")
        if len(ys) == 1:
            ys = ys[0]
    if len(xs) == 1:
        xs = xs[0]
    return xs, ys


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _to_tensors(v):
    return [keras.ops.convert_to_tensor(a) for a in v] if isinstance(v, list) \
        else keras.ops.convert_to_tensor(v)


def clone_with_weights(kmodel) -> keras.Model:
    """An independent copy of ``kmodel`` (same layer names, same weight
    values, own variables), so that compiling and training it leaves the
    original (and any model sharing its layers) untouched."""
    clone = keras.models.clone_model(kmodel)

    # clone_model renames unnamed InputLayers after their tensors
    # (`keras_tensor_N`); every other name must survive.
    def names(m):
        return [l.name for l in m.layers if not isinstance(l, keras.layers.InputLayer)]

    if names(clone) != names(kmodel) or clone.output_names != kmodel.output_names:
        raise AssertionError("clone_model changed the layer/output names")
    clone.set_weights(kmodel.get_weights())
    return clone


def _check_close(what, got, want, rtol=1e-5, atol=1e-6):
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        raise AssertionError(f"oracle self-check failed: {what}: {got} != {want}")


def keras_step_results(kmodel, compile_kwargs, x, y, steps=3) -> dict:
    """What Keras computes for batch (x, y) from kmodel's current weights.

    Works on a fresh clone compiled with ``compile_kwargs`` (fresh optimizer),
    so ``kmodel`` is not mutated. Returns a dict:

    - ``predictions``: list of arrays, output order (inference mode);
    - ``losses``: {output_name: unweighted batch-mean loss};
    - ``loss``: the weighted total (as ``Model.compute_loss`` computes it);
    - ``grads``: d loss / d w for every array of ``model.get_weights()``, same order;
    - ``layer_grads``: {layer_name: [grads in layer.get_weights() order]} for
      every layer of ``model.layers`` that has weights;
    - ``metrics``: the ``train_on_batch(return_dict=True)`` dict of each step;
    - ``weights``: ``model.get_weights()`` after ``steps`` steps.

    Self-checks (AssertionError on failure): the total equals the weighted
    sum of the per-output losses, and the first train_on_batch reports it.
    A float64 model is run in float64 throughout (see :func:`keras_floatx`).
    """
    with keras_floatx(_model_floatx(kmodel)):
        return _keras_step_results(kmodel, compile_kwargs, x, y, steps)


def _keras_step_results(kmodel, compile_kwargs, x, y, steps):
    model = clone_with_weights(kmodel)
    kw = dict(compile_kwargs)
    kw["optimizer"] = _fresh_optimizer(kw.get("optimizer", "rmsprop"))
    model.compile(**kw)  # under keras_floatx: a float64 model gets a float64 learning rate
    names = list(model.output_names)

    predictions = [np.asarray(p) for p in _as_list(model.predict_on_batch(x))]

    xt, yt = _to_tensors(x), _to_tensors(y)
    variables = list(model.weights)
    assert [tuple(v.shape) for v in variables] == [w.shape for w in model.get_weights()]
    y_pred = model(xt, training=True)
    total = model.compute_loss(x=xt, y=yt, y_pred=y_pred, training=True)
    params = [v.value for v in variables]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    grads = [np.zeros(tuple(v.shape), np.float32) if g is None
             else g.detach().to_dense().cpu().numpy() for g, v in zip(grads, variables)]
    total = float(total.detach())

    losses_spec = _per_output(kw.get("loss"), names)
    weights_spec = _per_output(kw.get("loss_weights"), names, default=1.0)
    losses = {}
    with torch.no_grad():
        for name, loss, yk, pk in zip(names, losses_spec, _as_list(yt), _as_list(y_pred)):
            fn = _loss_fn(loss)
            value = fn(yk, pk)  # a Loss object reduces; a loss function does not
            losses[name] = float(value if isinstance(fn, keras.losses.Loss)
                                 else keras.ops.mean(value))
    _check_close("total vs weighted sum of output losses",
                 total, sum(w * losses[nm] for nm, w in zip(names, weights_spec)))

    by_id = {id(v): g for v, g in zip(variables, grads)}
    layer_grads = {l.name: [by_id[id(v)] for v in l.weights]
                   for l in model.layers if l.weights}

    metrics = [model.train_on_batch(x, y, return_dict=True) for _ in range(steps)]
    if steps:
        _check_close("train_on_batch loss vs compute_loss", metrics[0]["loss"], total)
        if len(names) > 1:
            for nm in names:
                _check_close(f"train_on_batch {nm}_loss", metrics[0][f"{nm}_loss"], losses[nm])

    return {
        "predictions": predictions,
        "losses": losses,
        "loss": total,
        "grads": grads,
        "layer_grads": layer_grads,
        "metrics": metrics,
        "weights": model.get_weights(),
    }
