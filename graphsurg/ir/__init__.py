"""graphsurg's IR: a façade over a networkx MultiDiGraph of ops and values."""

from graphsurg.ir import dtypes
from graphsurg.ir.graph import Graph, GraphError, all_graphs
from graphsurg.ir.model import Model
from graphsurg.ir.nodes import Attr, Op, Value
from graphsurg.ir.tensor import (
    ArrayTensor,
    DeferredTensor,
    DetachedTensor,
    ExternalLocation,
    ExternalTensor,
    MappedTensor,
    SourceFile,
    Tensor,
)

__all__ = [
    "ArrayTensor", "Attr", "DeferredTensor", "DetachedTensor", "ExternalLocation", "ExternalTensor", "Graph",
    "GraphError", "MappedTensor", "Model", "Op", "SourceFile", "Tensor", "Value", "all_graphs", "dtypes",
]
