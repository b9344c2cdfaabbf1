"""The reference model: shapes, batch independence, logits, dropout, sizes against the paper, tracing."""

from __future__ import annotations

import pytest
import torch

from mfdeploy.model import SIZES, build_model, get_config
from mfdeploy.model.complexity import measure


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("batch,imgsz", [(1, 224), (3, 160), (2, 256)])
def test_forward_shapes(size, batch, imgsz):
    model = build_model(size, num_classes=17)
    with torch.no_grad():
        out = model(torch.randn(batch, 3, imgsz, imgsz))
    assert out.shape == (batch, 17)
    assert torch.isfinite(out).all()


def test_small_and_non_square_inputs_and_other_channels():
    model = build_model("26m", num_classes=5, in_chans=1)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)
        assert model(torch.randn(1, 1, 32, 96)).shape == (1, 5)


@pytest.mark.parametrize("size", ["26m", "151m"])
def test_batch_independence(size):
    """Each row of a batch equals that image run alone (no op mixes samples in eval)."""
    model = build_model(size, seed=1)
    x = torch.randn(5, 3, 160, 160)
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # different images give different logits


def test_eval_returns_the_classifier_logits_without_softmax():
    model = build_model("52m", num_classes=10)
    captured = {}
    model.head.fc2.register_forward_hook(lambda _m, _i, out: captured.setdefault("fc2", out))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 96))
    assert torch.equal(out, captured["fc2"])


def test_dropout_and_drop_path_act_only_in_training():
    kwargs = dict(num_classes=10, seed=3)
    plain = build_model("26m", **kwargs)
    noisy = build_model("26m", drop_rate=0.5, drop_path_rate=0.5, **kwargs)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(noisy(x), plain(x))  # eval: dropout and drop-path are identities
        noisy.train()
        plain.train()
        torch.manual_seed(0)
        a = noisy(x)
        torch.manual_seed(1)
        b = noisy(x)
        torch.manual_seed(0)
        c = plain(x)
        torch.manual_seed(1)
        d = plain(x)
    assert not torch.allclose(a, b)  # training with dropout: stochastic
    torch.testing.assert_close(c, d)  # training without dropout: deterministic


def test_initialisation_is_deterministic_from_seed():
    a, b, c = build_model("26m", seed=7), build_model("26m", seed=7), build_model("26m", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.former.attn.qkv.weight"], sc["blocks.0.former.attn.qkv.weight"])


@pytest.mark.parametrize("size", SIZES)
def test_size_matches_paper(size):
    """At 224x224: MAdds (conv, linear, matmul) within 15% of the name, params within 10% of the paper."""
    stats = measure(build_model(size), 224)
    cfg = get_config(size)
    assert abs(stats.madds / (cfg.paper.madds_m * 1e6) - 1) <= 0.15, stats.madds
    assert abs(stats.params / (cfg.paper.params_m * 1e6) - 1) <= 0.10, stats.params
    # The per-stage table accounts for every parameter and every multiply-add.
    assert sum(s.params for s in stats.stages) == stats.params
    assert sum(s.madds for s in stats.stages) == stats.madds


def test_52m_lite_bottleneck_follows_the_paper_stride():
    stats = measure(build_model("52m"), 224)
    lite = next(s for s in stats.stages if s.name == "lite_bneck")
    assert lite.output_shape == [[1, 12, 56, 56]]


@pytest.mark.parametrize("size", SIZES)
def test_trace_has_no_int_nodes_and_no_rank5_tensors(size):
    """torch.jit.trace records no aten::Int (coremltools 9 + numpy 2 fails on those) and nothing 5-D,
    and the trace made at batch 2 is valid at other batch sizes. At 64 px: the trace has the same nodes
    at any input size (nothing reads a shape), for a twelfth of 224 px's arithmetic."""
    model = build_model(size)
    with torch.no_grad():  # check_trace: compared with eager mode below, at another batch size
        traced = torch.jit.trace(model, torch.randn(2, 3, 64, 64), check_trace=False)
    graph = traced.inlined_graph
    kinds = [node.kind() for node in graph.nodes()]
    assert "aten::Int" not in kinds
    assert not any(k.startswith("prim::If") or k.startswith("prim::Loop") for k in kinds)
    ranks = [v.type().dim() for v in graph.nodes() for v in v.outputs() if isinstance(v.type(), torch.TensorType)]
    assert ranks and max(r for r in ranks if r is not None) <= 4
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_softmax_runs_on_the_last_axis_only():
    """ONNX Runtime's CPU Softmax transposes there and back on any axis but the last: ToMobile's softmax over
    the tokens is written out (the seed 52m ran 6-8% faster at batch 1 and 8). Core ML's converter, under
    native_softmax, gets one softmax op there instead."""
    from mfdeploy.model.bridges import ToMobile
    from mfdeploy.model.layers import native_softmax

    model = build_model("52m")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = torch.jit.trace(model, x).inlined_graph
        with native_softmax():
            native = torch.jit.trace(model, x).inlined_graph

    def softmaxes(graph):
        return [node for node in graph.nodes() if node.kind() == "aten::softmax"]

    assert softmaxes(plain)
    for node in softmaxes(plain):
        assert node.inputsAt(1).toIValue() in (-1, node.output().type().dim() - 1), node
    to_mobile = sum(isinstance(module, ToMobile) for module in model.modules())
    assert to_mobile and len(softmaxes(native)) == len(softmaxes(plain)) + to_mobile
