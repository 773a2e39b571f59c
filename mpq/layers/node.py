"""Symbolic tensors and the nodes of the functional graph (Keras ``KerasTensor`` / ``Node``).

A :class:`SymbolicTensor` has a shape (``None`` for unknown sizes, e.g. the batch axis) and a
dtype, and no data. Calling a layer on one records a :class:`Node` (the layer, its call
arguments, its symbolic outputs); the outputs' shapes and dtypes come from running the layer
on the meta device (nothing computed, nothing allocated), once per stand-in size for the
unknown axes: an axis whose size follows the stand-in is reported as ``None``.
:class:`NodeMixin` gives every layer the seeds' node accessors (``input``, ``output``,
``get_input_at``, ...). Torch ops on symbolic tensors (``x + y``, ``torch.cat``, ``x[:, 0]``,
``x.reshape(...)``) are recorded as op layers through ``__torch_function__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from mpq._errors import MAX_SIZE
from mpq._errors import describe as _describe
from mpq.layers import building as _building
from mpq.layers import masking as _masking

if TYPE_CHECKING:
    from mpq.layers.base import Layer

__all__ = [
    "Node",
    "NodeMixin",
    "SymbolicTensor",
    "flatten",
    "is_symbolic_call",
    "map_structure",
    "symbolic_call",
]

# Sizes the unknown (None) axes take in the two meta-device runs of a symbolic call (as Keras'
# torch backend: two primes, so that a size computed from an unknown one differs between them).
STAND_IN_SIZES = (83, 89)

# False until a symbolic tensor is made: until then layer calls skip the structure scan.
SYMBOLIC_SEEN = False

# Makes the op layer that records a torch op (set by mpq.layers.functional, which defines it).
_OP_FACTORY: Callable[[Callable[..., Any], Any], Any] | None = None


def set_op_factory(factory: Callable[[Callable[..., Any], Any], Any]) -> None:
    """Install ``factory(fn, template) -> op layer`` used to record torch ops."""
    global _OP_FACTORY
    _OP_FACTORY = factory


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class SymbolicTensor:
    """A tensor's shape and dtype without data: what ``Input(...)`` and layer calls on symbolic
    inputs return (Keras ``KerasTensor``).

    Attributes: ``shape`` (tuple, ``None`` for unknown sizes), ``dtype`` (torch dtype), ``ndim``,
    ``name``, ``sparse``, ``node`` (the node that made it, None for a mask) and ``_keras_mask``
    (the symbolic mask, or None).

    >>> from mpq.layers import Input, Dense
    >>> y = Dense(3)(Input((5,)))
    >>> y.shape, y.dtype
    ((None, 3), torch.float32)
    """

    _mpq_symbolic = True  # duck-typed by mpq.layers.building.shape_of

    def __init__(
        self,
        shape: tuple[int | None, ...],
        dtype: torch.dtype,
        name: str | None = None,
        sparse: bool = False,
    ) -> None:
        global SYMBOLIC_SEEN
        SYMBOLIC_SEEN = True
        self.shape = tuple(shape)
        self.dtype = dtype
        self.name = name
        self.sparse = sparse
        self.node: Node | None = None
        self.tensor_index = 0
        self._keras_mask: SymbolicTensor | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None) -> Any:
        """``shape`` (or ``shape[dim]``; None for an unknown size), as ``Tensor.size``."""
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    @property
    def _keras_history(self) -> tuple[Any, int, int]:
        """``(layer, node_index, tensor_index)`` of the call that made this tensor."""
        node = self.node
        if node is None:
            raise self._no_history()
        return node.operation, node.index, self.tensor_index

    def _no_history(self) -> AttributeError:
        return AttributeError(
            f"Expected a symbolic tensor made by a layer call. Received: {self!r}, which has no "
            "history (a mask)"
        )

    def meta(self, fill: int) -> torch.Tensor:
        """A meta tensor (no data) of this shape, ``fill`` standing in for unknown sizes."""
        dims = tuple(fill if d is None else d for d in self.shape)
        t = torch.empty(dims, dtype=self.dtype, device="meta")
        if self._keras_mask is not None:
            _masking.set_mask(t, self._keras_mask.meta(fill))
        return t

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"<SymbolicTensor shape={self.shape}, dtype={dtype_name(self.dtype)}{name}>"

    # ------------------------------------------------------------------ no values
    def _no_value(self, what: str) -> TypeError:
        return TypeError(
            f"Expected a tensor with values for {what}. Received: {self!r}, a symbolic tensor "
            "(shape and dtype only): it has values only when the model is called on data"
        )

    def __bool__(self) -> bool:
        raise self._no_value("a truth test")

    def __len__(self) -> int:
        raise self._no_value("len()")

    def __iter__(self) -> Iterator[Any]:
        raise self._no_value("iteration")

    def __index__(self) -> int:
        raise self._no_value("use as an index")

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError(
            "Expected an out-of-place op on a symbolic tensor: in-place writes cannot be "
            f"recorded in a functional graph. Received: item assignment on {self!r}"
        )

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> Any:
        return trace_op(torch.Tensor.__eq__, (self, other), {})

    def __ne__(self, other: object) -> Any:
        return trace_op(torch.Tensor.__ne__, (self, other), {})

    # ------------------------------------------------------------------ tracing
    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return trace_op(func, tuple(args), dict(kwargs or {}))

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not attributes: torch.Tensor methods become traced ops.
        # Private and dunder names are not ops (copy, pickle and hasattr probe those).
        if name == "_keras_history":  # the property raised (Python then tries __getattr__)
            raise self._no_history()
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(torch.Tensor, name, None)
        if method is None or not callable(method):
            raise AttributeError(
                f"Expected a torch.Tensor method that can be traced on a symbolic tensor. "
                f"Received: attribute {name!r} on {self!r}"
            )
        if name.endswith("_") and not name.endswith("__"):
            raise TypeError(
                "Expected an out-of-place op on a symbolic tensor: in-place ops cannot be "
                f"recorded in a functional graph. Received: {name!r} on {self!r}"
            )
        if name in ("item", "tolist", "numpy", "cpu", "cuda", "backward", "data_ptr"):
            raise self._no_value(f"Tensor.{name}()")

        def traced(*args: Any, **kwargs: Any) -> Any:
            return trace_op(method, (self, *args), kwargs)

        return traced


def _binary(name: str) -> Callable[..., Any]:
    method = getattr(torch.Tensor, name)

    def op(self: SymbolicTensor, *args: Any) -> Any:
        return trace_op(method, (self, *args), {})

    op.__name__ = name
    return op


# The Python operators a symbolic tensor records as graph ops (`functional.OPS` saves them).
OPERATORS: tuple[str, ...] = (
    "__add__",
    "__radd__",
    "__sub__",
    "__rsub__",
    "__mul__",
    "__rmul__",
    "__truediv__",
    "__rtruediv__",
    "__floordiv__",
    "__rfloordiv__",
    "__mod__",
    "__pow__",
    "__rpow__",
    "__matmul__",
    "__rmatmul__",
    "__neg__",
    "__pos__",
    "__abs__",
    "__invert__",
    "__and__",
    "__or__",
    "__xor__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__getitem__",
)

for _name in OPERATORS:
    setattr(SymbolicTensor, _name, _binary(_name))


# ---------------------------------------------------------------------- structures
def flatten(structure: Any) -> list[Any]:
    """Leaves of nested lists / tuples / dicts (dicts in key order), depth first."""
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in flatten(item)]
    if isinstance(structure, dict):
        return [leaf for key in structure for leaf in flatten(structure[key])]
    return [structure]


def map_structure(fn: Callable[[Any], Any], structure: Any) -> Any:
    """``structure`` with every leaf replaced by ``fn(leaf)`` (lists, tuples, dicts kept)."""
    if isinstance(structure, (list, tuple)):
        mapped = [map_structure(fn, item) for item in structure]
        return mapped if isinstance(structure, list) else type(structure)(mapped)
    if isinstance(structure, dict):
        return {key: map_structure(fn, value) for key, value in structure.items()}
    return fn(structure)


def symbolic_inputs(args: Any, kwargs: Any) -> list[SymbolicTensor]:
    return [x for x in flatten([args, kwargs]) if isinstance(x, SymbolicTensor)]


def is_symbolic_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a layer call has a symbolic tensor among its arguments (cheap when none exists)."""
    if not SYMBOLIC_SEEN:
        return False
    if not kwargs and len(args) == 1 and type(args[0]) is torch.Tensor:
        return False
    return any(isinstance(x, SymbolicTensor) for x in flatten([args, kwargs]))


# ---------------------------------------------------------------------- nodes
class Node:
    """One call of a layer on symbolic tensors (Keras ``Node``): ``operation`` (the layer),
    ``call_args`` / ``call_kwargs`` as given, ``input_tensors`` (the symbolic tensors among
    them), ``outputs`` (structure) and ``output_tensors`` (flat)."""

    def __init__(
        self,
        operation: Layer,
        call_args: tuple[Any, ...] = (),
        call_kwargs: dict[str, Any] | None = None,
        outputs: Any = None,
    ) -> None:
        self.operation = operation
        self.call_args = call_args
        self.call_kwargs = dict(call_kwargs or {})
        self.input_tensors: list[SymbolicTensor] = symbolic_inputs(call_args, self.call_kwargs)
        self.outputs = outputs
        self.output_tensors: list[SymbolicTensor] = [
            t for t in flatten(outputs) if isinstance(t, SymbolicTensor)
        ]
        inbound = operation.__dict__.setdefault("_inbound_nodes", [])
        self.index = len(inbound)
        inbound.append(self)
        for i, t in enumerate(self.output_tensors):
            t.node = self
            t.tensor_index = i
        for parent in {id(n): n for n in self.parent_nodes}.values():
            parent.operation.__dict__.setdefault("_outbound_nodes", []).append(self)

    @property
    def is_input(self) -> bool:
        """True for the node of an ``InputLayer`` (no inputs)."""
        return not self.input_tensors

    @property
    def parent_nodes(self) -> list[Node]:
        return [t.node for t in self.input_tensors if t.node is not None]

    @property
    def inbound_layers(self) -> Any:
        layers = [n.operation for n in self.parent_nodes]
        return layers[0] if len(layers) == 1 else layers

    @property
    def input_shapes(self) -> Any:
        shapes = [t.shape for t in self.input_tensors]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shapes(self) -> Any:
        shapes = [t.shape for t in self.output_tensors]
        return shapes[0] if len(shapes) == 1 else shapes

    def __repr__(self) -> str:
        return f"<Node {self.operation.name}[{self.index}] -> {self.output_shapes}>"


def _merge_spec(a: Any, b: Any, layer: Any) -> Any:
    """The symbolic output for meta outputs ``a`` and ``b`` of the two stand-in runs."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.ndim != b.ndim:
            raise ValueError(
                f"Expected layer {layer.name!r} to give outputs of one rank whatever the "
                "unknown sizes of its symbolic inputs. Received: output shapes "
                f"{tuple(a.shape)} and {tuple(b.shape)} for two stand-in sizes"
            )
        shape = tuple(x if x == y else None for x, y in zip(a.shape, b.shape, strict=True))
        if any(d is not None and d > MAX_SIZE for d in shape):
            # A graph from a file must not make the first call allocate without bound.
            raise ValueError(
                f"Expected output sizes of at most {MAX_SIZE} from layer {layer.name!r}. "
                f"Received: output shape {shape}"
            )
        out = SymbolicTensor(shape, a.dtype, sparse=a.layout != torch.strided)
        mask_a, mask_b = _masking.get_mask(a), _masking.get_mask(b)
        if isinstance(mask_a, torch.Tensor) and isinstance(mask_b, torch.Tensor):
            out._keras_mask = _merge_spec(mask_a, mask_b, layer)
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        merged = [_merge_spec(x, y, layer) for x, y in zip(a, b, strict=True)]
        return merged if isinstance(a, list) else type(a)(merged)
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return {k: _merge_spec(a[k], b[k], layer) for k in a}
    if a is None and b is None:
        return None
    raise TypeError(
        f"Expected layer {layer.name!r} to return tensors (or lists, tuples, dicts of them, or "
        f"None) on symbolic inputs. Received: {_describe(a)}"
    )


def _meta_structure(structure: Any, fill: int) -> Any:
    return map_structure(
        lambda x: x.meta(fill) if isinstance(x, SymbolicTensor) else x,
        structure,
    )


def symbolic_call(layer: Layer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call ``layer`` on arguments holding symbolic tensors: build it if needed (unknown sizes
    given as None), infer the outputs on the meta device, record a :class:`Node`."""
    if not layer.built:
        _building.build_on_call(layer, args, kwargs)  # shape_of reads symbolic shapes
    runs = []
    for fill in STAND_IN_SIZES:
        margs, mkwargs = _meta_structure((args, kwargs), fill)
        try:
            runs.append(layer.compute_output_spec(*margs, **mkwargs))
        except (NotImplementedError, RuntimeError) as e:
            raise RuntimeError(
                f"Expected layer {layer.name!r} ({type(layer).__name__}) to run on the meta "
                "device: a call on symbolic tensors infers shapes and dtypes there, without "
                "data. Received: a call that failed with "
                f"{type(e).__name__}: {str(e)[:500]}"
            ) from e
    outputs = _merge_spec(runs[0], runs[1], layer)
    Node(layer, args, kwargs, outputs)
    return outputs


def trace_op(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Record ``func(*args, **kwargs)`` (a torch function or Tensor method with symbolic tensors
    among its arguments) as an op layer and return its symbolic output."""
    if _OP_FACTORY is None:
        raise RuntimeError("Expected mpq.layers.functional to be imported to trace torch ops.")
    inputs = list({id(t): t for t in symbolic_inputs(args, kwargs)}.values())  # `x + x`: once
    slots = {id(t): i for i, t in enumerate(inputs)}
    template = map_structure(
        lambda x: _Slot(slots[id(x)]) if isinstance(x, SymbolicTensor) else x, (args, kwargs)
    )
    op = _OP_FACTORY(func, template)
    return op(*inputs)


class _Slot:
    """Where the ``index``-th symbolic input goes in a traced op's arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<input {self.index}>"


Slot = _Slot


def fill_template(template: Any, inputs: tuple[Any, ...]) -> Any:
    return map_structure(lambda x: inputs[x.index] if isinstance(x, _Slot) else x, template)


# ---------------------------------------------------------------------- layer accessors
_NODE_ATTRIBUTES = frozenset(
    {"input", "output", "input_shape", "output_shape", "input_mask", "output_mask"}
)


def _values(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def _masks(tensors: Any) -> Any:
    if isinstance(tensors, list):
        return [getattr(t, "_keras_mask", None) for t in tensors]
    return getattr(tensors, "_keras_mask", None)


class NodeMixin:
    """The seeds' node accessors for ``Layer`` (tf.keras 2 / TF1 Keras semantics): ``input``,
    ``output``, ``input_shape``, ``output_shape``, masks, ``get_*_at(node_index)``,
    ``inbound_nodes`` / ``outbound_nodes`` and ``symbolic_call``."""

    __dict__: dict[str, Any]

    if TYPE_CHECKING:

        @property
        def name(self) -> str: ...

    @property
    def inbound_nodes(self) -> list[Node]:
        """Nodes made by calling this layer on symbolic tensors, in call order."""
        return list(self.__dict__.get("_inbound_nodes", ()))

    @property
    def outbound_nodes(self) -> list[Node]:
        """Nodes of the layers called on this layer's symbolic outputs."""
        return list(self.__dict__.get("_outbound_nodes", ()))

    def symbolic_call(self, *args: Any, **kwargs: Any) -> Any:
        """Call on symbolic tensors: build if needed, infer outputs on the meta device, record a
        node (what ``layer(x)`` does when ``x`` is symbolic)."""
        return symbolic_call(self, args, kwargs)  # type: ignore[arg-type]

    def _node_at(self, index: int, attribute: str) -> Node:
        nodes = self.__dict__.get("_inbound_nodes", ())
        if not nodes:
            raise AttributeError(
                f"Expected layer {self.name!r} to have been called on symbolic tensors "
                f"(Input(...)) to have a defined {attribute}. Received: a layer that has "
                "never been called in a functional graph (0 inbound nodes)"
            )
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(nodes):
            raise ValueError(
                f"Expected a node index in [0, {len(nodes)}) to get {attribute} of layer "
                f"{self.name!r}. Received: node_index={_describe(index)}"
            )
        return nodes[index]  # type: ignore[no-any-return]

    def _single_node(self, attribute: str, getter: str) -> Node:
        node = self._node_at(0, attribute)
        count = len(self.__dict__["_inbound_nodes"])
        if count > 1:
            raise AttributeError(
                f"Layer {self.name!r} has multiple inbound nodes, hence the notion of "
                f'"layer {attribute}" is ill-defined. Use `{getter}(node_index)` instead. '
                f"Expected a layer called once. Received: {count} inbound nodes"
            )
        return node

    def _unique_shape(self, attribute: str, getter: str, which: str) -> Any:
        nodes = self.__dict__.get("_inbound_nodes", ())
        if not nodes:
            raise AttributeError(
                f'The layer "{self.name}" has never been called and thus has no defined '
                f"{attribute}. Expected a layer called on symbolic tensors (Input(...)). "
                "Received: 0 inbound nodes"
            )
        shapes = [getattr(n, which) for n in nodes]
        if any(s != shapes[0] for s in shapes):
            raise AttributeError(
                f'The layer "{self.name}" has multiple inbound nodes with different '
                f'{attribute}s. Hence the notion of "{attribute}" is ill-defined for the '
                f"layer. Use `{getter}(node_index)` instead. Received: {attribute}s {shapes}"
            )
        return shapes[0]

    @property
    def input(self) -> Any:
        """The symbolic input(s) of the layer's only call (AttributeError if never called in a
        graph, or called at several nodes: use ``get_input_at``)."""
        return _values(self._single_node("input", "get_input_at").input_tensors)

    @property
    def output(self) -> Any:
        """The symbolic output(s) of the layer's only call (see ``input``)."""
        return _values(self._single_node("output", "get_output_at").output_tensors)

    @property
    def input_shape(self) -> Any:
        """Input shape(s); AttributeError if never called, or called with different shapes."""
        return self._unique_shape("input shape", "get_input_shape_at", "input_shapes")

    @property
    def output_shape(self) -> Any:
        """Output shape(s); AttributeError if never called, or called with different shapes."""
        return self._unique_shape("output shape", "get_output_shape_at", "output_shapes")

    @property
    def input_mask(self) -> Any:
        """The mask(s) of ``input`` (None where a tensor has none)."""
        return _masks(self.input)

    @property
    def output_mask(self) -> Any:
        return _masks(self.output)

    def get_input_at(self, node_index: int) -> Any:
        return _values(self._node_at(node_index, "input").input_tensors)

    def get_output_at(self, node_index: int) -> Any:
        return _values(self._node_at(node_index, "output").output_tensors)

    def get_input_shape_at(self, node_index: int) -> Any:
        return self._node_at(node_index, "input shape").input_shapes

    def get_output_shape_at(self, node_index: int) -> Any:
        return self._node_at(node_index, "output shape").output_shapes

    def get_input_mask_at(self, node_index: int) -> Any:
        return _masks(self.get_input_at(node_index))

    def get_output_mask_at(self, node_index: int) -> Any:
        return _masks(self.get_output_at(node_index))


def node_attribute_error(layer: Any, name: str) -> AttributeError | None:
    """The error a node accessor raised (``__getattr__`` runs after a property raises
    AttributeError, and would otherwise replace its message)."""
    if name not in _NODE_ATTRIBUTES:
        return None
    try:
        getattr(NodeMixin, name).fget(layer)
    except AttributeError as e:
        return e
    return None
