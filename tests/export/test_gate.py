"""`export/gate.py`: the parity gate's search and its scoring of real ONNX files."""

from __future__ import annotations

import numpy as np
import pytest

from tumor_export.gate import Scored, search
from tumor_runtime.core.scoring import summarize

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def fake_trial(table: dict[frozenset, float], calls: list):
    def trial(keep: frozenset) -> Scored:
        calls.append(keep)
        return Scored(np.zeros((1, 4)), table.get(keep, 0.80))

    return trial


def test_search_keeps_int8_when_it_is_good_enough():
    calls = []
    best, kept, trials = search(fake_trial({frozenset(): 0.996}, calls), ["a", "b", "c"], 1.0, 0.005)
    assert kept == [] and best.f2 == 0.996 and calls == [frozenset()] and len(trials) == 1


def test_search_picks_the_best_layer_then_stops():
    table = {frozenset(): 0.90, frozenset("a"): 0.93, frozenset("b"): 0.999, frozenset("c"): 0.95}
    calls = []
    best, kept, trials = search(fake_trial(table, calls), ["a", "b", "c"], 1.0, 0.005)
    assert kept == ["b"] and best.f2 == 0.999
    assert calls == [frozenset(), frozenset("a"), frozenset("b"), frozenset("c")]  # every layer tried once
    assert [t["f2"] for t in trials] == [0.90, 0.93, 0.999, 0.95]


def test_search_goes_on_greedily_and_refuses_after_max_float():
    table = {
        frozenset(): 0.90,
        frozenset("a"): 0.92,
        frozenset("b"): 0.91,
        frozenset("ab"): 0.96,
        frozenset("ac"): 0.94,
    }
    calls = []
    best, kept, _ = search(fake_trial(table, calls), ["a", "b", "c"], 1.0, 0.005, max_float=2)
    assert kept == ["a", "b"] and best.f2 == 0.96  # still short: the caller refuses
    assert frozenset("bc") not in calls  # the second round builds on the first choice
    assert len(calls) == 1 + 3 + 2


def test_search_stops_when_no_candidates_are_left():
    best, kept, _ = search(fake_trial({}, []), ["a"], 1.0, 0.005, max_float=5)
    assert kept == ["a"] and best.f2 == 0.80


def test_gate_leaves_the_chosen_model_on_disk(tmp_path, monkeypatch):
    """quantize_with_gate: the file left behind is the chosen trial's, not the last one tried."""
    import onnx

    import tumor_export.gate as gate
    from tests.helpers.onnx_fakes import conv_model
    from tumor_export.calibration import ArrayReader
    from tumor_export.static_int8 import prepare_graph, quantizable_nodes

    prepare_graph(conv_model(tmp_path / "m.onnx"), tmp_path / "pre.onnx")
    nodes = quantizable_nodes(tmp_path / "pre.onnx")
    assert len(nodes) == 3
    wanted = nodes[1]  # not the last candidate: a missing re-quantization would leave the last one

    def float_nodes(path) -> set[str]:
        graph = onnx.load(str(path)).graph
        dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        return {n.name for n in graph.node if n.name in nodes and n.input[1] not in dequantized}

    def fake_score(path, inputs, labels, classes):
        return Scored(np.zeros((1, 4)), 1.0 if float_nodes(path) == {wanted} else 0.5)

    monkeypatch.setattr(gate, "score", fake_score)
    inputs = np.random.default_rng(0).standard_normal((16, 1, 32, 32)).astype(np.float32)
    best, kept, _ = gate.quantize_with_gate(
        tmp_path / "pre.onnx",
        tmp_path / "q.onnx",
        ArrayReader(inputs, "image"),
        Scored(np.zeros((1, 4)), 1.0),
        gate.Evaluation(inputs, np.zeros(16), CLASSES),
        gate.GateSettings(0.005, "minmax", "u8"),
        log=lambda m: None,
    )
    assert kept == [wanted] and best.f2 == 1.0
    assert float_nodes(tmp_path / "q.onnx") == {wanted}


def test_gate_score_and_agreement_on_a_real_onnx_file(tmp_path):
    from tests.helpers.onnx_fakes import tiny_model
    from tumor_export.gate import agreement, score
    from tumor_runtime.model.session import create_session

    model = tiny_model(tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(0, 1, (70, 1, 227, 227)).astype(np.float32)  # more than one batch of 64
    labels = np.random.default_rng(1).integers(0, 4, 70)
    result = score(model, x, labels, CLASSES)
    direct = create_session(model).run(["probabilities"], {"image": x})[0]
    np.testing.assert_allclose(result.probabilities, direct, atol=1e-6)
    assert result.f2 == summarize(labels, direct.argmax(1), CLASSES)["f2_macro"]
    assert result.summary["n_images"] == 70
    other = Scored(result.probabilities[:, ::-1].copy(), 0.0)
    assert agreement(result, result) == 1.0
    assert agreement(result, other) == pytest.approx(float((direct.argmax(1) == direct[:, ::-1].argmax(1)).mean()))


@pytest.mark.parametrize(
    "scores, expected_quantizations",
    [
        ({(): 1.0}, 1),  # good at once: one quantization, no search
        ({(): 0.5, ("c",): 1.0}, 4),  # the last candidate wins: the file on disk is already it
        ({(): 0.5, ("a",): 1.0}, 5),  # an earlier one wins: quantize it once more
    ],
)
def test_gate_requantizes_only_when_needed(monkeypatch, tmp_path, scores, expected_quantizations):
    import tumor_export.gate as gate

    calls, inputs, labels = [], np.zeros((2, 1, 4, 4), np.float32), np.array([0, 1])
    prepared = tmp_path / "p"

    def nodes(path):
        assert path == prepared
        return ["a", "b", "c"]

    def quantize(prep, out, reader, method, act, keep):
        assert prep == prepared and out == tmp_path / "q" and (method, act) == ("minmax", "u8")
        calls.append(tuple(keep))

    monkeypatch.setattr(gate, "quantizable_nodes", nodes)
    monkeypatch.setattr(gate, "describe_nodes", lambda path: {n: n for n in nodes(path)})
    monkeypatch.setattr(gate, "quantize_int8", quantize)

    def fake_score(path, got_inputs, got_labels, classes):
        assert got_inputs is inputs and got_labels is labels and classes == CLASSES
        return Scored(np.zeros((2, 4)), scores.get(calls[-1], 0.5))

    monkeypatch.setattr(gate, "score", fake_score)
    best, kept, _ = gate.quantize_with_gate(
        prepared,
        tmp_path / "q",
        None,
        Scored(np.zeros((2, 4)), 1.0),
        gate.Evaluation(inputs, labels, CLASSES),
        gate.GateSettings(0.005, "minmax", "u8"),
        log=lambda m: None,
    )
    assert len(calls) == expected_quantizations and calls[-1] == tuple(kept)


def test_gate_gives_up_after_three_layers_by_default(monkeypatch, tmp_path):
    import tumor_export.gate as gate

    monkeypatch.setattr(gate, "quantizable_nodes", lambda path: list("abcde"))
    monkeypatch.setattr(gate, "describe_nodes", lambda path: {n: f"layer {n}" for n in "abcde"})
    monkeypatch.setattr(gate, "quantize_int8", lambda *args: None)
    monkeypatch.setattr(gate, "score", lambda *args: Scored(np.zeros((1, 4)), 0.5))
    messages = []
    _, kept, _ = gate.quantize_with_gate(
        tmp_path / "p",
        tmp_path / "q",
        None,
        Scored(np.zeros((1, 4)), 1.0),
        gate.Evaluation(np.zeros(1), np.zeros(1), CLASSES),
        gate.GateSettings(0.005, "minmax", "u8"),
        log=messages.append,
    )
    assert len(kept) == 3 and len(messages) == 5 + 4 + 3  # every retry is announced, with its count
    assert messages[0].startswith(
        "Parity gate round 1 of at most 3 (int8 F2 more than 0.005 below FP32 1.0000), try 1/5: layer a in float"
    )
    assert [m.split("try ")[1].split(":")[0] for m in messages[5:9]] == ["1/4", "2/4", "3/4", "4/4"]
    assert messages[-1].endswith("try 3/3: layer c; layer d; layer e in float")  # in graph order


def test_search_records_trials_and_uses_its_defaults():
    table = {frozenset(): 0.75, frozenset("a"): 0.80}
    best, kept, trials = search(fake_trial(table, []), ["a", "b"], 1.0, 0.25)
    assert kept == [] and trials == [{"keep_float": [], "f2": 0.75}]  # a drop of exactly max_drop is allowed
    _, _, trials = search(fake_trial(table, []), ["a", "b"], 1.0, 0.1, max_float=1)
    assert trials[:2] == [{"keep_float": [], "f2": 0.75}, {"keep_float": ["a"], "f2": 0.80}]
    _, kept, _ = search(fake_trial({}, []), list("abcdef"), 1.0, 0.005)
    assert len(kept) == 3  # at most three layers in float by default


def test_score_reads_the_probabilities_output_by_name(tmp_path):
    from tests.helpers.onnx_fakes import conv_model
    from tumor_export.gate import score
    from tumor_runtime.model.session import create_session

    model = conv_model(tmp_path / "m.onnx", logits_first=True)
    x = np.random.default_rng(0).normal(0, 1, (5, 1, 32, 32)).astype(np.float32)
    got = score(model, x, np.zeros(5, int), CLASSES)
    np.testing.assert_allclose(got.probabilities, create_session(model).run(["probabilities"], {"image": x})[0])
    np.testing.assert_allclose(got.probabilities.sum(1), 1, atol=1e-5)


def test_layers_are_described_from_the_graph_itself(exported):
    """Messages name a layer by position, kind and width, read from its weights, not 'node_Conv_92'."""
    import onnx

    from tumor_export.static_int8 import describe_nodes, quantizable_nodes

    path = exported / "model.onnx"
    graph = onnx.load(str(path)).graph
    weights = {w.name: list(w.dims) for w in graph.initializer}
    names = quantizable_nodes(path)
    labels = describe_nodes(path)
    assert list(labels) == names
    for i, node in enumerate(n for n in graph.node if n.name in names):
        dims = weights[node.input[1]]
        if node.op_type == "Conv":
            expected = f"layer {i + 1} of {len(names)} (Conv {dims[2]}x{dims[3]}, {dims[1]}->{dims[0]} channels)"
        else:
            expected = f"layer {i + 1} of {len(names)} (Gemm, {dims[1]} inputs)"
        assert labels[node.name] == expected
