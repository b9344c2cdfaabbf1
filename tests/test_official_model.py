"""The official Mobile-Former family: the same function as the official code (fixtures made by
tools/make_official_reference.py from its commit f447310), its exact state_dict keys, and a deploy-ready graph."""

from __future__ import annotations

import contextlib
import io
import warnings

import onnx
import pytest
import torch

import official_reference as ref
from mfdeploy.errors import UserError
from mfdeploy.model.complexity import measure
from mfdeploy.model.official import (
    OFFICIAL_CONFIGS,
    OFFICIAL_SIZES,
    OfficialMobileFormer,
    build_official_model,
    from_official_state_dict,
    get_official_config,
    identify_official,
    padded_stage_width,
    to_official_state_dict,
)
from mfdeploy.model.stages import stage_modules, stage_names

REFERENCE = ref.load_reference()


def _meta_model(size: str, num_classes: int = 1000, in_chans: int = 3) -> OfficialMobileFormer:
    with torch.device("meta"):
        return OfficialMobileFormer(get_official_config(size), num_classes, in_chans)


def _official_listing(size: str, num_classes: int = 1000) -> list[tuple[str, tuple[int, ...]]]:
    """The official (key, shape) listing, from our model through the key mapping (checked against the official
    code's own listing by its sha256 in test_official_keys_and_shapes_are_exact)."""
    state = to_official_state_dict(_meta_model(size, num_classes).state_dict())
    return [(k, tuple(v.shape)) for k, v in state.items()]


def test_the_reference_covers_every_size_and_names_the_official_commit():
    assert tuple(REFERENCE["sizes"]) == OFFICIAL_SIZES
    assert REFERENCE["header"]["official_commit"] == "f44731062abb22a87962f0783467393dae23a9c5"


@pytest.mark.parametrize("size", OFFICIAL_SIZES)
def test_official_keys_and_shapes_are_exact(size):
    """Mapped to official names, our state dict lists exactly the official keys, shapes and order (the sha256 of
    the official code's own listing, in the format of the shared mobile_former_<size>_keys.txt files)."""
    entry = REFERENCE["sizes"][size]
    state = to_official_state_dict(_meta_model(size).state_dict())
    assert len(state) == entry["state_dict_entries"]
    assert ref.listing_sha256(state) == entry["state_dict_keys_sha256"]


@pytest.mark.parametrize("size", OFFICIAL_SIZES)
def test_zero_filled_official_state_dict_loads_strictly(size):
    model = _meta_model(size)
    official = {
        k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
        for k, s in _official_listing(size)
    }
    model.load_state_dict(from_official_state_dict(official), strict=True, assign=True)
    assert identify_official(official) == (size, 1000, 3)
    assert identify_official(from_official_state_dict(official)) == (size, 1000, 3)


@pytest.mark.parametrize("size", OFFICIAL_SIZES)
def test_parameter_counts_equal_the_official_code(size):
    model = _meta_model(size)
    params = sum(p.numel() for p in model.parameters())
    assert params == OFFICIAL_CONFIGS[size].official_params == REFERENCE["sizes"][size]["params"]


def test_state_dict_round_trip_is_exact():
    model = build_official_model("26m", num_classes=7, seed=3)
    state = model.state_dict()
    official = to_official_state_dict(state)
    assert "features.1.hyper1.hyper.0.weight" in official and "classifier.classifier.1.weight" in official
    back = from_official_state_dict(official)
    assert list(back) == list(state)
    assert all(back[k] is state[k] for k in state)
    assert identify_official(official) == ("26m", 7, 3)


def test_unknown_keys_are_errors_not_dropped():
    official = dict.fromkeys(k for k, _ in _official_listing("52m"))
    with pytest.raises(UserError, match="features.1.bogus"):
        from_official_state_dict({**official, "features.1.bogus.weight": None})
    with pytest.raises(UserError, match="module.tokens"):
        to_official_state_dict({"module.tokens": None})
    assert identify_official({"classifier.classifier.1.weight": torch.zeros(10, 1024)}) is None
    assert identify_official({"something": torch.zeros(1)}) is None


@pytest.mark.parametrize("size", OFFICIAL_SIZES)
def test_same_logits_as_the_official_code(size):
    """float64: the same function to rounding (<= 1e-9); float32: <= 1e-5 and the same top-1."""
    model = build_official_model(size, num_classes=ref.NUM_CLASSES)
    weights = ref.official_weights(_official_listing(size, ref.NUM_CLASSES))
    for dtype, name, tol in ((torch.float64, "float64", 1e-9), (torch.float32, "float32", 1e-5)):
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        model.to(dtype).load_state_dict(from_official_state_dict(cast), strict=True)
        with torch.no_grad():
            logits = model(ref.official_input(dtype)).double()
        expected = torch.tensor(REFERENCE["sizes"][size]["logits"][name], dtype=torch.float64)
        assert (logits - expected).abs().max().item() <= tol, name
        assert torch.equal(logits.argmax(1), expected.argmax(1)), name


def test_stages_and_complexity_work_as_for_the_seed_family():
    model = build_official_model("52m")
    names = stage_names(model.cfg)
    assert names[:2] == ["stem", "lite_bneck"] and names[-3:] == ["final_to_former", "channel_conv", "head"]
    assert len(names) == len(model.cfg.blocks) + 5 == len(stage_modules(model))
    assert model.family == "official" and model.cfg.name == "52m"
    stats = measure(model, 64)
    assert stats.params == OFFICIAL_CONFIGS["52m"].official_params == sum(s.params for s in stats.stages)
    assert stats.madds == sum(s.madds for s in stats.stages) > 0


def test_trace_has_no_shape_reads_and_nothing_above_rank_4():
    """No aten::Int / aten::size (coremltools stops at them), nothing 5-D (26m's shuffle included), and a trace
    made at batch 2 runs at other batches. 26m: both block kinds, and the channel shuffles."""
    model = build_official_model("26m")
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(2, 3, 32, 32))
    graph = traced.inlined_graph
    kinds = {node.kind() for node in graph.nodes()}
    assert not kinds & {"aten::Int", "aten::size", "aten::repeat", "aten::expand", "prim::If", "prim::Loop"}
    ranks = [v.type().dim() for n in graph.nodes() for v in n.outputs() if isinstance(v.type(), torch.TensorType)]
    assert ranks and max(r for r in ranks if r is not None) <= 4
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def _onnx_graph(model: torch.nn.Module) -> onnx.GraphProto:
    """The model exported as the project exports it (dynamic batch, constants folded), shapes inferred."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, 32, 32),),
            buffer,
            dynamo=False,
            opset_version=17,
            do_constant_folding=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    return onnx.shape_inference.infer_shapes(onnx.load_from_string(buffer.getvalue()), strict_mode=True).graph


def test_26m_onnx_has_rank_4_at_most_and_folds_its_constants():
    """The 26m graph (with its channel shuffles) as the project exports it: every value rank <= 4, no Div
    (scales, hard-sigmoid and GELU constants are folded into weights), one Gather per shuffle."""
    model = build_official_model("26m")
    graph = _onnx_graph(model)
    ranks = [len(v.type.tensor_type.shape.dim) for v in graph.value_info]
    assert ranks and max(ranks) <= 4
    ops = [node.op_type for node in graph.node]
    assert "Div" not in ops and "Tile" not in ops and "Expand" not in ops
    shuffles = sum(1 for node in graph.node if node.op_type == "Gather" and "shuffle" in node.name)
    # two per block and the channel conv's; the lite bottleneck's is in its 1x1 convs' weights (it reads the
    # stem's copies, see test_lite_bottleneck_reads_copies_of_the_stem_in_the_nchwc_layout)
    assert shuffles == 2 * len(model.cfg.blocks) + 1


def test_projections_are_matrices_and_softmax_runs_on_the_last_axis_only():
    """What ONNX Runtime runs fastest and quantizes per channel: every constant weight of a MatMul/Gemm is 2-D
    (no batched [heads, in, out] product), and every Softmax normalises the last axis. The bridges back to the
    feature map normalise over the tokens, written out; Core ML's converter gets one softmax op there."""
    from mfdeploy.model.layers import native_softmax

    model = build_official_model("52m")
    graph = _onnx_graph(model)
    weights = {init.name: len(init.dims) for init in graph.initializer}
    products = [node for node in graph.node if node.op_type in ("MatMul", "Gemm")]
    shapes = {name: weights[name] for node in products for name in node.input[:2] if name in weights}  # not C
    assert products and shapes and set(shapes.values()) == {2}, shapes
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in graph.value_info}
    softmaxes = [node for node in graph.node if node.op_type == "Softmax"]
    blocks = len(model.cfg.blocks)
    assert len(softmaxes) == 2 * blocks + 1  # each block's ToFormer and Former, and the final ToFormer
    for node in softmaxes:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        assert axis in (-1, ranks[node.output[0]] - 1), node.name
    with torch.no_grad():
        plain = torch.jit.trace(model, torch.randn(2, 3, 32, 32)).inlined_graph
        with native_softmax():
            native = torch.jit.trace(model, torch.randn(2, 3, 32, 32)).inlined_graph
    counts = [sum(1 for node in traced.nodes() if node.kind() == "aten::softmax") for traced in (plain, native)]
    assert counts == [2 * blocks + 1, 3 * blocks + 1]


def _randomised(block: torch.nn.Module) -> torch.nn.Module:
    """float64, random weights and BatchNorm statistics that matter, eval mode."""
    torch.manual_seed(0)
    block = block.double()
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_()
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return block.eval()


def test_a_repeated_depthwise_conv_is_the_grouped_conv_in_repeat_order():
    """In eval the conv with 3 outputs per input channel runs as a depthwise conv over the input repeated 3 times:
    output channel j is the grouped conv's channel order[j]. In training (batch statistics) and for Core ML
    (native_grouped_conv) it is the grouped conv itself, in its own order; so it is with one output per channel,
    and with output channels that do not fill whole 16-channel NCHWc blocks."""
    from mfdeploy.model.layers import RepeatedDepthwise, conv_bn, native_grouped_conv

    conv = _randomised(RepeatedDepthwise(16, 3, 3, stride=2))
    grouped = conv_bn(16, 48, 3, stride=2, padding=1, groups=16).double().eval()
    grouped.load_state_dict(conv.state_dict())
    x = torch.randn(2, 16, 15, 15, dtype=torch.float64)
    with torch.no_grad():
        expected = grouped(x)
        order = conv.channel_order()
        assert order is not None and sorted(order.tolist()) == list(range(48))
        torch.testing.assert_close(conv(x), expected[:, order], rtol=0, atol=1e-12)
        with native_grouped_conv():
            assert conv.channel_order() is None
            torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)
    conv.train()
    assert conv.channel_order() is None
    before = conv.bn.running_mean.clone()
    torch.testing.assert_close(conv(x), grouped.train()(x))
    assert not torch.equal(before, conv.bn.running_mean)
    assert RepeatedDepthwise(16, 1).eval().channel_order() is None
    assert RepeatedDepthwise(8, 3).eval().channel_order() is None  # 24 channels: 1.5 AVX-512 blocks


def test_a_permuted_feature_map_is_read_through_permuted_weights():
    """The 1x1 conv after a repeated depthwise conv reads its channels in repeat order through its weights' columns;
    a grouped conv cannot (the permutation crosses its groups), which the blocks never ask of it."""
    from mfdeploy.model.layers import conv_bn, conv_bn_reading

    block = _randomised(conv_bn(6, 4, 1))
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        torch.testing.assert_close(conv_bn_reading(block, x[:, order], order), block(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(conv_bn_reading(block, x, None), block(x), rtol=0, atol=0)
        with pytest.raises(ValueError, match="grouped"):
            conv_bn_reading(conv_bn(6, 4, 1, groups=2).eval(), x.float(), order)


@pytest.mark.parametrize("size", ["26m", "52m"])
def test_onnx_runtime_runs_head_permutes_in_matmuls_and_repeats_as_depthwise_convs(size, tmp_path):
    """The two layouts chosen for ONNX Runtime's CPU kernels hold in the graph `mfdeploy export` writes: a conv
    with several outputs per input channel is grouped only where it is a stride-2 block's first (its input is a
    bridge's NCHW output) or its outputs do not fill whole 16-channel NCHWc blocks (none here: the lite
    bottleneck's 24 are computed from copies of the stem, see the test after this one), and once ONNX Runtime
    has fused the token-major head permutes into its matmuls only the two merges of heads per block (and the
    final bridge's) remain as Transpose ops (batch-major tokens left 8 per block). 26m has channel shuffles,
    which take the repeat order in their own gather instead."""
    from onnx import numpy_helper

    from mfdeploy.export import onnx_export
    from mfdeploy.runtime.onnxruntime_runner import optimized_graph

    model = build_official_model(size)
    graph = onnx_export.torch_to_onnx(model, 64, None, 17)
    graph = onnx_export.simplify(onnx_export.pin_reshape_shapes(graph)[0], "onnxslim")
    onnx_export.name_batch_axis(graph)
    weights = {init.name: init for init in graph.graph.initializer}
    stride2 = {f"/blocks.{i}/" for i, spec in enumerate(model.cfg.blocks) if spec.kind == "DnaBlock3"}
    kept_grouped = []
    for node in graph.graph.node:
        if node.op_type != "Conv":
            continue
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        out_channels, in_per_group = numpy_helper.to_array(weights[node.input[1]]).shape[:2]
        if groups > 1 and in_per_group == 1 and out_channels > groups:  # several outputs per input channel
            kept_grouped.append((node.name, out_channels))
    first_of_stride2 = [name for name, _ in kept_grouped if any(name.startswith(p + "conv1/") for p in stride2)]
    assert len(first_of_stride2) == len(stride2)
    assert all(channels % 16 for name, channels in kept_grouped if name not in first_of_stride2), kept_grouped
    concats = [node.name for node in graph.graph.node if node.op_type == "Concat"]
    repeated = [p for p in stride2 if any(name.startswith(p + "conv3/") for name in concats)]
    grouped = [p for p in stride2 if any(name.startswith(p + "conv3/") for name, _ in kept_grouped)]
    assert repeated and sorted(repeated + grouped) == sorted(stride2)  # each second conv one way or the other
    assert not [name for name, _ in kept_grouped if name.startswith("/lite_bneck/")]  # depthwise over copies
    onnx.save(graph, tmp_path / "model.onnx")
    ops = [node.op_type for node in optimized_graph(tmp_path / "model.onnx", optimization="extended").graph.node]
    assert ops.count("Transpose") == 2 * len(model.cfg.blocks) + 1


@pytest.mark.parametrize("size", ["26m", "52m", "96m"])
def test_lite_bottleneck_reads_copies_of_the_stem_in_the_nchwc_layout(size, tmp_path):
    """26m/52m: the stem writes its 8 channels twice (16), the lite bottleneck's grouped conv (8 -> 24) runs as
    two depthwise convs over them and its 1x1 conv (26m: grouped, after a shuffle) as two partial convs, summed.
    96m: the stem writes its 12 channels and 4 zeros, two depthwise convs, and the residual as a third partial
    1x1 conv. The same function as the grouped conv (float64), and ONNX Runtime runs stem and lite bottleneck in
    NCHWc from the image to one reorder at the end: no reorder of the stem's output, no grouped conv in NCHW, the
    sums inside the convs."""
    from onnx import numpy_helper

    from mfdeploy.export import onnx_export
    from mfdeploy.model.layers import native_grouped_conv
    from mfdeploy.runtime.onnxruntime_runner import optimized_graph

    model = build_official_model(size, seed=3).double()
    channels, residual = model.cfg.stem_channels, model.lite_bneck.identity
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():  # BatchNorms that are not the identity, so that folding them matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.bias.normal_(0.0, 0.2, generator=gen)
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        copies = model.stem(images)
        assert copies.shape[1] == 16 and residual == (size == "96m")
        if channels == 8:  # a second copy
            torch.testing.assert_close(copies[:, 8:], copies[:, :8], rtol=0, atol=0)
        else:  # zeros after the stem's 12 channels
            assert not copies[:, channels:].any()
        with native_grouped_conv():
            assert model.stem(images).shape[1] == channels
            grouped = model(images)
        torch.testing.assert_close(model(images), grouped, rtol=0, atol=1e-12)
    graph = onnx_export.torch_to_onnx(model.float(), 64, None, 17)
    graph = onnx_export.simplify(onnx_export.pin_reshape_shapes(graph)[0], "onnxslim")
    weights = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    convs = [n for n in graph.graph.node if n.op_type == "Conv" and n.name.startswith(("/stem/", "/lite_bneck/"))]
    out = padded_stage_width(model.cfg) or model.cfg.lite.out_channels  # 52m: written padded to 16
    partial_convs = 3 if residual else 2
    shapes = sorted(weights[n.input[1]].shape[:2] for n in convs)
    # the stem, two depthwise convs over the 16, and partial 1x1 convs that each read all 16
    assert shapes == sorted([(16, 3), (16, 1), (16, 1)] + [(out, 16)] * partial_convs), shapes
    onnx.save(graph, tmp_path / "model.onnx")
    optimized = optimized_graph(tmp_path / "model.onnx", threads=1).graph
    ran = [n for n in optimized.node if n.name.startswith(("/stem/", "/lite_bneck/"))]
    assert len(ran) == 3 + partial_convs, [(n.op_type, n.name) for n in ran]
    assert all((n.op_type, n.domain) == ("Conv", "com.microsoft.nchwc") for n in ran), ran
    reorders = [
        (n.op_type, n.output[0])
        for n in optimized.node
        if n.op_type.startswith("Reorder")
        and any(t.startswith(("/stem/", "/lite_bneck/")) for t in [*n.input, *n.output])
    ]
    assert len(reorders) == 1 and reorders[0][0] == "ReorderOutput", reorders
    assert reorders[0][1].startswith("/lite_bneck/")


def test_52m_pads_its_12_channel_stage_so_blocks0_reads_it_with_the_pointwise_kernel(tmp_path):
    """52m's lite bottleneck writes its 12 channels padded to 16 (each bridge head's 6 channels, then 2 zeros) and
    blocks.0 computes on the 16; blocks.1 takes its 12 back with one Gather. The same function as the channels as
    they are (float64), the zeros stay zero through blocks.0's convs, residual and both bridges, and ONNX Runtime
    runs blocks.0's first 1x1 conv as an NCHWc conv straight on the lite bottleneck's blocked output, where with
    12 channels it read an NCHW copy. Only 52m: the other sizes keep their widths."""
    from mfdeploy.export import onnx_export
    from mfdeploy.model.layers import native_grouped_conv
    from mfdeploy.model.official import padded_positions
    from mfdeploy.runtime.onnxruntime_runner import optimized_graph

    assert {size: padded_stage_width(get_official_config(size)) for size in OFFICIAL_SIZES} == {
        size: 16 if size == "52m" else None for size in OFFICIAL_SIZES
    }
    model = _randomised(build_official_model("52m", seed=5))
    with torch.no_grad():  # biases that are not zero: the padded channels must stay zero all the same
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias.normal_(0.0, 0.5)
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    pads = torch.ones(16, dtype=torch.bool)
    pads[padded_positions(12, 2, 16)] = False
    assert pads.tolist() == [False] * 6 + [True] * 2 + [False] * 6 + [True] * 2
    with torch.no_grad():
        lite = model.lite_bneck(model.stem(images))
        block0, tokens = model.blocks[0](lite, model.tokens)
        assert lite.shape[1] == block0.shape[1] == 16
        assert not lite[:, pads].any() and not block0[:, pads].any()
        with native_grouped_conv():
            native_lite = model.lite_bneck(model.stem(images))
            native_block0, native_tokens = model.blocks[0](native_lite, model.tokens)
            native = model(images)
        torch.testing.assert_close(lite[:, ~pads], native_lite, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(block0[:, ~pads], native_block0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(tokens, native_tokens, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model(images), native, rtol=1e-12, atol=1e-12)
    graph = onnx_export.torch_to_onnx(model.float(), 64, None, 17)
    graph = onnx_export.simplify(onnx_export.pin_reshape_shapes(graph)[0], "onnxslim")
    onnx.save(graph, tmp_path / "model.onnx")
    optimized = optimized_graph(tmp_path / "model.onnx", threads=1).graph
    producers = {out: node for node in optimized.node for out in node.output}
    conv1 = [n for n in optimized.node if n.op_type == "Conv" and n.name.startswith("/blocks.0/")]
    first = conv1[0]
    assert first.domain == "com.microsoft.nchwc", [(n.name, n.domain) for n in conv1]
    source = producers[first.input[0]]
    assert (source.op_type, source.domain) == ("Conv", "com.microsoft.nchwc") and source.name.startswith("/lite_bneck/")


def test_every_projection_of_the_tokens_is_one_gemm_with_its_bias():
    """Tokens are flat [T*B, D]: with a trained checkpoint's nonzero biases each token projection exports as one
    Gemm. On [T, B, D] with a dynamic batch each was a MatMul and an Add, which ONNX Runtime does not fuse. Only
    the first bridge's output projection reads [T, B, C] (the learned tokens broadcast over the batch)."""
    from onnx import numpy_helper

    from mfdeploy.export import onnx_export

    model = build_official_model("26m")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias.uniform_(0.1, 0.2)
    graph = onnx_export.torch_to_onnx(model, 64, None, 17)
    graph = onnx_export.simplify(onnx_export.pin_reshape_shapes(graph)[0], "onnxslim")
    weights = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    matmuls = [
        n.name
        for n in graph.graph.node
        if n.op_type == "MatMul" and n.input[1] in weights and weights[n.input[1]].ndim == 2
    ]
    assert matmuls == ["/blocks.0/to_former/MatMul_2"], matmuls
    blocks = len(model.cfg.blocks)
    # per block: bridge q+gate and output, Former q, output and FFN x2, the hyper-MLPs' first layers, Former->Mobile
    # k+v (the first bridge's q+gate read the learned tokens: a constant, folded); the final bridge's two, the
    # head's two. The hyper-MLPs' second layers are a grouped conv (test_hyper_mlps_second_layers_...)
    gemms = [n for n in graph.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 8 * blocks - 2 + 2 + 2
    assert all(len(n.input) == 3 and weights[n.input[2]].any() for n in gemms)


def test_hyper_mlps_second_layers_run_as_one_grouped_conv_outside_the_nchwc_layout(tmp_path):
    """Each block's hyper-MLPs end in one grouped 1x1 conv, a group per hyper-MLP, with no zero block between
    them, and ONNX Runtime runs it in NCHW with its clip fused: no reorder in or out of NCHWc around it (an
    even group width of whole 8- or 16-channel blocks would get one on each side)."""
    from onnx import numpy_helper

    from mfdeploy.export import onnx_export
    from mfdeploy.runtime.onnxruntime_runner import optimized_graph

    model = build_official_model("52m")
    graph = onnx_export.torch_to_onnx(model, 64, None, 17)
    graph = onnx_export.simplify(onnx_export.pin_reshape_shapes(graph)[0], "onnxslim")
    weights = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    producers = {out: node for node in graph.graph.node for out in node.output}
    # the convs reading a vector: token 0's hidden units, [B, n * hidden] unsqueezed to [B, n * hidden, 1, 1]
    hyper_convs = {
        node.name: node
        for node in graph.graph.node
        if node.op_type == "Conv" and node.input[0] in producers and producers[node.input[0]].op_type == "Unsqueeze"
    }
    assert len(hyper_convs) == len(model.cfg.blocks), sorted(hyper_convs)
    for node, block in zip(hyper_convs.values(), model.blocks):
        group = next(a.i for a in node.attribute if a.name == "group")
        hypers = [m for name, m in block.named_children() if name.startswith("hyper")]
        assert group == len(hypers) == 2
        out_channels, per_group = weights[node.input[1]].shape[:2]
        assert per_group == hypers[0].fc1.out_features  # each group reads its own hyper-MLP's hidden units
        assert out_channels == group * (max(2 * h.channels for h in hypers) + 1)
    onnx.save(graph, tmp_path / "model.onnx")
    optimized = optimized_graph(tmp_path / "model.onnx", threads=1).graph
    producers = {out: node for node in optimized.node for out in node.output}
    ran = {node.name: node for node in optimized.node}
    for name in hyper_convs:
        node = ran[name]
        assert node.op_type == "FusedConv" and node.domain == "com.microsoft", (name, node.op_type)
        assert dict((a.name, a.s) for a in node.attribute)["activation"] == b"Clip"
        assert producers[node.input[0]].op_type != "ReorderInput"
        consumers = [n for n in optimized.node if node.output[0] in n.input]
        assert consumers and all(n.op_type != "ReorderOutput" for n in consumers)


def test_stacked_tokens_compute_what_flat_tokens_compute():
    """Core ML traces the tokens stacked, [T, B, D] (stacked_tokens): the same logits as the flat [T*B, D] ONNX
    gets, and no reshape for each block's token 0 (nor the first bridge's flattening)."""
    from mfdeploy.model.layers import stacked_tokens

    model = build_official_model("26m", num_classes=10).double()
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        flat = model(x)
        with stacked_tokens():
            stacked = model(x)
        torch.testing.assert_close(stacked, flat, rtol=0, atol=1e-12)
        reshapes = []
        for context in (contextlib.nullcontext(), stacked_tokens()):
            with context:
                traced = torch.jit.trace(model.float(), x.float()).inlined_graph
            reshapes.append(sum(node.kind() in ("aten::reshape", "aten::view") for node in traced.nodes()))
    # token 0 of each block and of the head, and the first bridge's flattening
    assert reshapes[0] - reshapes[1] == len(model.cfg.blocks) + 2


def test_training_mode_runs_batchnorm1d_and_drop_path():
    """Fine-tuning: in training the head's BatchNorm1d uses batch statistics (and updates its running ones),
    and drop path is active; eval is deterministic."""
    model = build_official_model("26m", num_classes=5, drop_rate=0.1, drop_path_rate=0.2).train()
    x = torch.randn(2, 3, 32, 32)
    before = model.head.norm.running_mean.clone()
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert not torch.equal(before, model.head.norm.running_mean)
    assert model.tokens.grad is not None and model.blocks[0].hyper1.fc1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_builder_is_deterministic_and_independent_of_the_global_rng():
    torch.manual_seed(1)
    a = build_official_model("52m", seed=5)
    torch.manual_seed(2)
    b = build_official_model("52m", seed=5)
    c = build_official_model("52m", seed=6)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not torch.equal(a.blocks[0].conv1.conv.weight, c.blocks[0].conv1.conv.weight)
    assert not a.training
    with pytest.raises(UserError, match="unknown official"):
        build_official_model("53m")
    assert get_official_config("mobile_former_52m") is get_official_config("52M")
