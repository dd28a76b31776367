"""The IR's mutation API, checked by identity: the ops and values a test holds are the ones the
graph holds after each edit (names are only what a save writes)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphsurg import serde
from graphsurg.ir import Graph, GraphError, Model, all_graphs, dtypes

F32 = dtypes.FLOAT


@pytest.fixture
def chain():
    """x -> MatMul(w) -> h -> Relu -> y (output), with h also read by an Add into z (output)."""
    g = Graph("chain")
    x = g.add_input("x", F32, ("n", 3))
    w = g.add_initializer("w", np.arange(12, dtype=np.float32).reshape(3, 4))
    matmul = g.add_op("MatMul", [x, w], ["h"], name="matmul")
    h = matmul.outputs[0]
    relu = g.add_op("Relu", [h], ["y"], name="relu")
    add = g.add_op("Add", [h, h], ["z"], name="add")
    g.outputs = [relu.outputs[0], add.outputs[0]]
    for value in g.outputs:
        value.dtype, value.shape = F32, ("n", 4)
    g.verify()
    return g


def model_of(graph: Graph) -> Model:
    return Model(graph, ir_version=10, opset_imports={"": 17})


def feeds() -> dict:
    return {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}


def test_add_op_connects_values_by_identity(chain):
    g = chain
    matmul, relu, add = (g.find_op(n) for n in ("matmul", "relu", "add"))
    h = matmul.outputs[0]
    assert g.producer(h) is matmul
    assert g.consumers(h) == [(relu, 0), (add, 0), (add, 1)]  # Add(h, h): two edges, one value
    assert g.consumers(g.value("w")) == [(matmul, 1)]
    assert matmul.inputs == (g.value("x"), g.value("w"))
    assert g.ops == [matmul, relu, add]


def test_add_op_outputs_get_fresh_names(chain):
    g = chain
    first = g.add_op("Neg", [g.value("x")])
    second = g.add_op("Neg", [g.value("x")])
    assert first.outputs[0] is not second.outputs[0]
    assert first.outputs[0].name != second.outputs[0].name
    taken = g.add_op("Neg", [g.value("x")], ["h"])  # a name in use gets a suffix
    assert taken.outputs[0].name != "h" and g.value("h") is g.find_op("matmul").outputs[0]


def test_remove_op_refuses_while_outputs_are_used(chain):
    g = chain
    matmul = g.find_op("matmul")
    with pytest.raises(GraphError, match="still used"):
        g.remove_op(matmul)
    assert matmul in g.ops and matmul.graph is g
    g.verify()


def test_remove_op_after_rewiring(chain):
    g = chain
    relu, add = g.find_op("relu"), g.find_op("add")
    z = add.outputs[0]
    y = relu.outputs[0]
    g.outputs = [y]
    g.remove_op(add)
    assert add not in g.ops and add.graph is None
    assert g.lookup("z") is None and z not in g.nx
    assert g.consumers(g.value("h")) == [(relu, 0)]
    g.verify()


def test_replace_all_uses_moves_consumers_and_outputs(chain, run_ort, same_outputs):
    g = chain
    before = serde.to_bytes(model_of(g))
    h, relu, add = g.value("h"), g.find_op("relu"), g.find_op("add")
    same = g.add_op("Identity", [h], ["h_copy"]).outputs[0]
    g.replace_all_uses(h, same)
    assert relu.inputs == (same,) and add.inputs == (same, same)
    assert [op for op, _ in g.consumers(h)] == [g.producer(same)]
    g.verify()
    assert same_outputs(run_ort(serde.to_bytes(model_of(g)), feeds()), run_ort(before, feeds()))
    y = relu.outputs[0]
    y2 = g.add_op("Identity", [y], ["y2"]).outputs[0]
    g.replace_all_uses(y, y2)
    assert g.outputs[0] is y2


def test_replace_all_uses_refuses_values_read_by_a_subgraph_without_changing_anything():
    model = serde.load(_if_model())
    g = model.graph
    a = g.value("a")
    consumers = g.consumers(a)
    replacement = g.add_op("Identity", [a]).outputs[0]
    with pytest.raises(GraphError, match="subgraph"):
        g.replace_all_uses(a, replacement)
    assert g.consumers(a) == [*consumers, (g.producer(replacement), 0)]
    g.verify()


def test_insert_after_a_graph_output_keeps_the_output_name(chain, run_ort):
    g = chain
    relu = g.find_op("relu")
    y = relu.outputs[0]
    inserted = g.insert_after(y, "Neg", name="neg")
    new = inserted.outputs[0]
    assert g.outputs[0] is new and new.name == "y"
    assert inserted.inputs == (y,) and y.name != "y" and g.producer(y) is relu
    assert (new.dtype, new.shape) == (F32, ("n", 4))
    g.verify()
    saved = onnx.load_from_string(serde.to_bytes(model_of(g)))
    assert [o.name for o in saved.graph.output] == ["y", "z"]
    onnx.checker.check_model(saved, full_check=True)
    x = feeds()["x"]
    expected = -np.maximum(x @ np.arange(12, dtype=np.float32).reshape(3, 4), 0)
    np.testing.assert_array_equal(run_ort(saved.SerializeToString(), feeds())[0], expected)


def test_insert_after_moves_every_consumer(chain):
    g = chain
    h, relu, add = g.value("h"), g.find_op("relu"), g.find_op("add")
    inserted = g.insert_after(h, "Sigmoid")
    new = inserted.outputs[0]
    assert relu.inputs == (new,) and add.inputs == (new, new)
    assert g.consumers(h) == [(inserted, 0)]
    assert h.name == "h"  # not an output: keeps its name
    order = g.topological_order()
    assert order.index(g.find_op("matmul")) < order.index(inserted) < order.index(relu)
    g.verify()


def test_initializers_add_replace_remove(chain):
    g = chain
    w = g.value("w")
    loaded = w.const.numpy()
    assert not loaded.flags.writeable
    with pytest.raises(ValueError):
        loaded[0, 0] = 1.0
    other = g.add_initializer("w", np.zeros(4, np.float32))  # name taken: a fresh one
    assert other is not w and other.name != "w" and g.initializers[other.name] is other
    g.set_const(w, np.ones((3, 4), np.float16))
    assert g.value("w") is w and g.consumers(w) == [(g.find_op("matmul"), 1)]
    assert (w.dtype, w.shape) == (dtypes.FLOAT16, (3, 4))
    np.testing.assert_array_equal(w.const.numpy(), np.ones((3, 4)))
    with pytest.raises(GraphError):
        g.set_const(g.value("h"), np.zeros(1))
    with pytest.raises(GraphError, match="still used"):
        g.remove_value(w)
    g.remove_value(other)
    assert other.name not in g.initializers and g.lookup(other.name) is None
    assert g.add_initializer(other.name, np.zeros(1, np.float32)).name == other.name  # the name is free again
    g.verify()


def _if_model() -> bytes:
    f = TensorProto.FLOAT
    then = helper.make_graph([helper.make_node("Add", ["a", "x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", f, [2])])
    other = helper.make_graph([helper.make_node("Sub", ["a", "x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", f, [2])])
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Abs", ["a"], ["b"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if")],
        "g", [helper.make_tensor_value_info("x", f, [2]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", f, [2]), helper.make_tensor_value_info("b", f, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "t_1")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_fresh_names_are_unique_across_subgraphs():
    model = serde.load(_if_model())
    g = model.graph
    then, other = g.find_op("if").subgraphs()
    everything = {v.name for sub in all_graphs(g) for v in sub.values()}
    everything |= {op.name for op in g.iter_all_ops() if op.name}
    assert g.fresh_name("t") not in everything  # "t" lives in the then-branch, "t_1" in the main graph
    assert then.fresh_name("x") not in everything  # "x" lives in the main graph
    made = [sub.fresh_name(base) for sub in (g, then, other, g) for base in ("t", "e", "a", "v", "")]
    assert len(set(made)) == len(made) and not set(made) & everything
    body = Graph("body", parent=g)
    assert body.fresh_name("y") not in everything | set(made)


def test_subgraph_must_be_built_on_its_parent(chain):
    g = chain
    stray = Graph("stray")
    stray.outputs = [stray.add_input("s", F32, (1,))]
    with pytest.raises(GraphError, match="parent"):
        g.add_op("If", [g.value("x")], 1, attrs={"then_branch": stray, "else_branch": stray})


def test_set_input_refuses_invisible_values_and_changes_nothing(chain):
    g = chain
    relu = g.find_op("relu")
    elsewhere = Graph("other").add_input("q", F32, (1,))
    with pytest.raises(GraphError, match="not visible"):
        g.set_input(relu, 0, elsewhere)
    assert relu.inputs == (g.value("h"),)
    g.verify()


def test_topological_order_is_stable(chain):
    g = chain
    assert g.topological_order() == g.ops  # built in dataflow order: insertion order
    late = g.add_op("Neg", [g.value("x")], ["early_branch"])  # independent of the rest: stays last
    assert g.topological_order()[-1] is late
    assert g.topological_order() == g.topological_order()
    consumer = g.add_op("Relu", [g.value("h")], ["late_reader"])
    order = g.topological_order()
    assert order.index(consumer) > order.index(g.find_op("matmul"))
    assert order == [*g.ops[:3], late, consumer]


def test_cached_order_follows_every_kind_of_edit(chain):
    """The order is cached until the graph changes: each edit below must be seen by the next call."""
    g = chain
    relu, matmul = g.find_op("relu"), g.find_op("matmul")
    assert g.topological_order() == g.ops  # cached now
    late = g.add_op("Neg", [g.value("x")], ["late"])
    assert g.topological_order()[-1] is late
    g.set_input(matmul, 0, late.outputs[0])  # matmul now reads an op inserted after it
    assert g.topological_order() == [late, matmul, relu, g.find_op("add")]
    g.set_input(matmul, 0, g.value("x"))
    assert g.topological_order()[-1] is late
    g.remove_op(late)
    assert late not in g.topological_order()
    g.nx.add_edge(relu.outputs[0], matmul, key=1)  # behind the façade (as verify's tests do): a cycle
    with pytest.raises(GraphError, match="cycle"):
        g.topological_order()


def test_callers_may_change_the_order_they_get(chain):
    order = chain.topological_order()
    order.reverse()
    assert chain.topological_order() == chain.ops


def test_load_leaves_the_collector_as_it_was():
    """Loading pauses the cyclic collector and moves the new objects to its oldest generation
    (gc.freeze + unfreeze), but never releases objects the program froze itself."""
    import gc

    data = serde.to_bytes(serde.load(_if_model()))
    frozen = [object() for _ in range(3)]
    gc.freeze()
    try:
        assert gc.isenabled()
        before = gc.get_freeze_count()
        serde.load(data)
        assert gc.isenabled() and gc.get_freeze_count() == before
    finally:
        gc.unfreeze()
    gc.disable()
    try:
        serde.load(data)
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()
    del frozen


def test_load_keeps_file_order_and_sorts_only_when_needed():
    nodes = [helper.make_node("Relu", ["a"], ["b"], name="second"), helper.make_node("Neg", ["x"], ["a"], name="first")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    model = serde.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [op.name for op in model.graph.topological_order()] == ["first", "second"]
    saved = onnx.load_from_string(serde.to_bytes(model))
    assert [n.name for n in saved.graph.node] == ["first", "second"]
    ordered = serde.load(saved)
    assert [op.name for op in ordered.graph.ops] == ["first", "second"]


def test_edits_inside_a_body_keep_capture_edges():
    model = serde.load(_if_model())
    g = model.graph
    if_op = g.find_op("if")
    then, _ = if_op.subgraphs()
    a, b, x = g.value("a"), g.value("b"), g.value("x")
    assert g.nx.has_edge(a, if_op, key="capture") and g.nx.has_edge(x, if_op, key="capture")
    reader = then.add_op("Mul", [b, b])  # the body now also reads b: captured
    assert g.nx.has_edge(b, if_op, key="capture")
    order = g.topological_order()
    assert order.index(g.producer(b)) < order.index(if_op)
    then.remove_op(reader)  # and no longer: the stale edge goes
    assert not g.nx.has_edge(b, if_op, key="capture")
    g.verify()
