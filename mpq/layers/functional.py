"""The functional API: ``Input`` / ``InputLayer``, traced torch ops, and ``Model(inputs, outputs)``.

``Input(shape)`` makes a symbolic tensor with a ``None`` batch axis; calling layers (and torch
ops) on symbolic tensors records a graph of nodes (``mpq.layers.node``); ``Model(inputs,
outputs)`` is an mpq ``Layer`` that replays that graph eagerly on data. See docs/layers.md
("Functional models").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mpq._errors import check_config_depth
from mpq._errors import describe as _describe
from mpq.layers import masking as _masking
from mpq.layers import node as _node
from mpq.layers import serialization
from mpq.layers import tracking as _tracking
from mpq.layers.base import Layer, QuantizationSnapshot
from mpq.layers.building import as_shape as _as_shape
from mpq.layers.node import Node, SymbolicTensor, flatten, map_structure
from mpq.layers.serialization import register_layer
from mpq.layers.variables import check_write, to_tensor, to_torch_dtype

__all__ = ["Functional", "Input", "InputLayer", "Model", "TorchOp"]

_KERAS_TENSOR = "__keras_tensor__"


# ---------------------------------------------------------------------- inputs
@register_layer("mpq")
class InputLayer(Layer):
    """The layer behind ``Input``: one node, no inputs, a symbolic ``output``.

    Args (Keras 3, with tf.keras 2 spellings): shape (without the batch axis; ``input_shape``
    too), batch_size=None, dtype=None (``"float32"``), sparse=None (``True`` is refused: mpq
    layers take dense tensors), batch_shape (with the batch axis), optional=False (``True``:
    the model may be called with None for this input; the layers that read it get None and
    must accept it, as in Keras 3), name.
    """

    def __init__(
        self,
        shape: Sequence[int | None] | None = None,
        batch_size: int | None = None,
        dtype: Any = None,
        sparse: bool | None = None,
        batch_shape: Sequence[int | None] | None = None,
        input_tensor: Any = None,
        optional: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "input_shape" in kwargs and shape is None:
            shape = kwargs.pop("input_shape")
        if "batch_input_shape" in kwargs and batch_shape is None:  # tf.keras 2 configs
            batch_shape = kwargs.pop("batch_input_shape")
        if kwargs.pop("ragged", None):
            _refuse("ragged=True", "ragged tensors")
        trainable = kwargs.pop("trainable", True)
        if kwargs:
            raise ValueError(
                f"Unrecognized keyword arguments passed to InputLayer: {kwargs}. Expected: "
                "shape, batch_size, dtype, sparse, batch_shape, input_tensor, optional, name"
            )
        if sparse:
            _refuse("sparse=True", "sparse tensors")
        if input_tensor is not None:
            raise ValueError(
                "Expected input_tensor=None: mpq has no backend tensors to wrap (call layers on "
                f"the output of Input(...) instead). Received: input_tensor={_describe(input_tensor)}"
            )
        if not isinstance(optional, bool):
            raise ValueError(
                f"Expected `optional` to be True or False. Received: optional={_describe(optional)}"
            )
        if shape is not None and batch_shape is not None:
            raise ValueError(
                "Expected either `shape` or `batch_shape`, not both. "
                f"Received: shape={shape!r}, batch_shape={batch_shape!r}"
            )
        if batch_shape is None:
            if shape is None:
                raise ValueError(
                    "Expected an input `shape` (without the batch axis) or `batch_shape`. "
                    "Received: shape=None, batch_shape=None"
                )
            if not isinstance(shape, (tuple, list, torch.Size)):
                raise ValueError(
                    f"Expected `shape` to be a tuple of ints or None. Received: "
                    f"shape={_describe(shape)}"
                )
            batch_shape = (batch_size, *tuple(shape))
        if not isinstance(batch_shape, (tuple, list, torch.Size)):
            raise ValueError(
                "Expected `batch_shape` to be a tuple of ints or None. "
                f"Received: batch_shape={_describe(batch_shape)}"
            )
        checked = _as_shape(list(batch_shape))
        if not isinstance(checked, tuple):
            raise ValueError(
                f"Expected a shape of ints or None. Received: batch_shape={tuple(batch_shape)!r}"
            )
        torch_dtype = to_torch_dtype("float32" if dtype is None else dtype)
        super().__init__(name=name, trainable=trainable, autocast=False)
        self.batch_shape: tuple[int | None, ...] = checked
        self.sparse = False
        self.optional = optional
        self.built = True
        out = SymbolicTensor(checked, torch_dtype, name=self.name)
        Node(self, (), {}, out)

    def call(self, inputs: Any) -> Any:
        return inputs

    def get_config(self) -> dict[str, Any]:
        config = {
            "batch_shape": list(self.batch_shape),
            "dtype": _node.dtype_name(self.output.dtype),
            "sparse": False,
            "name": self.name,
        }
        if self.optional:
            config["optional"] = True
        return config


def _refuse(what: str, kind: str) -> None:
    raise ValueError(
        f"Expected dense inputs: mpq layers compute on dense torch tensors and have no {kind}. "
        f"Received: {what}"
    )


def Input(
    shape: Sequence[int | None] | None = None,
    batch_size: int | None = None,
    dtype: Any = None,
    sparse: bool | None = None,
    batch_shape: Sequence[int | None] | None = None,
    name: str | None = None,
    tensor: Any = None,
    optional: bool = False,
) -> SymbolicTensor:
    """A symbolic input tensor of shape ``(batch_size, *shape)`` (batch ``None`` by default).

    >>> x = Input(shape=(784,))
    >>> x.shape, x.dtype
    ((None, 784), torch.float32)
    """
    layer = InputLayer(
        shape=shape,
        batch_size=batch_size,
        dtype=dtype,
        sparse=sparse,
        batch_shape=batch_shape,
        input_tensor=tensor,
        optional=optional,
        name=name,
    )
    return layer.output  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- traced torch ops
def _ops() -> dict[str, Callable[..., Any]]:
    """The torch ops a saved graph may name (pure tensor functions only: loading calls them
    with arguments read from the file, so nothing that writes files, allocates by a value or
    reads global state)."""
    table: dict[str, Callable[..., Any]] = {}
    for name in [
        *_node.OPERATORS,
        "__eq__",
        "__ne__",
        "reshape",
        "view",
        "flatten",
        "squeeze",
        "unsqueeze",
        "transpose",
        "permute",
        "expand",
        "contiguous",
        "float",
        "half",
        "bfloat16",
        "double",
        "int",
        "long",
        "bool",
        "to",
        "sum",
        "mean",
        "amax",
        "amin",
        "max",
        "min",
        "exp",
        "log",
        "sqrt",
        "rsqrt",
        "abs",
        "tanh",
        "sigmoid",
        "relu",
        "softmax",
        "log_softmax",
        "matmul",
        "clamp",
        "neg",
        "square",
        "pow",
    ]:
        table[f"Tensor.{name}"] = getattr(torch.Tensor, name)
    for name in [
        "cat",
        "concat",
        "stack",
        "add",
        "sub",
        "mul",
        "div",
        "matmul",
        "reshape",
        "flatten",
        "squeeze",
        "unsqueeze",
        "transpose",
        "permute",
        "sum",
        "mean",
        "exp",
        "log",
        "sqrt",
        "rsqrt",
        "abs",
        "tanh",
        "sigmoid",
        "relu",
        "softmax",
        "clamp",
        "where",
        "maximum",
        "minimum",
        "square",
        "pow",
        "einsum",
    ]:
        table[f"torch.{name}"] = getattr(torch, name)
    for name in [
        "relu",
        "gelu",
        "silu",
        "softmax",
        "log_softmax",
        "sigmoid",
        "tanh",
        "normalize",
        "pad",
    ]:
        table[f"torch.nn.functional.{name}"] = getattr(torch.nn.functional, name)
    return table


OPS = _ops()
_OP_NAMES = {id(fn): name for name, fn in OPS.items()}


def _op_name(fn: Callable[..., Any]) -> str | None:
    """The name of ``fn`` in ``OPS`` (by identity), or None."""
    return _OP_NAMES.get(id(fn))


def _encode(value: Any, op: str) -> Any:
    """A traced op's constant arguments as JSON; slots, slices, dtypes tagged."""
    if isinstance(value, _node.Slot):
        return {"__input__": value.index}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, slice):
        return {"__slice__": [_encode(value.start, op), _encode(value.stop, op), value.step]}
    if value is Ellipsis:
        return {"__ellipsis__": True}
    if isinstance(value, torch.dtype):
        return {"__dtype__": _node.dtype_name(value)}
    if isinstance(value, torch.Size):
        return {"__tuple__": list(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, op) for v in value]}
    if isinstance(value, list):
        return [_encode(v, op) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, op) for k, v in value.items()}}
    raise ValueError(
        f"Expected the arguments of traced op {op!r} to be symbolic tensors or JSON constants "
        "(numbers, strings, None, slices, dtypes, lists, tuples) to save it. "
        f"Received: {_describe(value)}. The model runs, but cannot be saved: wrap the op in a "
        "Layer subclass registered with @mpq.layers.register_layer()"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__input__"} and isinstance(value["__input__"], int):
        return _node.Slot(value["__input__"])
    if set(value) == {"__slice__"} and isinstance(value["__slice__"], list):
        return slice(*(_decode(v) for v in value["__slice__"]))
    if set(value) == {"__ellipsis__"}:
        return Ellipsis
    if set(value) == {"__dtype__"}:
        return to_torch_dtype(value["__dtype__"])
    if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
        return tuple(_decode(v) for v in value["__tuple__"])
    if set(value) == {"__dict__"} and isinstance(value["__dict__"], dict):
        return {k: _decode(v) for k, v in value["__dict__"].items()}
    raise ValueError(f"Expected an encoded op argument. Received: {_describe(value)}")


@register_layer("mpq")
class TorchOp(Layer):
    """A torch function or Tensor method recorded on symbolic tensors (``x + y``,
    ``torch.cat([a, b], 1)``, ``x[:, 0]``, ``x.reshape(...)``), replayed on data.

    Any torch op that runs on the meta device can be traced; saving needs one of the pure ops
    in ``OPS`` (by name: loading resolves names from that table only) and JSON constants as its
    other arguments, else ``get_config`` raises ValueError.

    Args:
        function: a name from ``OPS`` (``"torch.cat"``, ``"Tensor.__add__"``) or a callable.
        arguments: ``[args, kwargs]`` with ``{"__input__": i}`` (or ``Slot(i)``) for inputs.
    """

    # Set in ``__init__`` (into ``__dict__``: the template may hold modules, never tracked).
    _function: Callable[..., Any]
    _template: tuple[Any, dict[str, Any]]  # (args, kwargs) with ``Slot``s for the inputs
    _num_inputs: int

    def __init__(self, function: Any, arguments: Any, **kwargs: Any) -> None:
        if isinstance(function, str):
            fn = OPS.get(function)
            if fn is None:
                raise ValueError(
                    f"Expected a torch op mpq can load, one of {sorted(OPS)}. "
                    f"Received: function={function!r}"
                )
        elif callable(function):
            fn = function
        else:
            raise TypeError(
                f"Expected a torch op name or callable. Received: function={_describe(function)}"
            )
        if isinstance(arguments, list) and len(arguments) == 2 and isinstance(arguments[1], dict):
            arguments = (_decode(arguments[0]), _decode({"__dict__": arguments[1]}))
        if not (
            isinstance(arguments, tuple) and len(arguments) == 2 and isinstance(arguments[1], dict)
        ):
            raise ValueError(
                f"Expected `arguments` as [args, kwargs]. Received: {_describe(arguments)}"
            )
        slots = sorted({x.index for x in flatten(arguments) if isinstance(x, _node.Slot)})
        if slots != list(range(len(slots))) or not slots:
            raise ValueError(
                "Expected the op's inputs to be numbered 0, 1, ... in `arguments`. "
                f"Received: input numbers {slots}"
            )
        kwargs.setdefault("autocast", False)  # a torch op keeps its inputs' dtypes
        if kwargs.get("name") is None:
            base = getattr(fn, "__name__", "op").strip("_") or "op"
            kwargs["name"] = _tracking.unique_name(base)
        super().__init__(**kwargs)
        self.__dict__["_function"] = fn
        self.__dict__["_template"] = arguments
        self.__dict__["_num_inputs"] = len(slots)
        self.built = True

    @property
    def function(self) -> Callable[..., Any]:
        return self._function

    def call(self, *inputs: Any) -> Any:
        if len(inputs) != self._num_inputs:
            raise ValueError(
                f"Expected {self._num_inputs} input tensor(s) for op {self.name!r}. "
                f"Received: {len(inputs)}"
            )
        template: Any = self._template
        if any(isinstance(x, torch.Tensor) and x.device.type == "meta" for x in inputs):
            # A symbolic call: tensor constants join the inputs on the meta device.
            template = map_structure(
                lambda c: torch.empty_like(c, device="meta") if isinstance(c, torch.Tensor) else c,
                template,
            )
        args, kwargs = _node.fill_template(template, inputs)
        return self.function(*args, **kwargs)

    def get_config(self) -> dict[str, Any]:
        name = _op_name(self.function)
        if name is None:
            raise ValueError(
                f"Expected a traced torch op that mpq can save, one of mpq.layers.functional.OPS. "
                f"Received: function={getattr(self.function, '__qualname__', self.function)!r} in "
                f"layer {self.name!r}. The model runs, but cannot be saved: wrap the op in a "
                "Layer subclass registered with @mpq.layers.register_layer()"
            )
        args, kwargs = self._template
        config = super().get_config()
        config.pop("dtype", None)
        config["function"] = name
        config["arguments"] = [_encode(list(args), name), _encode(kwargs, name)["__dict__"]]
        return config


_node.set_op_factory(lambda fn, template: TorchOp(fn, template))


# ---------------------------------------------------------------------- the model
def _check_tensors(structure: Any, what: str) -> list[SymbolicTensor]:
    flat = flatten(structure)
    if not flat or not all(isinstance(t, SymbolicTensor) for t in flat):
        raise ValueError(
            f"Expected `{what}` to be symbolic tensors (from Input(...) and layer calls on them), "
            f"or lists / tuples / dicts of them. Received: {what}={_describe(structure)}"
        )
    return flat


def _graph(
    inputs: list[SymbolicTensor], outputs: list[SymbolicTensor], known: set[int]
) -> list[Node]:
    """Nodes that compute ``outputs`` from ``inputs`` (and tensors in ``known``), in an order
    where every node runs after the nodes it reads from (an iterative depth-first walk: graphs
    of any depth; a graph made by calls on symbolic tensors has no cycles)."""
    available = {id(t) for t in inputs} | known
    order: list[Node] = []
    done: set[int] = set()
    stack: list[tuple[Node, bool]] = []

    def need(t: SymbolicTensor, consumer: str) -> None:
        if id(t) in available:
            return
        node = t.node
        if node is None or node.is_input:
            source = "no layer" if node is None else repr(node.operation.name)
            raise ValueError(
                f"Graph disconnected: cannot obtain value for tensor {t!r} at layer "
                f"{consumer!r}. Expected every tensor to be computed from the model's inputs "
                f"{[i.name for i in inputs]}. Received: a tensor from {source} that is not "
                "one of them"
            )
        if id(node) not in done:
            stack.append((node, False))

    for t in reversed(outputs):
        need(t, "outputs")
    while stack:
        node, inputs_done = stack.pop()
        if id(node) in done:
            continue
        if inputs_done:
            done.add(id(node))
            order.append(node)
            available.update(id(t) for t in node.output_tensors)
            continue
        stack.append((node, True))
        for t in reversed(node.input_tensors):
            need(t, node.operation.name)
    return order


class _Rebuild:
    """``Functional.from_config`` step by step: make each layer from its config, call it on the
    symbolic tensors its ``inbound_nodes`` name (in dependency order), then read the model's
    input and output references."""

    def __init__(self) -> None:
        self.created: dict[str, Layer] = {}
        self.outputs_by_layer: dict[str, list[list[SymbolicTensor]]] = {}
        self.pending: list[tuple[str, Any]] = []

    def add_layers(self, entries: list[Any], custom_objects: dict[str, Any] | None) -> None:
        for entry in entries:
            if not isinstance(entry, dict):
                raise ValueError(f"Expected a layer entry dict. Received: {_describe(entry)}")
            body = {k: v for k, v in entry.items() if k not in ("name", "inbound_nodes")}
            layer = serialization.deserialize(body, custom_objects)
            name = entry.get("name", layer.name)
            if not isinstance(name, str) or name in self.created:
                raise ValueError(
                    f"Expected unique layer names in the config. Received: name={name!r}"
                )
            self.created[name] = layer
            nodes = layer.__dict__.get("_inbound_nodes", [])
            self.outputs_by_layer[name] = [n.output_tensors for n in nodes if n.is_input]
            inbound = entry.get("inbound_nodes", [])
            if not isinstance(inbound, list):
                raise ValueError(
                    f"Expected 'inbound_nodes' to be a list. Received: {_describe(inbound)}"
                )
            self.pending.extend((name, node_config) for node_config in inbound)

    def resolve(self, ref: Any) -> SymbolicTensor:
        """The tensor ``[layer name, node index, tensor index]`` names (``_NotReady`` while
        its node has not run yet)."""
        if (
            not isinstance(ref, list)
            or len(ref) != 3
            or not isinstance(ref[0], str)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ref[1:])
        ):
            raise ValueError(
                f"Expected a tensor reference [layer name, node index, tensor index]. "
                f"Received: {_describe(ref)}"
            )
        nodes = self.outputs_by_layer.get(ref[0])
        if nodes is None or not 0 <= ref[1] < len(nodes) or not 0 <= ref[2] < len(nodes[ref[1]]):
            raise _NotReady(ref)
        return nodes[ref[1]][ref[2]]

    def decode(self, value: Any) -> Any:
        """A node's args/kwargs with each serialized tensor replaced by its symbolic tensor."""
        if isinstance(value, dict) and value.get("class_name") == _KERAS_TENSOR:
            inner = value.get("config")
            if not isinstance(inner, dict):
                raise ValueError(f"Expected a tensor config. Received: {_describe(value)}")
            return self.resolve(inner.get("keras_history"))
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if isinstance(value, dict):
            return {k: self.decode(v) for k, v in value.items()}
        return value

    def run_nodes(self) -> None:
        """Call each layer on its nodes' inputs, in as many rounds as the dependencies need;
        a round that makes no progress means a node reads a tensor no node makes."""
        pending = self.pending
        while pending:
            remaining = []
            for name, node_config in pending:
                if not isinstance(node_config, (dict, list)):
                    raise ValueError(
                        f"Expected a node config dict {{'args', 'kwargs'}}. "
                        f"Received: {_describe(node_config)}"
                    )
                if isinstance(node_config, list):
                    node_config = _keras2_node(node_config)
                try:
                    args = self.decode(node_config.get("args", []))
                    kwargs = self.decode(node_config.get("kwargs", {}))
                except _NotReady:
                    remaining.append((name, node_config))
                    continue
                if not isinstance(args, list) or not isinstance(kwargs, dict):
                    raise ValueError(
                        f"Expected node 'args' as a list and 'kwargs' as a dict. "
                        f"Received: {_describe(node_config)[:300]}"
                    )
                out = self.created[name](*args, **kwargs)
                self.outputs_by_layer[name].append(
                    [t for t in flatten(out) if isinstance(t, SymbolicTensor)]
                )
            if len(remaining) == len(pending):
                raise ValueError(
                    "Expected a config whose nodes can all be computed from its inputs. "
                    f"Received: nodes of {sorted({n for n, _ in remaining})} that read tensors "
                    "no node makes"
                )
            pending = remaining
        self.pending = []

    def structure(self, refs: Any) -> Any:
        """The model's inputs or outputs from their references (one, a list or a dict)."""
        if isinstance(refs, list) and len(refs) == 1 and _is_ref(refs[0]):
            return self.resolve(refs[0])
        if _is_ref(refs):
            return self.resolve(refs)
        if isinstance(refs, dict):
            return {k: self.structure(v) for k, v in refs.items()}
        if isinstance(refs, list):
            return [self.structure(r) for r in refs]
        raise ValueError(f"Expected tensor references. Received: {_describe(refs)}")


@register_layer("mpq")
class Functional(Layer):
    """A model defined by a graph of layer calls on symbolic tensors (Keras ``Model(inputs,
    outputs)``); it is an mpq ``Layer``: weights, policies, ``quantize``, config, saving.

    Args:
        inputs: the ``Input(...)`` tensor(s): one, or a list / tuple / dict of them.
        outputs: symbolic tensor(s) computed from ``inputs``: any nesting of lists, tuples,
            dicts; calling the model returns the same structure.
        name, trainable, dtype: as for ``Layer`` (layers without their own ``dtype`` inherit
            the model's policy; a ``DTypePolicyMap`` resolves by layer path).

    >>> from mpq.layers import Dense
    >>> x = Input(shape=(3,))
    >>> model = Model(x, Dense(2)(Dense(4, activation="relu")(x)))
    >>> model(torch.ones(5, 3)).shape
    torch.Size([5, 2])
    """

    # The graph, set in ``__init__`` (into ``__dict__``: kept out of module tracking).
    _inputs_struct: Any  # the inputs as given: one tensor, or a list / tuple / dict
    _outputs_struct: Any
    _inputs: list[SymbolicTensor]
    _outputs: list[SymbolicTensor]
    _nodes: list[Node]
    _loss_tensors: list[SymbolicTensor]

    def __init__(self, inputs: Any, outputs: Any, name: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("autocast", False)  # each layer casts for itself
        super().__init__(name=name, **kwargs)
        flat_in = _check_tensors(inputs, "inputs")
        flat_out = _check_tensors(outputs, "outputs")
        if len({id(t) for t in flat_in}) != len(flat_in):
            raise ValueError(
                f"Expected each input tensor once in `inputs`. Received: inputs={inputs!r}"
            )
        nodes = _graph(flat_in, flat_out, set())
        d = self.__dict__
        d["_inputs_struct"] = inputs
        d["_outputs_struct"] = outputs
        d["_inputs"] = flat_in
        d["_outputs"] = flat_out
        d["_nodes"] = nodes
        d["_loss_tensors"] = []
        layers: dict[int, Layer] = {}
        for t in flat_in:  # the InputLayers first (an intermediate input's maker is not run)
            if t.node is not None and isinstance(t.node.operation, InputLayer):
                layers.setdefault(id(t.node.operation), t.node.operation)
        for n in nodes:
            layers.setdefault(id(n.operation), n.operation)
        names: dict[str, Layer] = {}
        for layer in layers.values():
            if layer.name in names:
                raise ValueError(
                    f'The name "{layer.name}" is used 2 times in the model. Expected all layer '
                    f"names to be unique. Received: two layers named {layer.name!r}"
                )
            names[layer.name] = layer
        for i, layer in enumerate(layers.values()):
            setattr(self, str(i), layer)
        self.built = True

    # ------------------------------------------------------------------ structure
    @property
    def inputs(self) -> list[SymbolicTensor]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[SymbolicTensor]:
        return list(self._outputs)

    @property
    def input_names(self) -> list[str]:
        """Names of the layers that make ``inputs`` (tf.keras 2 ``Model.input_names``)."""
        return [t.node.operation.name if t.node else str(t.name) for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Names of the layers that make ``outputs``."""
        return [t.node.operation.name if t.node else str(t.name) for t in self.outputs]

    @property
    def input(self) -> Any:  # the model's own inputs, as given (tf.keras `Model.input`)
        return self._inputs_struct

    @property
    def output(self) -> Any:
        return self._outputs_struct

    @property
    def layers(self) -> list[Layer]:
        """The model's layers (InputLayers first), in the order the graph uses them."""
        return [m for m in self._modules.values() if isinstance(m, Layer)]

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """The layer called ``name`` (or at position ``index`` of ``layers``)."""
        layers = self.layers
        if index is not None:
            if (
                isinstance(index, bool)
                or not isinstance(index, int)
                or not (-len(layers) <= index < len(layers))
            ):
                raise ValueError(
                    f"Expected an index in [0, {len(layers)}). Received: index={_describe(index)}"
                )
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(
            f"No such layer: {name!r}. Expected one of {[layer.name for layer in layers]}."
        )

    # ------------------------------------------------------------------ call
    def _flat_inputs(self, inputs: Any) -> list[Any]:
        struct = self._inputs_struct
        flat_in = self._inputs
        if isinstance(struct, dict) and isinstance(inputs, dict):
            if set(inputs) != set(struct):
                raise ValueError(
                    f"Expected inputs with keys {sorted(struct)}. Received: keys {sorted(inputs)}"
                )
            return flatten({k: inputs[k] for k in struct})
        if isinstance(inputs, dict):
            by_name = {t.name: t for t in flat_in}
            if set(inputs) != set(by_name):
                raise ValueError(
                    f"Expected inputs named {sorted(k for k in by_name if k)}. "
                    f"Received: keys {sorted(inputs)}"
                )
            return [inputs[t.name] for t in flat_in if t.name is not None]
        values = flatten(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(values) != len(flat_in):
            raise ValueError(
                f"Expected {len(flat_in)} input tensor(s) for model {self.name!r}. "
                f"Received: {len(values)} ({_describe(inputs)[:200]})"
            )
        return values

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        flat_in = self._inputs
        values: dict[int, Any] = {}
        masks = [None] * len(flat_in) if mask is None else flatten(mask)
        given = self._flat_inputs(inputs)
        if len(masks) != len(given):
            raise ValueError(
                f"Expected one mask (or None) per input ({len(given)}). Received: mask={mask!r}"
            )
        for ref, x, m in zip(flat_in, given, masks, strict=True):
            if x is None:
                self._check_none_input(ref, m)
                values[id(ref)] = None
                continue
            x = x if isinstance(x, torch.Tensor) else to_tensor(x)
            if x.dtype != ref.dtype:
                x = self._to_input_dtype(x, ref)
            if m is not None:
                x = x.view_as(x)  # an alias to carry the mask, not the caller's tensor
                _masking.set_mask(x, m)
            values[id(ref)] = x
        self._run(values)
        for t in self._loss_tensors:
            self.add_loss(values[id(t)])

        def read(t: Any) -> Any:
            return values[id(t)] if isinstance(t, SymbolicTensor) else t

        return map_structure(read, self._outputs_struct)

    def _check_none_input(self, ref: SymbolicTensor, mask: Any) -> None:
        """None is a value for an ``Input(optional=True)`` (the layers reading it get None);
        a clear error for any other input, or with a mask."""
        source = ref.node.operation if ref.node is not None else None
        if not (isinstance(source, InputLayer) and source.optional):
            raise ValueError(
                f"Expected a tensor for input {ref.name!r} of model {self.name!r} (only an "
                "Input(optional=True) may be None). Received: None"
            )
        if mask is not None:
            raise ValueError(
                f"Expected no mask for the optional input {ref.name!r} passed as None. "
                f"Received: mask={_describe(mask)}"
            )

    def _to_input_dtype(self, x: torch.Tensor, ref: SymbolicTensor) -> torch.Tensor:
        """``x`` in its Input's dtype (as Keras converts model inputs). Into an integer or bool
        dtype every value must be held exactly (``check_write``'s rules: no wrap-around, no
        dropped fraction); into a floating dtype it is an ordinary cast."""
        stand_in = torch.empty(0, dtype=ref.dtype, device="meta")
        stand_in.path = ref.name or "input"  # type: ignore[attr-defined]  # named in errors
        try:
            check_write(stand_in, x, f"pass to model {self.name!r} as")
        except (ValueError, TypeError) as e:
            raise type(e)(
                f"A model converts each input to its Input's dtype ({ref.dtype}). {e}"
            ) from None
        return x.to(ref.dtype)

    def _run(self, values: dict[int, Any]) -> None:
        def read(t: Any) -> Any:
            return values[id(t)] if isinstance(t, SymbolicTensor) else t

        for node in self._nodes:
            args = map_structure(read, node.call_args)
            kwargs = map_structure(read, node.call_kwargs)
            out = node.operation(*args, **kwargs)
            flat = flatten(out)
            if len(flat) != len(flatten(node.outputs)):
                raise ValueError(
                    f"Expected layer {node.operation.name!r} to return the structure it "
                    f"returned on symbolic inputs ({node.outputs!r}). Received: {_describe(out)}"
                )
            for ref, value in zip(flatten(node.outputs), flat, strict=True):
                if isinstance(ref, SymbolicTensor):
                    values[id(ref)] = value

    # ------------------------------------------------------------------ quantization
    def quantize(self, mode: Any, type_check: bool = True, config: Any = None) -> None:
        """Quantize every leaf layer of the model (sublayers of nested models and Sequentials
        included) that has a scheme for ``mode``, as Keras ``Model.quantize``: layers without
        one (InputLayer, Add, traced ops) are left as they are. Raises ValueError if no layer
        has a scheme. All or nothing, as ``mpq.quantize``: if a layer's quantize raises, every
        layer quantized so far (and the failing one) gets back its variables, scheme and policy
        before the error propagates."""
        done = 0
        snapshots: list[QuantizationSnapshot] = []
        try:
            for module in self.modules():
                if not isinstance(module, Layer) or next(_tracking.direct_sublayers(module), None):
                    continue  # containers: their layers are visited on their own
                snapshot = QuantizationSnapshot(module)
                snapshots.append(snapshot)
                try:
                    module.quantize(mode, type_check=type_check, config=config)
                except NotImplementedError:
                    snapshots.pop().restore()  # no scheme for this layer class: left as it was
                    continue
                done += 1
        except BaseException:
            for snapshot in reversed(snapshots):
                snapshot.restore()
            raise
        if not done:
            raise ValueError(
                f"Expected model {self.name!r} to hold a layer with a quantization scheme for "
                f"mode={mode!r}. Received: layers {[type(m).__name__ for m in self.layers]}"
            )

    # ------------------------------------------------------------------ losses
    def add_loss(self, loss: Any, inputs: Any = None) -> None:
        """``Layer.add_loss`` (tensors, numbers, zero-argument callables), plus a symbolic tensor
        computed from the model's inputs, evaluated at each call."""
        if isinstance(loss, SymbolicTensor):
            d = self.__dict__
            known = {id(t) for n in d["_nodes"] for t in n.output_tensors}
            new = _graph(d["_inputs"], [loss], known)
            d["_nodes"] = [*d["_nodes"], *new]
            d["_loss_tensors"].append(loss)
            for n in new:
                if all(m is not n.operation for m in self._modules.values()):
                    setattr(self, str(len(self._modules)), n.operation)
            return
        super().add_loss(loss, inputs)

    # ------------------------------------------------------------------ shapes
    def compute_output_shape(self, input_shape: Any) -> Any:
        return map_structure(
            lambda t: t.shape if isinstance(t, SymbolicTensor) else t,
            self._outputs_struct,
        )

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        """Keras 3's functional config: ``layers`` (each with its ``inbound_nodes``),
        ``input_layers``, ``output_layers``; tensors as ``[layer name, node, index]``."""
        d = self.__dict__
        if d["_loss_tensors"] or d.get("_callable_losses"):
            raise ValueError(
                f"Model {self.name!r} has losses added with add_loss (a symbolic tensor or a "
                "callable): they are code, not config. Expected a model without them to "
                "serialize. Received: add_loss losses"
            )
        for t in d["_inputs"]:
            if t.node is None or not isinstance(t.node.operation, InputLayer):
                raise ValueError(
                    f"Expected the inputs of model {self.name!r} to come from Input(...) to "
                    f"serialize it. Received: an input made by "
                    f"{t.node.operation.name if t.node else None!r}"
                )
        nodes: list[Node] = d["_nodes"]
        in_model = {id(n) for n in nodes}
        for t in d["_inputs"]:
            if t.node is not None:
                in_model.add(id(t.node))
        # Node indices as seen from this model (a shared layer may have nodes elsewhere).
        local: dict[int, int] = {}
        for layer in self.layers:
            i = 0
            for n in layer.__dict__.get("_inbound_nodes", ()):
                if id(n) in in_model:
                    local[id(n)] = i
                    i += 1

        def history(t: SymbolicTensor) -> list[Any]:
            assert_node = t.node
            if assert_node is None:
                raise ValueError(f"Expected a tensor with a history. Received: {t!r}")
            return [assert_node.operation.name, local[id(assert_node)], t.tensor_index]

        def encode(value: Any) -> Any:
            if isinstance(value, SymbolicTensor):
                return {
                    "class_name": _KERAS_TENSOR,
                    "config": {
                        "shape": list(value.shape),
                        "dtype": _node.dtype_name(value.dtype),
                        "keras_history": history(value),
                    },
                }
            if value is None or isinstance(value, (bool, int, float, str)):
                return value
            if isinstance(value, (list, tuple)):
                return [encode(v) for v in value]
            if isinstance(value, dict) and all(isinstance(k, str) for k in value):
                return {k: encode(v) for k, v in value.items()}
            raise ValueError(
                "Expected layer call arguments in a functional model to be symbolic tensors or "
                f"JSON constants to serialize it. Received: {_describe(value)}"
            )

        layer_configs = []
        for layer in self.layers:
            entry = serialization.serialize(layer)
            entry["name"] = layer.name
            entry["inbound_nodes"] = [
                {"args": encode(list(n.call_args)), "kwargs": encode(n.call_kwargs)}
                for n in layer.__dict__.get("_inbound_nodes", ())
                if id(n) in in_model and not n.is_input
            ]
            layer_configs.append(entry)

        def refs(struct: Any) -> Any:
            if isinstance(struct, SymbolicTensor):
                return [history(struct)]
            return map_structure(history, struct)

        config = super().get_config()
        config.update(
            {
                "layers": layer_configs,
                "input_layers": refs(d["_inputs_struct"]),
                "output_layers": refs(d["_outputs_struct"]),
            }
        )
        return config

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
    ) -> Functional:
        """Rebuild the graph: each layer from its config, then its nodes by calling it on the
        symbolic tensors its ``inbound_nodes`` name (layer classes resolve as in
        ``mpq.layers.deserialize``: catalogs, registered objects, ``custom_objects``)."""
        check_config_depth(config)
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError(
                "Expected a functional model config with a 'layers' list. "
                f"Received: config={_describe(config)[:300]}"
            )
        config = dict(config)
        graph = _Rebuild()
        graph.add_layers(config.pop("layers"), custom_objects)
        graph.run_nodes()
        input_refs = config.pop("input_layers", None)
        output_refs = config.pop("output_layers", None)
        try:
            inputs, outputs = graph.structure(input_refs), graph.structure(output_refs)
        except _NotReady as e:
            raise ValueError(
                f"Expected references to tensors of the graph. Received: {e}"
            ) from None
        return cls(inputs, outputs, **config)

    # ------------------------------------------------------------------ summary
    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        """Print one row per layer: name (class), output shape, parameter count, inputs."""
        rows = []
        for layer in self.layers:
            nodes = layer.__dict__.get("_inbound_nodes", [])
            shape = str(nodes[0].output_shapes) if nodes else "?"
            params = str(sum(p.numel() for p in layer.parameters()))
            parents = sorted(
                {p.operation.name for n in nodes for p in n.parent_nodes if id(n) in self._ids()}
            )
            rows.append(
                (f"{layer.name} ({type(layer).__name__})", shape, params, ", ".join(parents))
            )
        header = ("Layer (type)", "Output Shape", "Param #", "Connected to")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        line = "  ".join("-" * w for w in widths)
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        print_fn(f'Model: "{self.name}"  (policy {self.dtype_policy.name})')
        print_fn(line)
        print_fn(fmt.format(*header))
        print_fn(line)
        for row in rows:
            print_fn(fmt.format(*row).rstrip())
        print_fn(line)
        print_fn(
            f"Total params: {total}  (trainable: {trainable}, non-trainable: {total - trainable})"
        )

    def _ids(self) -> set[int]:
        return {id(n) for n in self._nodes}


def _keras2_node(entries: list[Any]) -> dict[str, Any]:
    """A tf.keras 2 node config, ``[[layer name, node index, tensor index, kwargs], ...]``, as
    Keras 3's ``{"args", "kwargs"}`` (one tensor is passed alone, several as a list)."""
    tensors: list[Any] = []
    kwargs: dict[str, Any] = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) in (3, 4)):
            raise ValueError(
                "Expected a tf.keras 2 node entry [layer name, node index, tensor index, kwargs]. "
                f"Received: {_describe(entry)}"
            )
        if len(entry) == 4:
            if not isinstance(entry[3], dict):
                raise ValueError(
                    f"Expected the call kwargs of a node entry as a dict. Received: {entry!r}"
                )
            kwargs.update(entry[3])
        tensors.append({"class_name": _KERAS_TENSOR, "config": {"keras_history": list(entry[:3])}})
    if not tensors:
        raise ValueError("Expected a tf.keras 2 node with at least one input. Received: []")
    return {"args": [tensors[0] if len(tensors) == 1 else tensors], "kwargs": kwargs}


class _NotReady(Exception):
    """A node reads a tensor that no processed node has made yet."""


def _is_ref(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and all(isinstance(i, int) for i in value[1:])
    )


Model = Functional  # ``Model(inputs, outputs)``: the seeds' name for a functional model
