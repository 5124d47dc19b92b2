"""Port every parameterised layer of a whole torch model into a Keras model, or back.

``port_weights`` (below) comes here when either side is a container (a torch module
that is not one recurrent layer, a Keras ``Model``/``Sequential``, or any non-recurrent layer).

How a port goes:

1. Each side is walked into its *leaves* in structural order: torch by ``named_children``
   (registration order), Keras by ``Model.layers`` (a functional model's order is its
   topological order) and, for nested or subclassed layers, their tracked sublayers.
   A registered layer (a multi-state layer, ``nn.LSTM``/Keras ``LSTM``, ``Bidirectional``,
   ...) is one leaf, however many sublayers it holds. Leaves without parameters (activations,
   dropout, reshapes, Keras ``InputLayer``) are dropped: they need no mapping.
2. Leaves are paired: first those named in ``name_map`` (source path -> destination path),
   then the rest by position.
3. Every pair is checked in full before anything is written: a registered ``Pair`` for its two
   kinds, the configuration checks of that pair (kernel size, padding, eps, ...), and every
   converted array against the destination's shape. A leaf left without a partner refuses the
   port unless ``allow_unported=True``, which ports the rest and lists the leftovers.
4. Only then are the values written; a refused port leaves the destination untouched.

Layouts: ``Linear`` weight ``(out, in)`` is ``Dense`` kernel ``(in, out)``; ``Conv1d`` weight
``(out, in/groups, k)`` is ``Conv1D`` kernel ``(k, in/groups, out)`` (Keras keeps that kernel
layout for ``data_format`` channels_last and channels_first alike; which layout the model feeds
its convolutions is the model's business). ``BatchNorm1d`` momentum is not compared: torch's
``momentum=0.1`` is Keras's ``momentum=0.9``, and it matters only to training updates.

Custom layers: ``register_pair`` adds a pair in a few lines, e.g. for a layer with one ``scale``::

    register_pair(
        TorchScale, "KerasScale",
        to_keras=lambda t, k: [t.scale.detach().numpy()],         # in the order of k.weights
        to_torch=lambda k, t: {"scale": keras.ops.convert_to_numpy(k.scale)},  # t.state_dict() keys
    )
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import numpy as np

from harness.porting import layers as porting

Problems = list[str]


class PortError(ValueError):
    """A whole-model port that was refused; nothing was written. The message lists every problem."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """How one torch layer kind maps to one Keras layer kind.

    ``to_keras(t, k)`` gives the values of ``keras_slots(k)`` in order (default: ``k.weights``);
    ``to_torch(k, t)`` gives ``{name: value}`` for ``torch_slots(t)`` (default: ``t.state_dict()``
    without ``num_batches_tracked``). Both are shape-checked against the destination before
    anything is written. ``check(t, k)`` names configuration differences that the weights alone
    cannot show (kernel size, padding, eps, ...); any refuses the port.
    """

    torch_cls: type | tuple[type, ...]
    keras_names: tuple[str, ...]
    to_keras: Callable[[Any, Any], list[np.ndarray]]
    to_torch: Callable[[Any, Any], dict[str, np.ndarray]]
    check: Callable[[Any, Any], Problems] = lambda t, k: []
    torch_slots: Callable[[Any], dict[str, Any]] | None = None
    keras_slots: Callable[[Any], list[Any]] | None = None

    def fits(self, torch_layer: Any, keras_layer: Any) -> bool:
        return isinstance(torch_layer, self.torch_cls) and _keras_kind_matches(keras_layer, self.keras_names)


_REGISTRY: list[Pair] = []


def register_pair(
    torch_cls: type | tuple[type, ...],
    keras_cls: type | str | tuple[type | str, ...],
    *,
    to_keras: Callable[[Any, Any], list[np.ndarray]],
    to_torch: Callable[[Any, Any], dict[str, np.ndarray]],
    check: Callable[[Any, Any], Problems] | None = None,
) -> Pair:
    """Teach whole-model porting a pair of layer kinds; the latest registration for a pair wins.

    ``keras_cls``: a Keras layer class or its name (subclasses match too). The torch class and
    the Keras class are each taken as one leaf, whatever sublayers they hold. See the module
    docstring for an example.
    """
    names = keras_cls if isinstance(keras_cls, tuple) else (keras_cls,)
    pair = Pair(
        torch_cls,
        tuple(n if isinstance(n, str) else n.__name__ for n in names),
        to_keras,
        to_torch,
        check or (lambda t, k: []),
    )
    _registry().append(pair)
    return pair


def _keras_kind_matches(layer: Any, names: tuple[str, ...]) -> bool:
    return any(c.__name__ in names for c in type(layer).__mro__)


# ---- reading and writing arrays -----------------------------------------------------------------


def _from_torch(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _from_keras(variable: Any) -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(variable)


def _default_torch_slots(layer: Any) -> dict[str, Any]:
    return {k: v for k, v in layer.state_dict(keep_vars=True).items() if not k.endswith("num_batches_tracked")}


def _default_keras_slots(layer: Any) -> list[Any]:
    return list(layer.weights)


def torch_slots(pair: Pair, layer: Any) -> dict[str, Any]:
    return (pair.torch_slots or _default_torch_slots)(layer)


def keras_slots(pair: Pair, layer: Any) -> list[Any]:
    return (pair.keras_slots or _default_keras_slots)(layer)


def _shapes(arrays: Iterable[tuple[Any, Any]]) -> str:
    """``weight (8, 4), bias (8,)`` for (name, array) pairs."""
    return ", ".join(f"{name} {tuple(np.shape(a))}" for name, a in arrays) or "nothing"


# ---- the built-in pairs -------------------------------------------------------------------------


def _differs(name: str, torch_value: Any, keras_name: str, keras_value: Any) -> Problems:
    return (
        [] if torch_value == keras_value else [f"torch {name}={torch_value!r} but Keras {keras_name}={keras_value!r}"]
    )


def _eps_differs(torch_eps: float, keras_eps: float) -> Problems:
    if math.isclose(torch_eps, keras_eps, rel_tol=1e-6):
        return []
    return [f"torch eps={torch_eps:g} but Keras epsilon={keras_eps:g} (give the Keras layer epsilon={torch_eps:g})"]


def _recurrent_pair() -> Pair:
    """The recurrent layers of ``harness.porting.layers`` (multi-state, LSTM/GRU/RNN, bidirectional)."""
    import torch

    import models_torch
    from multistate_core.cells import to_keras

    def check(t: Any, k: Any) -> Problems:
        try:
            porting.check_compatible(porting.describe(t), porting.describe(k))
        except (TypeError, ValueError) as error:  # TypeError: a Keras RNN of a cell torch lacks (ConvLSTM1D, ...)
            return [str(error)]
        return []

    def read_torch(t: Any, k: Any) -> list[np.ndarray]:
        weights = porting.read_weights(t)
        return [v for layer in weights.layers for v in to_keras(weights.spec.cell, layer)]

    def read_keras(k: Any, t: Any) -> dict[str, np.ndarray]:
        weights = porting.read_weights(k)
        names = porting._torch_suffixes(weights.spec)
        return {name + suffix: v for suffix, layer in zip(names, weights.layers) for name, v in layer.items()}

    return Pair(
        (torch.nn.RNNBase, models_torch.MultiStateBase),
        ("MultiStateBase", "LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional"),
        read_torch,
        read_keras,
        check,
        torch_slots=lambda t: dict(porting.torch_rnn(t).named_parameters()),
        keras_slots=lambda k: [w for part in porting._keras_parts(k)[0] for w in part.cell.weights],
    )


def _conv_padding(t: Any, k: Any) -> Problems:
    if t.padding_mode != "zeros":
        return [f"torch padding_mode={t.padding_mode!r} has no Keras Conv1D equivalent (Keras pads with zeros)"]
    padding = t.padding if isinstance(t.padding, str) else ("valid" if t.padding == (0,) else t.padding[0])
    same_by_hand = padding == t.dilation[0] * (t.kernel_size[0] - 1) / 2 and t.stride == (1,)
    if padding == k.padding or (same_by_hand and k.padding == "same"):
        return []
    return [f"torch padding={t.padding!r} but Keras padding={k.padding!r}"]


def _conv_check(t: Any, k: Any) -> Problems:
    return (
        _differs("kernel_size", t.kernel_size[0], "kernel_size", tuple(k.kernel_size)[0])
        + _differs("stride", t.stride[0], "strides", tuple(k.strides)[0])
        + _differs("dilation", t.dilation[0], "dilation_rate", tuple(k.dilation_rate)[0])
        + _differs("groups", t.groups, "groups", k.groups)
        + _conv_padding(t, k)
    )


def _layer_norm_check(t: Any, k: Any) -> Problems:
    axes = k.axis if isinstance(k.axis, (list, tuple)) else [k.axis]
    problems = _eps_differs(t.eps, k.epsilon)
    if len(axes) != len(t.normalized_shape):
        problems.append(
            f"torch normalizes the last {len(t.normalized_shape)} axes but Keras axis={k.axis!r} ({len(axes)} axes)"
        )
    if getattr(k, "rms_scaling", False):
        problems.append("Keras rms_scaling=True has no torch LayerNorm equivalent")
    return problems


def _batch_norm_check(t: Any, k: Any) -> Problems:
    problems = _eps_differs(t.eps, k.epsilon)
    if not t.track_running_stats:
        problems.append(
            "torch has no running statistics (track_running_stats=False) but Keras keeps "
            "moving_mean/moving_variance: nothing to port them from or to"
        )
    if t.affine != k.scale or t.affine != k.center:
        problems.append(f"torch affine={t.affine} but Keras scale={k.scale}, center={k.center}")
    return problems


def _squeezed_as(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` in ``shape`` where the two differ only by axes of size 1, else unchanged (the shape check refuses).

    torch's PReLU keeps ``(num_parameters,)``; Keras's alpha has the input's shape with shared axes of size 1.
    """
    squeeze = [d for d in values.shape if d != 1], [d for d in shape if d != 1]
    return values.reshape(shape) if squeeze[0] == squeeze[1] else values


def _builtin_pairs() -> list[Pair]:
    from torch import nn

    def linear_to_keras(t: Any, k: Any) -> list[np.ndarray]:
        return [_from_torch(t.weight).T] + ([_from_torch(t.bias)] if t.bias is not None else [])

    def dense_to_torch(k: Any, t: Any) -> dict[str, np.ndarray]:
        return {"weight": _from_keras(k.kernel).T} | ({"bias": _from_keras(k.bias)} if k.use_bias else {})

    def conv_to_keras(t: Any, k: Any) -> list[np.ndarray]:
        return [_from_torch(t.weight).transpose(2, 1, 0)] + ([_from_torch(t.bias)] if t.bias is not None else [])

    def conv_to_torch(k: Any, t: Any) -> dict[str, np.ndarray]:
        return {"weight": _from_keras(k.kernel).transpose(2, 1, 0)} | (
            {"bias": _from_keras(k.bias)} if k.use_bias else {}
        )

    def affine(t: Any, *extra: str) -> list[np.ndarray]:
        names = [n for n in ("weight", "bias") if getattr(t, n, None) is not None] + list(extra)
        return [_from_torch(getattr(t, n)) for n in names]

    def norm_to_torch(k: Any, t: Any, extra: dict[str, str]) -> dict[str, np.ndarray]:
        names = {"weight": "gamma", "bias": "beta"} | extra
        return {n: _from_keras(getattr(k, kn)) for n, kn in names.items() if getattr(k, kn, None) is not None}

    return [
        _recurrent_pair(),
        Pair(nn.Linear, ("Dense",), linear_to_keras, dense_to_torch),
        Pair(nn.Conv1d, ("Conv1D",), conv_to_keras, conv_to_torch, _conv_check),
        Pair(
            nn.LayerNorm,
            ("LayerNormalization",),
            lambda t, k: affine(t),
            lambda k, t: norm_to_torch(k, t, {}),
            _layer_norm_check,
        ),
        Pair(
            nn.BatchNorm1d,
            ("BatchNormalization",),
            lambda t, k: affine(t, "running_mean", "running_var"),
            lambda k, t: norm_to_torch(k, t, {"running_mean": "moving_mean", "running_var": "moving_variance"}),
            _batch_norm_check,
        ),
        Pair(
            nn.Embedding,
            ("Embedding",),
            lambda t, k: [_from_torch(t.weight)],
            lambda k, t: {"weight": _from_keras(k.embeddings)},
            lambda t, k: [] if t.max_norm is None else [f"torch max_norm={t.max_norm} has no Keras equivalent"],
        ),
        Pair(
            nn.PReLU,
            ("PReLU",),
            lambda t, k: [_squeezed_as(_from_torch(t.weight), tuple(k.alpha.shape))],
            lambda k, t: {"weight": _squeezed_as(_from_keras(k.alpha), tuple(t.weight.shape))},
        ),
    ]


def _registry() -> list[Pair]:
    if not _REGISTRY:
        _REGISTRY.extend(_builtin_pairs())
    return _REGISTRY


# ---- walking each side into leaves ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One layer that holds parameters, at ``path`` in its model ("" is the model itself)."""

    side: str
    path: str
    layer: Any

    @property
    def label(self) -> str:
        return f"{self.side} {self.path or '<the model>'!r} ({type(self.layer).__name__})"


def _join(path: str, name: str, sep: str) -> str:
    return f"{path}{sep}{name}" if path else name


def _torch_leaves(model: Any) -> list[Leaf]:
    """Torch leaves in registration order: registered kinds whole, else modules without children
    or owning parameters directly (an unregistered container with its own parameters is one leaf)."""
    seen: set[int] = set()

    def walk(module: Any, path: str) -> Iterator[Leaf]:
        if id(module) in seen:  # a shared module is ported once, at its first path
            return
        seen.add(id(module))
        children = list(module.named_children())
        owns = any("." not in key for key in _default_torch_slots(module))
        if not children or owns or any(isinstance(module, p.torch_cls) for p in _registry()):
            if _default_torch_slots(module):
                yield Leaf("torch", path, module)
            return
        for name, child in children:
            yield from walk(child, _join(path, name, "."))

    return list(walk(model, ""))


def _keras_children(layer: Any) -> list[Any]:
    import keras

    if isinstance(layer, keras.Model):  # functional: topological order; Sequential: its order
        return [child for child in layer.layers if not isinstance(child, keras.layers.InputLayer)]
    # Keras 3 has no public walk over a layer's tracked sublayers (see models_keras.multistate_layers).
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _keras_leaves(model: Any) -> list[Leaf]:
    """Keras leaves in structural order, on the same rules as ``_torch_leaves``; unbuilt layers are kept
    (their weights are unknown) so that the port can refuse them."""
    seen: set[int] = set()

    def walk(layer: Any, path: str) -> Iterator[Leaf]:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        children = _keras_children(layer)
        inner = {id(w) for child in children for w in child.weights}
        owns = any(id(w) not in inner for w in layer.weights)
        if not children or owns or any(_keras_kind_matches(layer, p.keras_names) for p in _registry()):
            if layer.weights or not layer.built:
                yield Leaf("Keras", path, layer)
            return
        for child in children:
            yield from walk(child, _join(path, child.name, "/"))

    return list(walk(model, ""))


def _leaves(side: str, model: Any) -> list[Leaf]:
    return _torch_leaves(model) if side == "torch" else _keras_leaves(model)


def _holds(leaf: Leaf) -> str:
    """What a leaf holds, for messages: ``weight (8, 4), bias (8,)``."""
    if leaf.side == "torch":
        return _shapes(_default_torch_slots(leaf.layer).items())
    if not leaf.layer.built:
        return "no weights yet"
    return _shapes((w.name, w) for w in leaf.layer.weights)


# ---- pairing leaves ------------------------------------------------------------------------------


def _pair_up(
    sources: list[Leaf], destinations: list[Leaf], name_map: Mapping[str, str]
) -> tuple[list[tuple[Leaf, Leaf]], Problems]:
    """Pairs named in ``name_map`` first, then the rest by position; problems with the map itself."""
    source_at = {leaf.path: leaf for leaf in sources}
    destination_at = {leaf.path: leaf for leaf in destinations}
    unknown = [("source", path, sources) for path in name_map if path not in source_at]
    unknown += [("destination", path, destinations) for path in name_map.values() if path not in destination_at]
    problems = [
        f"name_map names {where} {path!r}, which holds no parameters there; known: "
        + ", ".join(repr(leaf.path) for leaf in leaves)
        for where, path, leaves in unknown
    ]
    claimed: dict[str, list[str]] = {}
    for source, destination in name_map.items():
        claimed.setdefault(destination, []).append(source)
    for destination, claimants in claimed.items():
        if len(claimants) > 1:
            problems.append(
                f"two candidates for one slot: sources {', '.join(map(repr, claimants))} all map to "
                f"destination {destination!r}"
            )
    if problems:
        return [], problems
    named = [(source_at[s], destination_at[d]) for s, d in name_map.items()]
    rest_sources = [leaf for leaf in sources if leaf.path not in name_map]
    rest_destinations = [leaf for leaf in destinations if leaf.path not in claimed]
    return named + list(zip(rest_sources, rest_destinations)), []


# ---- checking and writing one pair ---------------------------------------------------------------


def _find_pair(torch_leaf: Leaf, keras_leaf: Leaf) -> Pair | None:
    return next((p for p in reversed(_registry()) if p.fits(torch_leaf.layer, keras_leaf.layer)), None)


def _no_pair_message(torch_leaf: Leaf, keras_leaf: Leaf) -> str:
    partners = [n for p in _registry() if isinstance(torch_leaf.layer, p.torch_cls) for n in p.keras_names]
    kind = type(torch_leaf.layer).__name__
    if not partners:
        return (
            f"{torch_leaf.label} and {keras_leaf.label}: no pair is registered for a torch {kind} "
            "(add one with harness.porting.models.register_pair)"
        )
    return f"{torch_leaf.label} cannot pair with {keras_leaf.label}: a {kind} pairs with {' or '.join(partners)}"


@dataclasses.dataclass(frozen=True)
class Write:
    """One destination slot and the value it will get."""

    side: str
    slot: Any
    value: np.ndarray

    def apply(self) -> None:
        if self.side == "torch":
            import torch

            with torch.no_grad():
                self.slot.copy_(torch.as_tensor(self.value, dtype=self.slot.dtype, device=self.slot.device))
        else:
            self.slot.assign(np.asarray(self.value).astype(self.slot.dtype))


def _plan_pair(pair: Pair, source: Leaf, destination: Leaf) -> tuple[list[Write], Problems]:
    """The writes that port ``source`` into ``destination``, or the problems that refuse it."""
    torch_leaf, keras_leaf = (source, destination) if source.side == "torch" else (destination, source)
    where = f"{source.label} -> {destination.label}"
    problems = [f"{where}: {p}" for p in pair.check(torch_leaf.layer, keras_leaf.layer)]
    if problems:
        return [], problems
    if destination.side == "Keras":
        # Keyed by position on the Keras side, by parameter name on the torch side.
        values: dict[Any, np.ndarray] = dict(enumerate(pair.to_keras(torch_leaf.layer, keras_leaf.layer)))
        slots: dict[Any, Any] = dict(enumerate(keras_slots(pair, keras_leaf.layer)))
        named = [(v.name, v) for v in slots.values()]
    else:
        values = pair.to_torch(keras_leaf.layer, torch_leaf.layer)
        slots = torch_slots(pair, torch_leaf.layer)
        named = list(slots.items())
    fits = values.keys() == slots.keys() and all(
        tuple(np.shape(values[key])) == tuple(slots[key].shape) for key in slots
    )
    if not fits:
        names = [name for name, _ in named]
        labels = [k if destination.side == "torch" else (names[k] if k < len(names) else f"value {k}") for k in values]
        given = _shapes(zip(labels, values.values()))
        return [], [f"{where}: the source converts to {given}; the destination holds {_shapes(named)}"]
    return [Write(destination.side, slots[key], np.asarray(values[key])) for key in slots], []


# ---- the report and the port ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PortedPair:
    """One ported pair: source path -> destination path, and the shapes written."""

    source: str
    destination: str
    shapes: tuple[tuple[int, ...], ...]


@dataclasses.dataclass
class PortReport:
    """What a whole-model port does: its pairs, and the leaves it leaves unported on either side."""

    pairs: list[PortedPair]
    unported_source: list[str]
    unported_destination: list[str]

    def table(self) -> str:
        rows = [f"{p.source} -> {p.destination}  {', '.join(map(str, p.shapes))}" for p in self.pairs]
        rows += [f"unported source: {leaf}" for leaf in self.unported_source]
        rows += [f"unported destination: {leaf}" for leaf in self.unported_destination]
        return "\n".join(rows)


def _sides(src: Any, dst: Any) -> tuple[str, str]:
    """ "torch" and "Keras", in the order of ``src`` and ``dst``."""
    sides = cast(tuple[str, str], tuple("Keras" if porting._side(obj) == "keras" else "torch" for obj in (src, dst)))
    if sides[0] == sides[1]:
        raise TypeError(
            f"whole-model porting copies between torch and Keras; got two {sides[0]} objects "
            f"({type(src).__name__} and {type(dst).__name__})"
        )
    return sides


def _plan(
    src: Any, dst: Any, name_map: Mapping[str, str] | None, allow_unported: bool
) -> tuple[PortReport, list[Write]]:
    """Check the whole port and return its report and writes; raise ``PortError`` naming every problem."""
    src_side, dst_side = _sides(src, dst)
    sources, destinations = _leaves(src_side, src), _leaves(dst_side, dst)
    problems = [
        f"{leaf.label} is not built: call the model on an input first"
        for leaf in sources + destinations
        if leaf.side == "Keras" and not leaf.layer.built
    ]
    pairs, map_problems = _pair_up(sources, destinations, name_map or {})
    problems += map_problems
    writes, report_pairs = [], []
    for source, destination in [] if problems else pairs:
        torch_leaf, keras_leaf = (source, destination) if source.side == "torch" else (destination, source)
        pair = _find_pair(torch_leaf, keras_leaf)
        if pair is None:
            problems.append(_no_pair_message(torch_leaf, keras_leaf))
            continue
        pair_writes, pair_problems = _plan_pair(pair, source, destination)
        problems += pair_problems
        writes += pair_writes
        shapes = tuple(tuple(w.value.shape) for w in pair_writes)
        report_pairs.append(PortedPair(source.label, destination.label, shapes))
    paired = {id(leaf) for pair in pairs for leaf in pair}
    left = [
        [f"{leaf.label}: {_holds(leaf)}" for leaf in leaves if id(leaf) not in paired]
        for leaves in (sources, destinations)
    ]
    if not problems and not allow_unported:
        problems += [f"{entry} has no partner on the other side" for entry in left[0] + left[1]]
        if left[0] or left[1]:
            problems.append("pair it with name_map={source path: destination path}, or pass allow_unported=True")
    if problems:
        raise PortError(
            f"cannot port {src_side} {type(src).__name__} into {dst_side} {type(dst).__name__}; "
            "nothing was written:\n  " + "\n  ".join(problems)
        )
    return PortReport(report_pairs, *left), writes


def port_report(
    src: Any, dst: Any, *, name_map: Mapping[str, str] | None = None, allow_unported: bool = False
) -> PortReport:
    """What ``port_weights(src, dst, ...)`` would port, without writing anything; raises as it would."""
    return _plan(src, dst, name_map, allow_unported)[0]


def port_model(src: Any, dst: Any, *, name_map: Mapping[str, str] | None = None, allow_unported: bool = False) -> Any:
    """Port every parameterised layer of ``src`` into ``dst`` (see the module docstring); returns ``dst``.

    With ``allow_unported=True`` the leaves left without a partner are listed in a ``UserWarning``.
    """
    report, writes = _plan(src, dst, name_map, allow_unported)
    for write in writes:
        write.apply()
    if report.unported_source or report.unported_destination:
        unported = report.unported_source + report.unported_destination
        warnings.warn("port_weights left unported (allow_unported=True): " + "; ".join(unported), stacklevel=3)
    return dst


def _is_recurrent_layer(obj: Any) -> bool:
    """One recurrent layer this module ports by itself (not a model around one)."""
    if porting._side(obj) == "torch":
        import torch

        import models_torch

        return isinstance(obj, (torch.nn.RNNBase, models_torch.MultiStateBase))
    try:
        porting._keras_parts(obj)
    except TypeError:
        return False
    return True


def port_weights(src: Any, dst: Any, *, name_map: Mapping[str, str] | None = None, allow_unported: bool = False) -> Any:
    """Copy the weights of ``src`` into ``dst`` (torch <-> Keras, either way) and return ``dst``.

    Two recurrent layers (multi-state, ``nn.LSTM``/``GRU``/``RNN``, Keras ``LSTM``/``GRU``/``SimpleRNN``,
    ``Bidirectional``) port directly. Anything else (whole models, any nesting, or other layers) ports
    every parameterised layer in structural order (``harness.porting.models``): ``name_map`` pairs
    source paths with destination paths where order cannot decide, and a parameter left without a
    partner refuses the port unless ``allow_unported=True`` (then a warning lists it).
    ``harness.porting.models.port_report`` shows what a port does without writing.
    Everything is validated before anything is assigned: a refused port leaves ``dst`` untouched.
    """
    if _is_recurrent_layer(src) and _is_recurrent_layer(dst):
        return porting.write_weights(porting.read_weights(src), dst)
    return port_model(src, dst, name_map=name_map, allow_unported=allow_unported)
