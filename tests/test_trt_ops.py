"""TensorRT ONNX-operator check: the table as data, and graphs TensorRT would accept or refuse."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from soundloc.deploy.trt_ops import _RULES, check_tensorrt_compat, load_table, operators_used, opset_range


def _model(nodes, inputs, outputs, inits=(), opset=18) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    domains = sorted({n.domain for n in nodes} - {"", "ai.onnx"})  # a custom op's domain is imported too
    imports = [h.make_opsetid("", opset)] + [h.make_opsetid(d, 1) for d in domains]
    return _with_output_shapes(h.make_model(graph, opset_imports=imports))


def _with_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Outputs written without a shape get the one shape inference finds: valid ONNX (which
    check_tensorrt_compat's onnx.checker step demands) has a shape on every graph output."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi.type.tensor_type for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    for out in model.graph.output:
        found = known.get(out.name)
        if not out.type.tensor_type.HasField("shape") and found is not None and found.HasField("shape"):
            out.type.tensor_type.shape.CopyFrom(found.shape)
    return model


def _vi(name, elem=T.FLOAT, shape=("B", 4, 8)):
    return h.make_tensor_value_info(name, elem, shape)


def _axes(name="axes", values=(2,)):
    return h.make_tensor(name, T.INT64, [len(values)], list(values))


def test_table_keeps_its_source_and_every_operator():
    table = load_table()
    assert table["source"]["commit"].startswith("96e781103cfc")
    assert "Apache-2.0" in table["source"]["licence"]
    ops = table["operators"]
    assert len(ops) == 196
    assert not ops["STFT"]["supported"] and not ops["DFT"]["supported"]
    assert ops["Conv"]["supported"] and ops["Conv"]["types"] == ["FP32", "FP16", "BF16"]
    assert "INT64" in ops["ConstantOfShape"]["types"]  # the source's 'INF64' typo, read as INT64
    assert "`axes` must be an initializer" in ops["Slice"]["restrictions"]
    assert opset_range() == (9, 20)


def test_every_checked_rule_is_implemented_and_names_real_operators():
    checked = {k: v for k, v in load_table()["checked_restrictions"].items() if not k.startswith("_")}
    assert set(checked) == set(_RULES)
    ops = load_table()["operators"]
    for rule, spec in checked.items():
        assert all(op in ops and ops[op]["supported"] for op in spec["ops"]), rule


def test_supported_graph_has_no_problems():
    nodes = [h.make_node("Relu", ["x"], ["r"]),
             h.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=1),
             h.make_node("Slice", ["r", "st", "en", "axes"], ["y"])]
    inits = [_axes(), h.make_tensor("st", T.INT64, [1], [0]), h.make_tensor("en", T.INT64, [1], [2])]
    model = _model(nodes, [_vi("x")], [_vi("y", shape=None), _vi("m", shape=None)], inits)
    assert check_tensorrt_compat(model) == []


@pytest.mark.parametrize("op, inputs, extra, out_shape", [
    ("STFT", ["x", "step"], [h.make_tensor("step", T.INT64, [], [4])], ("B", "F", "K", 2)),
    ("DFT", ["x"], [], None),
    ("Unique", ["x"], [], None),
])
def test_unsupported_operator_is_flagged(op, inputs, extra, out_shape):
    model = _model([h.make_node(op, inputs, ["y"])], [_vi("x")], [_vi("y", shape=out_shape)], extra)
    problems = check_tensorrt_compat(model)
    assert len(problems) == 1 and f"operator {op} is not supported" in problems[0]


def test_slice_axes_computed_in_the_graph_is_flagged_but_constant_node_is_not():
    inits = [h.make_tensor("st", T.INT64, [1], [0]), h.make_tensor("en", T.INT64, [1], [1])]
    computed = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Slice", ["s", "st", "en", "ax"], ["y"], name="sl")]
    model = _model(computed, [_vi("x"), _vi("ax", T.INT64, [1])], [_vi("y", T.INT64, None)], inits)
    problems = check_tensorrt_compat(model)
    assert problems == ["node 'sl' (Slice): input 'ax' (axes) must be an initializer or Constant, "
                        "not computed in the graph"]
    constant = [h.make_node("Constant", [], ["ax"], value=_axes("v", (0,))), *computed]
    model = _model(constant, [_vi("x")], [_vi("y", T.INT64, None)], inits)
    assert check_tensorrt_compat(model) == []


@pytest.mark.parametrize("opset, ok", [(8, False), (9, True), (18, True), (20, True), (21, False)])
def test_opset_range(opset, ok):
    model = _model([h.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")], opset=opset)
    problems = check_tensorrt_compat(model)
    assert (problems == []) == ok
    if not ok:
        assert f"opset {opset} is outside" in problems[0]


def test_unsupported_type_for_an_operator_is_flagged_through_shape_inference():
    # Sin takes floats only; its INT32 input type is known only after shape inference of Cast
    nodes = [h.make_node("Cast", ["x"], ["i"], to=T.INT32), h.make_node("Sin", ["i"], ["y"], name="sin")]
    problems = check_tensorrt_compat(_model(nodes, [_vi("x")], [_vi("y", T.INT32, None)]))
    # not valid ONNX either (Sin has no int schema): the checker says so first, then the table
    assert len(problems) == 2 and problems[0].startswith("not valid ONNX (onnx.checker)") and "Sin" in problems[0]
    assert "node 'sin' (Sin): INT32 data" in problems[1]


@pytest.mark.parametrize("node, fragment", [
    (h.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3]), "1-D pooling"),
    (h.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2]), "dilations [2, 2]"),
    (h.make_node("Resize", ["x", "", "sc"], ["y"], mode="cubic"), "mode='cubic'"),
    (h.make_node("Custom", ["x"], ["y"], domain="com.example"), "needs a TensorRT plugin"),
    (h.make_node("TopK", ["x", "k"], ["y", "idx"], sorted=0), "sorted must be 1"),
])
def test_restrictions_are_checked(node, fragment):
    inits = [h.make_tensor("sc", T.FLOAT, [4], [1, 1, 2, 2]), h.make_tensor("k", T.INT64, [1], [2])]
    x = _vi("x", shape=(1, 3, 8, 8) if node.op_type != "MaxPool" else (1, 3, 8))
    opset = 19 if node.op_type == "AveragePool" else 18  # AveragePool has dilations from opset 19
    y = _vi("y", shape=("B", 3, 8, 8) if node.domain else None)  # no schema to infer a custom op's shape
    problems = check_tensorrt_compat(_model([node], [x], [y], inits, opset))
    assert len(problems) == 1 and fragment in problems[0]
    ok = h.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2])
    assert check_tensorrt_compat(_model([ok], [_vi("x", shape=(1, 3, 8, 8))], [_vi("y", shape=None)])) == []


def test_problems_inside_an_if_branch_are_found():
    then = h.make_graph([h.make_node("DFT", ["x"], ["t"])], "then", [], [_vi("t", shape=None)])
    other = h.make_graph([h.make_node("Relu", ["x"], ["e"])], "else", [], [_vi("e", shape=None)])
    node = h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if0")
    model = _model([node], [_vi("x"), _vi("c", T.BOOL, [])], [_vi("y", shape=None)])
    problems = check_tensorrt_compat(model)
    assert len(problems) == 1 and "node 'if0/then_branch/DFT' (DFT)" in problems[0]
    assert operators_used(model) == {"If", "DFT", "Relu"}


def test_torch_exported_model_passes():
    torch = pytest.importorskip("torch", reason="torch not installed (the train extra)")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (torch's dynamo exporter needs it)")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(3, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm3d(8)  # after the ReLU so the exporter cannot fold it

        def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
            v = self.bn(torch.relu(self.conv(video)))  # (B, 8, T, H, W)
            z = v.mean(dim=(3, 4))  # (B, 8, T)
            return torch.einsum("bct,btc->bt", z, audio)

    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.onnx.export(
        Net().eval(), (torch.randn(2, 3, 4, 8, 8), torch.randn(2, 4, 8)), dynamo=True,
        external_data=False, dynamic_shapes={"video": {0: batch}, "audio": {0: batch}}, verbose=False)
    model = program.model_proto
    assert {"Conv", "BatchNormalization", "Relu", "ReduceMean", "Einsum"} <= operators_used(model)
    assert check_tensorrt_compat(model) == []
