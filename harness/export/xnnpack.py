"""Which nodes of a ``.tflite`` file LiteRT's XNNPACK delegate takes, and which fall back to the builtin kernels.

How it is read (ai-edge-litert 2.3): the interpreter built with the default op resolver (``OpResolverType.AUTO``)
applies XNNPACK when its tensors are allocated. Its node list (``Interpreter._get_ops_details()``) then holds the
model's own nodes, in order, followed by one ``DELEGATE`` node per partition XNNPACK took, each with that
partition's input and output tensors. A model node belongs to a partition when it lies between the partition's
inputs and its outputs: walking back from the outputs through the nodes that produce them, stopping at the
partition's inputs, visits exactly the partition's nodes. Every model node no partition visits runs on the
builtin kernels: it fell back. (The model nodes stay in the list after delegation, so the walk is needed; the
interpreter's execution plan, which would say it directly, is not exposed to Python.)

XNNPACK takes no bool tensors, so the ``SELECT_V2`` nodes of a file's ``reset`` input (and the reshape or split
of that input) always fall back; they are reported apart (``on_bools``), and ``check_fully_delegated`` allows them.

Example:
    >>> d = delegation("gru-static.tflite")                               # doctest: +SKIP
    >>> d.nodes, d.taken, d.partitions, d.fallen_back                     # doctest: +SKIP
    (12, 12, 1, ())
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class Delegation:
    """How XNNPACK took a model: ``nodes`` in the model, ``taken`` by ``partitions`` XNNPACK partitions;
    ``fallen_back``: the op names of the other nodes (in graph order), ``on_bools`` those of them that
    compute on bool tensors (a reset input's: XNNPACK has no bool type)."""

    nodes: int
    taken: int
    partitions: int
    fallen_back: tuple[str, ...]
    on_bools: tuple[str, ...]

    def summary(self) -> str:
        """One line: how many nodes XNNPACK took, in how many partitions, and which fell back."""
        line = f"XNNPACK takes {self.taken} of {self.nodes} nodes in {self.partitions} partition(s)"
        if self.fallen_back:
            line += f"; fallen back to the builtin kernels: {', '.join(self.fallen_back)}"
        return line


def delegation(path: str | os.PathLike) -> Delegation:
    """Load ``path`` in LiteRT's interpreter with its default delegates (XNNPACK on CPU) and count what XNNPACK took."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # as TFLiteRunner: TensorFlow's copy of the interpreter
        from tensorflow.lite.python.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path), num_threads=1, experimental_op_resolver_type=OpResolverType.AUTO)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # the only node list LiteRT's Python API has (see the module docstring)
    model = [op for op in ops if op["op_name"] != "DELEGATE"]
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    producer = {int(t): i for i, op in enumerate(model) for t in op["outputs"]}
    taken: set[int] = set()
    for partition in partitions:
        stop = {int(t) for t in partition["inputs"]}
        todo = [int(t) for t in partition["outputs"]]
        while todo:
            tensor = todo.pop()
            node = producer.get(tensor)
            if tensor in stop or node is None or node in taken:
                continue
            taken.add(node)
            todo.extend(int(t) for t in model[node]["inputs"] if t >= 0)
    rest = [op for i, op in enumerate(model) if i not in taken]
    bools = [op["op_name"] for op in rest if any(np.dtype(t) == np.bool_ for t in op["operand_types"])]
    return Delegation(len(model), len(taken), len(partitions), tuple(op["op_name"] for op in rest), tuple(bools))


def check_fully_delegated(path: str | os.PathLike) -> Delegation:
    """``delegation(path)``, or ``ValueError`` naming the nodes that fell back (other than those on bools)."""
    found = delegation(path)
    if len(found.fallen_back) > len(found.on_bools):
        raise ValueError(f"{path}: not every node runs on XNNPACK: {found.summary()}")
    return found
