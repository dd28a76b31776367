"""`verify()` catches each broken invariant. The breakages go around the façade (as a buggy pass
editing `graph.nx` or an op's fields directly would); the façade itself never produces them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from graphsurg import serde
from graphsurg.ir import Graph, GraphError, Value, dtypes
from graphsurg.ir.graph import CAPTURE

F32 = dtypes.FLOAT


def small() -> Graph:
    g = Graph("g")
    x = g.add_input("x", F32, (2,))
    w = g.add_initializer("w", np.ones(2, np.float32))
    first = g.add_op("Add", [x, w], ["a"], name="first")
    second = g.add_op("Relu", first.outputs, ["b"], name="second")
    g.outputs = [second.outputs[0]]
    g.verify()
    return g


def with_body() -> Graph:
    then = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Abs", ["a"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("Exp", ["x"], ["a"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = serde.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    model.graph.verify()
    return model.graph


def two_producers(g):
    g.nx.add_edge(g.find_op("first"), g.value("b"), key=0)


def initializer_with_producer(g):
    g.nx.add_edge(g.find_op("second"), g.value("w"), key=1)


def input_with_producer(g):
    g.nx.add_edge(g.find_op("second"), g.value("x"), key=1)


def dangling_input(g):
    ghost = Graph("elsewhere").add_input("ghost", F32, (2,))
    second = g.find_op("second")
    g.nx.remove_edge(g.value("a"), second, key=0)
    second.inputs = (ghost,)


def cycle(g):
    first, b = g.find_op("first"), g.value("b")
    g.nx.add_edge(b, first, key=2)
    first.inputs = (*first.inputs, b)


def edges_disagree(g):
    g.nx.remove_edge(g.value("x"), g.find_op("first"), key=0)


def output_not_connected(g):
    second = g.find_op("second")
    extra = g.add_value("extra")
    g.inputs.append(extra)  # so that the value itself is legal
    second.outputs = (*second.outputs, extra)


def graph_output_undefined(g):
    g.outputs.append(Value("nowhere", F32, (2,)))


def value_of_another_graph(g):
    g.value("a").graph = Graph("other")


def orphan_value(g):
    g.add_value("orphan", F32, (2,))


def op_of_another_graph(g):
    g.find_op("second").graph = Graph("other")


BROKEN = {
    "two producers": (two_producers, "2 producers"),
    "initializer with a producer": (initializer_with_producer, "initializer 'w' also has a producer"),
    "graph input with a producer": (input_with_producer, "graph input 'x' also has a producer"),
    "dangling input": (dangling_input, "dangling input"),
    "cycle": (cycle, "cycle"),
    "edges disagree with inputs": (edges_disagree, "disagree"),
    "output not connected": (output_not_connected, "not connected"),
    "graph output undefined": (graph_output_undefined, "graph output 'nowhere' is not defined"),
    "value of another graph": (value_of_another_graph, "belongs to another graph"),
    "value without a source": (orphan_value, "no producer and is neither an input nor an initializer"),
    "op of another graph": (op_of_another_graph, "belongs to another graph"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_verify_catches(name):
    g = small()
    breakage, message = BROKEN[name]
    breakage(g)
    with pytest.raises(GraphError, match=message):
        g.verify()


def test_verify_catches_a_missing_capture_edge():
    g = with_body()
    g.nx.remove_edge(g.value("a"), g.find_op("if"), key=CAPTURE)
    with pytest.raises(GraphError, match="capture edge is missing"):
        g.verify()


def test_verify_catches_a_subgraph_with_the_wrong_parent():
    g = with_body()
    g.find_op("if").subgraphs()[0].parent = Graph("stranger")
    with pytest.raises(GraphError, match="wrong parent"):
        g.verify()


def test_verify_descends_into_bodies():
    g = with_body()
    body = g.find_op("if").subgraphs()[1]
    body.add_value("orphan_in_body", F32, (2,))
    with pytest.raises(GraphError, match="orphan_in_body"):
        g.verify()


def test_load_refuses_what_verify_refuses():
    """A file with a cycle is bad input, not a graph to work on."""
    from graphsurg.errors import BadInputError

    graph = helper.make_graph(
        [helper.make_node("Neg", ["b"], ["a"]), helper.make_node("Abs", ["a"], ["b"])], "cyclic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    with pytest.raises(BadInputError, match="cycle"):
        serde.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
