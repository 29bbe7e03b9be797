"""Per-kind layer semantics, like Keras's `build`/`compute_output_shape`:
configuration with defaults and checks, output shape and dtype, weights."""
from __future__ import annotations

from dataclasses import dataclass

from . import catalog
from .diagnostics import Diagnostics, Span, did_you_mean
from .ir import Arg, LayerDecl

Shape = tuple  # (None, d1, d2, ...): batch first


@dataclass(frozen=True)
class WeightSpec:
    name: str        # Keras variable name: kernel, bias, embeddings, recurrent_kernel
    shape: tuple
    init: tuple      # ("glorot_uniform", fan_in, fan_out) | ("zeros",) | ("orthogonal",) | ("lstm_bias", u) | ("uniform", lo, hi)


def fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class Kind:
    """Base: a layer kind gen supports. Subclasses override what differs."""

    cls = ""

    def __init__(self, decl: LayerDecl, diags: Diagnostics):
        self.decl = decl
        self.diags = diags
        self.sig = next(s for s in catalog.CALLABLES.values() if s.layer_class == self.cls)
        self.cfg = {p.name: (decl.args[p.name].value if p.name in decl.args else p.default)
                    for p in self.sig.params if not p.required or p.name in decl.args}
        self.ok = True
        self.configure()

    # -- argument checks -------------------------------------------------
    def _span(self, key: str) -> Span:
        arg: Arg | None = self.decl.args.get(key)
        return arg.span if arg else self.decl.span

    def _fail(self, code: str, msg: str, key: str | None = None, hint: str = "") -> None:
        self.ok = False
        self.diags.error(code, msg, self._span(key) if key else self.decl.span, hint)

    def positive_int(self, key: str) -> None:
        v = self.cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            self._fail("bad-argument", f"Argument `{key}` of {self.cls} must be a positive integer. Received: {key}={v!r}",
                       key, f"for example {self.cls}({key}=32)")
            self.cfg[key] = 1

    def boolean(self, key: str) -> None:
        if not isinstance(self.cfg.get(key), bool):
            self._fail("bad-argument", f"Argument `{key}` of {self.cls} must be True or False. Received: {key}={self.cfg.get(key)!r}", key)
            self.cfg[key] = bool(self.cfg.get(key))

    def activation(self, key: str, allowed=tuple(catalog.ACTIVATIONS)) -> None:
        v = self.cfg.get(key)
        v = "linear" if v is None else v
        if v not in allowed:
            self._fail("unknown-activation", f"Unknown activation for `{key}` of {self.cls}. Received: {key}={v!r}.{did_you_mean(v, allowed)}",
                       key, "supported activations: " + ", ".join(allowed))
            v = "linear"
        self.cfg[key] = v

    def configure(self) -> None:
        pass

    # -- semantics ---------------------------------------------------------
    def output(self, in_shapes: list[Shape], in_dtypes: list[str], span: Span) -> tuple[Shape, str] | None:
        raise NotImplementedError

    def weights(self, in_shapes: list[Shape]) -> list[WeightSpec]:
        return []

    def _want_one_input(self, in_shapes, span) -> bool:
        if len(in_shapes) != 1:
            self.diags.error("bad-input", f"Layer {self.cls} expects one input tensor. Received: {len(in_shapes)} tensors", span,
                             "call it on a single tensor: layer(x)")
            return False
        return True

    def _want_float(self, dtype: str, shape: Shape, span: Span) -> bool:
        if dtype != "float":
            self.diags.error("bad-dtype", f"Layer {self.cls} expects a float input. Received: dtype=int32, shape={fmt_shape(shape)}", span,
                             "token ids must go through an Embedding layer first")
            return False
        return True


class InputKind(Kind):
    cls = "InputLayer"

    def configure(self) -> None:
        shape, dtype = self.cfg.get("shape"), self.cfg.get("dtype") or "float32"
        for key in ("batch_size", "sparse", "batch_shape"):
            if self.cfg.get(key) not in (None, False):
                self._fail("unsupported-argument", f"Input(`{key}`) is not supported by gen. Received: {key}={self.cfg[key]!r}", key,
                           "give the per-sample shape with shape=(...)")
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, tuple) or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            self._fail("bad-shape", f"Input needs `shape` as a tuple of positive integers (batch axis excluded). Received: shape={shape!r}",
                       "shape", "for example Input(shape=(784,)); variable lengths (None) are not supported")
            shape = (1,)
        if dtype not in catalog.INPUT_DTYPES:
            self._fail("bad-dtype", f"Unsupported Input dtype. Received: dtype={dtype!r}.{did_you_mean(dtype, catalog.INPUT_DTYPES)}",
                       "dtype", "supported: " + ", ".join(catalog.INPUT_DTYPES))
            dtype = "float32"
        self.cfg["shape"], self.cfg["dtype"] = shape, dtype

    def output(self, in_shapes, in_dtypes, span):
        return (None, *self.cfg["shape"]), catalog.INPUT_DTYPES[self.cfg["dtype"]]


class DenseKind(Kind):
    cls = "Dense"

    def configure(self) -> None:
        self.positive_int("units")
        self.activation("activation")
        self.boolean("use_bias")

    def output(self, in_shapes, in_dtypes, span):
        if not self._want_one_input(in_shapes, span) or not self._want_float(in_dtypes[0], in_shapes[0], span):
            return None
        if len(in_shapes[0]) < 2:
            self.diags.error("bad-shape", f"Dense expects an input with at least 2 axes. Received: shape={fmt_shape(in_shapes[0])}", span)
            return None
        return (*in_shapes[0][:-1], self.cfg["units"]), "float"

    def weights(self, in_shapes):
        fan_in, units = in_shapes[0][-1], self.cfg["units"]
        ws = [WeightSpec("kernel", (fan_in, units), ("glorot_uniform", fan_in, units))]
        if self.cfg["use_bias"]:
            ws.append(WeightSpec("bias", (units,), ("zeros",)))
        return ws


class EmbeddingKind(Kind):
    cls = "Embedding"

    def configure(self) -> None:
        self.positive_int("input_dim")
        self.positive_int("output_dim")

    def output(self, in_shapes, in_dtypes, span):
        if not self._want_one_input(in_shapes, span):
            return None
        shape = in_shapes[0]
        if in_dtypes[0] != "int":
            self.diags.error("bad-dtype", f"Embedding expects integer token ids. Received: dtype=float32, shape={fmt_shape(shape)}", span,
                             "declare the input as Input(shape=..., dtype='int32')")
            return None
        length = self.cfg.get("input_length")
        if length is not None:
            if length != shape[-1]:
                self._fail("bad-shape", f"Embedding `input_length` does not match its input. Received: input_length={length!r}, "
                           f"input shape={fmt_shape(shape)}", "input_length", f"use input_length={shape[-1]} or drop it")
            else:
                self.diags.warning("keras2-keyword", "`input_length` is deprecated in Keras 3 and ignored; it matches the input "
                                   f"shape {fmt_shape(shape)}", self._span("input_length"), "drop it: Keras 3 takes the length from the input")
        return (*shape, self.cfg["output_dim"]), "float"

    def weights(self, in_shapes):
        return [WeightSpec("embeddings", (self.cfg["input_dim"], self.cfg["output_dim"]), ("uniform", -0.05, 0.05))]


class LSTMKind(Kind):
    cls = "LSTM"
    _acts = ("linear", "relu", "sigmoid", "tanh")

    def configure(self) -> None:
        self.positive_int("units")
        self.activation("activation", self._acts)
        self.activation("recurrent_activation", self._acts)
        for key in ("use_bias", "unit_forget_bias", "return_sequences"):
            self.boolean(key)

    def output(self, in_shapes, in_dtypes, span):
        if not self._want_one_input(in_shapes, span) or not self._want_float(in_dtypes[0], in_shapes[0], span):
            return None
        shape = in_shapes[0]
        if len(shape) != 3:
            self.diags.error("bad-shape", f"LSTM expects a 3-D input (batch, timesteps, features). Received: shape={fmt_shape(shape)}", span,
                             "feed it a sequence, e.g. the output of an Embedding layer")
            return None
        u = self.cfg["units"]
        return ((None, shape[1], u) if self.cfg["return_sequences"] else (None, u)), "float"

    def weights(self, in_shapes):
        i, u = in_shapes[0][-1], self.cfg["units"]
        ws = [WeightSpec("kernel", (i, 4 * u), ("glorot_uniform", i, 4 * u)),
              WeightSpec("recurrent_kernel", (u, 4 * u), ("orthogonal",))]
        if self.cfg["use_bias"]:
            ws.append(WeightSpec("bias", (4 * u,), ("lstm_bias", u) if self.cfg["unit_forget_bias"] else ("zeros",)))
        return ws


class ConcatenateKind(Kind):
    cls = "Concatenate"

    def configure(self) -> None:
        if isinstance(self.cfg.get("axis"), bool) or not isinstance(self.cfg.get("axis"), int):
            self._fail("bad-argument", f"Concatenate `axis` must be an integer. Received: axis={self.cfg.get('axis')!r}", "axis")
            self.cfg["axis"] = -1

    def output(self, in_shapes, in_dtypes, span):
        if len(in_shapes) < 2:
            self.diags.error("bad-input", f"Concatenate expects a list of at least 2 tensors. Received: {len(in_shapes)}", span,
                             "concatenate([a, b])")
            return None
        rank, axis = len(in_shapes[0]), self.cfg["axis"]
        shapes = ", ".join(fmt_shape(s) for s in in_shapes)
        if any(len(s) != rank for s in in_shapes) or not (-rank < axis < rank) or axis % rank == 0:
            self.diags.error("bad-shape", f"Concatenate needs inputs of equal rank and a non-batch axis. Received: axis={axis}, shapes={shapes}", span)
            return None
        axis %= rank
        if any(s[:axis] + s[axis + 1:] != in_shapes[0][:axis] + in_shapes[0][axis + 1:] for s in in_shapes):
            self.diags.error("bad-shape", "A `Concatenate` layer requires inputs with matching shapes except for the concatenation axis. "
                             f"Received: axis={axis}, shapes={shapes}", span)
            return None
        if any(d != "float" for d in in_dtypes):
            self.diags.error("bad-dtype", f"Concatenate expects float inputs. Received: shapes={shapes} with an int32 input", span,
                             "pass token ids through an Embedding layer first")
            return None
        self.cfg["axis"] = axis
        out = list(in_shapes[0])
        out[axis] = sum(s[axis] for s in in_shapes)
        return tuple(out), "float"


class ActivationKind(Kind):
    cls = "Activation"

    def configure(self) -> None:
        self.activation("activation")

    def output(self, in_shapes, in_dtypes, span):
        if not self._want_one_input(in_shapes, span) or not self._want_float(in_dtypes[0], in_shapes[0], span):
            return None
        return in_shapes[0], "float"


KINDS: dict[str, type[Kind]] = {k.cls: k for k in (InputKind, DenseKind, EmbeddingKind, LSTMKind, ConcatenateKind, ActivationKind)}
