#!/usr/bin/env python3
"""Generate the PyTorch golden data the reference interpreter (crates/cnnc-interp) is checked against.

Run from the repository root:

    python3 tests/golden/gen.py

It rewrites everything it owns: tests/golden/cases.json and tests/golden/data/*.safetensors (stale
.safetensors files in data/ are deleted). Needs `torch`, `numpy` and `safetensors` from PyPI; CI
does not run it, it only reads the committed outputs (crates/cnnc-interp/tests/golden.rs).

Method
------
* Every case is one layer (or one loss) applied to random data. Each case draws from its own
  `torch.Generator`, seeded with the CRC-32 of the case name, so the output is deterministic and
  adding, removing or reordering cases leaves the other files byte-for-byte unchanged.
* Every random tensor is drawn in float64 and immediately rounded to float32 (`f32()`), so the
  values stored in the file are exactly the values the computation used. All arithmetic is then
  float64 (torch's default dtype is set to float64); results are rounded to float32 only when
  stored.
* Inputs are standard normal times a per-case scale. Values within `KINK_MARGIN` of an
  activation's kink (0 for the ReLU family, min/max for hardtanh, threshold/beta for softplus, and
  |x - t| in {0, 1} for L1/Huber, the hinge for MultiMarginLoss) are pushed away so that the
  one-sided derivative chosen by either implementation cannot differ. Max-pooling inputs are
  checked to have no exactly equal values (ties would make the gradient routing a convention).
* Backward: a fixed random `grad_output` of the output's shape is drawn and
  `torch.autograd.grad(output, [inputs..., trainable params...], grad_output)` gives
  d(sum(output * grad_output))/d(each). Losses store the gradient of the scalar loss.

File layout (one safetensors file per case, all float32 unless noted)
---------------------------------------------------------------------
  input.<k>               k-th input, full shape (batch first)
  param.<layer>.<suffix>  parameters and buffers under the interpreter's state_dict names
                          (`l.weight`, `l.bias`, `l.running_mean`, `l.running_var`)
  output                  forward output
  grad_output             the upstream gradient used for backward
  grad.input.<k>          gradient w.r.t. input k
  grad.param.<name>       gradient w.r.t. every trainable parameter (not running stats)
  running.<name>          training-mode batch norm: updated running_mean / running_var
                          (momentum convention as PyTorch; unbiased batch variance)
Loss cases store `input.0` (logits / prediction), `target` (int64 class indices for
cross_entropy and multi_margin, float32 otherwise), `loss` (shape [1]) and `grad.input.0`
(d loss / d input.0). Every loss uses reduction "mean".

cases.json lists each case with its op keyword (cnnc_ir::Op::keyword), the attributes under the IR's
field names, the mode, the input shapes without batch, the batch size and the file.

Models section (tests/golden/models/, separate from the op cases above)
-----------------------------------------------------------------------
Whole networks built in torch with the same layer names as their .cnn sources, so the
state_dict keys are cnnc's parameter names: LeNet-5 exactly as examples/lenet5.cnn, and
`tiny_resnet` (tests/golden/models/tiny_resnet.cnn: basic blocks, an identity and a projection
shortcut, batch norm, max pooling, global average pooling, fc). Random weights, batch norm with
random running statistics, eval mode (batch norm on running statistics), computed in float64 on
float32-rounded values like the op cases. Per model <m>:

  <m>.weights.safetensors  the state_dict (float32), with `*.num_batches_tracked` as int64
                           scalars, as PyTorch exports them (cnnc must ignore them)
  <m>.input.npy            an input batch (float32, NCHW)
  <m>.output.npy           the eval-mode output (float32)
  <m>.target.npy           class labels (int64) for the cross-entropy loss
  <m>.grads.safetensors    d loss / d every trainable parameter (state_dict names) and
                           d loss / d input (key `input`), loss = F.cross_entropy (batch mean)

models/models.json lists them with the loss value (float64). The generator also dumps
`state_dict` key -> shape manifests of torchvision's resnet18, resnet50, alexnet and vgg11 to
models/torchvision/<name>.json (needs torchvision; skipped with a message without it).
crates/cnnc-cli/tests/golden_models.rs reads all of it through the `cnnc` binary.

`python3 tests/golden/gen.py --models` regenerates the models section only.
"""

import json
import math
import os
import sys
import zlib

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
LAYER = "l"  # the layer name of every one-op graph
KINK_MARGIN = 0.02

# ----------------------------------------------------------------------------------------------
# Random data


class Rand:
    """A per-case random source: float64 draws rounded to float32 values."""

    def __init__(self, name):
        self.gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))

    def normal(self, shape, scale=1.0, mean=0.0):
        return f32(torch.randn(shape, generator=self.gen) * scale + mean)

    def uniform(self, shape, lo, hi):
        return f32(torch.rand(shape, generator=self.gen) * (hi - lo) + lo)

    def classes(self, n, c):
        return torch.randint(0, c, (n,), generator=self.gen)


def f32(t):
    """Round to float32 and back, so stored and computed values are identical."""
    return t.to(torch.float32).to(torch.float64)


def away(x, kinks, margin=KINK_MARGIN):
    """Moves every element within `margin` of a kink to `kink + margin` (or `- margin`) and more."""
    x = x.clone()
    for k in kinks:
        d = x - k
        near = d.abs() < margin
        x[near] = k + torch.where(d[near] >= 0, margin + d[near], -margin + d[near])
    return f32(x)


def assert_no_ties(x, name):
    """Max pooling: no two equal values in any (sample, channel) map."""
    flat = x.reshape(x.shape[0] * x.shape[1], -1)
    for row in flat:
        assert row.unique().numel() == row.numel(), f"{name}: tied values in a max-pooling input"


# ----------------------------------------------------------------------------------------------
# Case writers

CASES = []
FILES = set()


def tensors_to_file(name, tensors):
    out = {}
    for key, t in tensors.items():
        t = t.detach()
        out[key] = (t.to(torch.int64) if t.dtype == torch.int64 else t.to(torch.float32)).contiguous()
    path = os.path.join(DATA, name + ".safetensors")
    # One metadata key only: safetensors writes the metadata map in hash order.
    save_file(out, path, metadata={"generator": "tests/golden/gen.py"})
    FILES.add(name + ".safetensors")


def layer_case(name, op, attrs, inputs, fn, params=None, trainable=(), mode="inference", note=None):
    """One layer applied to `inputs` (list of full-shape tensors).

    `params`: suffix -> tensor (all passed to fn by suffix); `trainable`: the suffixes that get
    gradients. `fn(inputs, params)` returns the output (and may update running stats in place).
    """
    assert name not in {c["name"] for c in CASES}, name
    params = dict(params or {})
    rng = Rand(name + "/grad_output")
    xs = [x.clone().requires_grad_(True) for x in inputs]
    ps = {k: (v.clone().requires_grad_(True) if k in trainable else v.clone()) for k, v in params.items()}
    out = fn(xs, ps)
    grad_output = rng.normal(out.shape)
    wrt = xs + [ps[k] for k in trainable]
    grads = torch.autograd.grad(out, wrt, grad_output)

    tensors = {}
    for k, x in enumerate(inputs):
        tensors[f"input.{k}"] = x
    for suffix, v in params.items():
        tensors[f"param.{LAYER}.{suffix}"] = v
    tensors["output"] = out
    tensors["grad_output"] = grad_output
    for k in range(len(xs)):
        tensors[f"grad.input.{k}"] = grads[k]
    for i, suffix in enumerate(trainable):
        tensors[f"grad.param.{LAYER}.{suffix}"] = grads[len(xs) + i]
    if mode == "training":
        for suffix in ("running_mean", "running_var"):
            if suffix in ps:
                tensors[f"running.{LAYER}.{suffix}"] = ps[suffix]
    tensors_to_file(name, tensors)

    case = {
        "name": name,
        "op": op,
        "attrs": attrs,
        "mode": mode,
        "layer": LAYER,
        "batch": inputs[0].shape[0],
        "inputs": [list(x.shape[1:]) for x in inputs],
        "output": list(out.shape[1:]),
        "file": f"data/{name}.safetensors",
    }
    if note:
        case["note"] = note
    CASES.append(case)


def loss_case(name, loss, x, target, fn):
    assert name not in {c["name"] for c in CASES}, name
    x = x.clone().requires_grad_(True)
    value = fn(x, target)
    (grad,) = torch.autograd.grad(value, [x])
    tensors_to_file(
        name,
        {"input.0": x, "target": target, "loss": value.reshape(1), "grad.input.0": grad},
    )
    CASES.append(
        {
            "name": name,
            "op": "loss",
            "loss": loss,
            "shape": list(x.shape),
            "target_dtype": "i64" if target.dtype == torch.int64 else "f32",
            "file": f"data/{name}.safetensors",
        }
    )


# ----------------------------------------------------------------------------------------------
# Layers


def window_attrs(kernel, stride, pad, dilation=(1, 1), ceil_mode=False):
    return {
        "kernel": list(kernel),
        "stride": list(stride),
        "pad": list(pad),
        "dilation": list(dilation),
        "ceil_mode": ceil_mode,
    }


def conv_cases():
    specs = [
        # name, input shape, out, kernel, stride, pad, dilation, groups, bias
        ("conv_k3_p1", (2, 3, 7, 9), 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
        ("conv_asym_nobias", (2, 5, 9, 7), 6, (3, 2), (2, 1), (1, 0), (1, 1), 1, False),
        ("conv_asym_stride_pad", (3, 3, 8, 11), 10, (5, 3), (2, 3), (2, 1), (1, 1), 1, True),
        ("conv_dilation", (2, 3, 11, 9), 5, (3, 3), (1, 1), (2, 1), (2, 1), 1, True),
        ("conv_groups2", (2, 6, 7, 7), 10, (3, 3), (1, 1), (1, 1), (1, 1), 2, True),
        ("conv_groups3_nobias", (2, 6, 6, 5), 9, (1, 3), (1, 2), (0, 1), (1, 1), 3, False),
        ("conv_depthwise", (2, 5, 8, 7), 5, (3, 3), (2, 2), (1, 1), (1, 1), 5, True),
        ("conv_depthwise_mult2_dil", (2, 5, 7, 6), 10, (3, 2), (1, 1), (1, 1), (1, 2), 5, False),
        ("conv_1x1_s2", (3, 10, 7, 9), 6, (1, 1), (2, 2), (0, 0), (1, 1), 1, True),
        ("conv_pad_gt_half_batch1", (1, 3, 5, 5), 3, (3, 3), (1, 1), (2, 2), (1, 1), 1, True),
        ("conv_k7_s2_p3", (2, 3, 13, 11), 5, (7, 7), (2, 2), (3, 3), (1, 1), 1, True),
    ]
    for name, shape, out, k, s, p, d, g, bias in specs:
        r = Rand(name)
        x = r.normal(shape)
        fan_in = shape[1] // g * k[0] * k[1]
        params = {"weight": r.normal((out, shape[1] // g, k[0], k[1]), 1 / math.sqrt(fan_in))}
        if bias:
            params["bias"] = r.normal((out,), 0.5)
        attrs = {"out_channels": out, **window_attrs(k, s, p, d), "groups": g, "bias": bias}

        def fn(xs, ps, s=s, p=p, d=d, g=g):
            return F.conv2d(xs[0], ps["weight"], ps.get("bias"), s, p, d, g)

        layer_case(name, "conv", attrs, [x], fn, params, tuple(params))


def pool_cases():
    maxpool = [
        # name, shape, kernel, stride, pad, dilation, ceil
        ("maxpool_k2_s2", (2, 3, 8, 8), (2, 2), (2, 2), (0, 0), (1, 1), False),
        ("maxpool_k3_s2_p1", (2, 5, 9, 7), (3, 3), (2, 2), (1, 1), (1, 1), False),
        ("maxpool_asym", (2, 6, 9, 8), (3, 2), (2, 1), (1, 0), (1, 1), False),
        ("maxpool_ceil", (2, 3, 8, 10), (3, 3), (2, 2), (0, 0), (1, 1), True),
        ("maxpool_ceil_pad", (2, 5, 6, 7), (3, 3), (2, 2), (1, 1), (1, 1), True),
        ("maxpool_dilation", (2, 3, 9, 10), (3, 2), (1, 2), (1, 1), (2, 1), False),
        ("maxpool_ceil_asym_batch3", (3, 10, 7, 5), (2, 3), (2, 2), (1, 1), (1, 1), True),
    ]
    for name, shape, k, s, p, d, ceil in maxpool:
        x = Rand(name).normal(shape)
        assert_no_ties(x, name)

        def fn(xs, ps, k=k, s=s, p=p, d=d, ceil=ceil):
            return F.max_pool2d(xs[0], k, s, p, d, ceil_mode=ceil)

        layer_case(name, "maxpool", window_attrs(k, s, p, d, ceil), [x], fn)

    avgpool = [
        # name, shape, kernel, stride, pad, ceil, include_pad
        ("avgpool_k2_s2", (2, 3, 8, 6), (2, 2), (2, 2), (0, 0), False, True),
        ("avgpool_pad_incl", (2, 5, 7, 9), (3, 3), (2, 2), (1, 1), False, True),
        ("avgpool_pad_excl", (2, 5, 7, 9), (3, 3), (2, 2), (1, 1), False, False),
        ("avgpool_asym_excl", (2, 6, 9, 7), (3, 2), (2, 1), (1, 1), False, False),
        ("avgpool_asym_incl", (3, 3, 9, 7), (3, 2), (2, 1), (1, 1), False, True),
        ("avgpool_ceil_incl", (2, 3, 8, 7), (3, 3), (2, 2), (1, 1), True, True),
        ("avgpool_ceil_excl", (2, 3, 8, 7), (3, 3), (2, 2), (1, 1), True, False),
        ("avgpool_ceil_nopad", (2, 10, 6, 5), (2, 2), (2, 2), (0, 0), True, True),
    ]
    for name, shape, k, s, p, ceil, incl in avgpool:
        x = Rand(name).normal(shape)

        def fn(xs, ps, k=k, s=s, p=p, ceil=ceil, incl=incl):
            return F.avg_pool2d(xs[0], k, s, p, ceil_mode=ceil, count_include_pad=incl)

        attrs = {**window_attrs(k, s, p, (1, 1), ceil), "include_pad": incl}
        layer_case(name, "avgpool", attrs, [x], fn)

    # torch.nn.LPPool2d(norm_type=2): no padding; ceil mode is left out because torch computes it
    # as avg_pool2d(x^2) * kh * kw, which is not the sum of squares for clipped windows.
    l2pool = [
        ("l2pool_k2_s2", (2, 3, 8, 6), (2, 2), (2, 2)),
        ("l2pool_k3_s2", (2, 5, 7, 9), (3, 3), (2, 2)),
        ("l2pool_asym", (2, 6, 7, 8), (3, 2), (1, 2)),
    ]
    for name, shape, k, s in l2pool:
        x = Rand(name).normal(shape)

        def fn(xs, ps, k=k, s=s):
            return F.lp_pool2d(xs[0], 2, k, s)

        layer_case(name, "l2pool", window_attrs(k, s, (0, 0)), [x], fn)


def adaptive_l2(x, out):
    """sqrt(sum of squares) over PyTorch's adaptive bins (torch has no adaptive LP pooling):
    bin i of n over a size-s axis is floor(i*s/n) .. ceil((i+1)*s/n)."""
    h, w = x.shape[2:]
    rows = []
    for i in range(out[0]):
        h0, h1 = (i * h) // out[0], -((-(i + 1) * h) // out[0])
        cols = []
        for j in range(out[1]):
            w0, w1 = (j * w) // out[1], -((-(j + 1) * w) // out[1])
            cols.append(x[:, :, h0:h1, w0:w1].pow(2).sum((2, 3)).sqrt())
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def global_adaptive_cases():
    for kind in ("avg", "max", "l2"):
        for i, shape in enumerate([(2, 5, 7, 5), (3, 10, 3, 4)]):
            name = f"global_{kind}pool_{i}"
            x = Rand(name).normal(shape)
            if kind == "max":
                assert_no_ties(x, name)

            def fn(xs, ps, kind=kind):
                x = xs[0]
                if kind == "avg":
                    return F.adaptive_avg_pool2d(x, 1)
                if kind == "max":
                    return F.adaptive_max_pool2d(x, 1)
                return F.lp_pool2d(x, 2, tuple(x.shape[2:]))

            layer_case(name, f"global_{kind}pool", {}, [x], fn)

    adaptive = [
        ("7x5_to_3x2", (2, 3, 7, 5), (3, 2)),
        ("9x6_to_4x4", (2, 5, 9, 6), (4, 4)),
        ("3x4_to_5x6", (2, 6, 3, 4), (5, 6)),  # output larger than input: overlapping bins
    ]
    for kind in ("avg", "max", "l2"):
        for suffix, shape, out in adaptive:
            name = f"adaptive_{kind}pool_{suffix}"
            x = Rand(name).normal(shape)
            if kind == "max":
                assert_no_ties(x, name)

            def fn(xs, ps, kind=kind, out=out):
                if kind == "avg":
                    return F.adaptive_avg_pool2d(xs[0], out)
                if kind == "max":
                    return F.adaptive_max_pool2d(xs[0], out)
                return adaptive_l2(xs[0], out)

            note = "computed with torch slicing on PyTorch's adaptive bin edges" if kind == "l2" else None
            layer_case(name, f"adaptive_{kind}pool", {"output": list(out)}, [x], fn, note=note)

    spp = [
        ("spp_max_124", "max", (2, 3, 9, 7), [1, 2, 4]),
        ("spp_max_31", "max", (2, 5, 6, 5), [3, 1]),
        ("spp_max_level_gt_input", "max", (3, 6, 3, 3), [1, 2, 4]),
        ("spp_avg_123", "avg", (2, 6, 7, 8), [1, 2, 3]),
    ]
    for name, kind, shape, levels in spp:
        x = Rand(name).normal(shape)
        if kind == "max":
            assert_no_ties(x, name)

        def fn(xs, ps, kind=kind, levels=levels):
            pool = F.adaptive_max_pool2d if kind == "max" else F.adaptive_avg_pool2d
            return torch.cat([pool(xs[0], l).flatten(1) for l in levels], 1)

        layer_case(name, "spp", {"kind": kind, "levels": levels}, [x], fn)


def fc_flatten_cases():
    for name, shape, out, bias in [
        ("fc_10_to_5", (3, 10), 5, True),
        ("fc_7_to_6_nobias", (2, 7), 6, False),
        ("fc_12_to_3_batch4", (4, 12), 3, True),
    ]:
        r = Rand(name)
        x = r.normal(shape)
        params = {"weight": r.normal((out, shape[1]), 1 / math.sqrt(shape[1]))}
        if bias:
            params["bias"] = r.normal((out,), 0.5)

        def fn(xs, ps):
            return F.linear(xs[0], ps["weight"], ps.get("bias"))

        layer_case(name, "fc", {"out_features": out, "bias": bias}, [x], fn, params, tuple(params))

    for name, shape in [("flatten_3x5x4", (2, 3, 5, 4)), ("flatten_6x1x1", (3, 6, 1, 1)), ("flatten_5x3x7", (2, 5, 3, 7))]:
        x = Rand(name).normal(shape)
        layer_case(name, "flatten", {}, [x], lambda xs, ps: xs[0].flatten(1))


def activation_cases():
    acts = [
        # keyword, attrs, torch fn, kinks
        ("relu", {}, lambda x: F.relu(x), [0.0]),
        ("leaky_relu", {"slope": 0.01}, lambda x: F.leaky_relu(x, 0.01), [0.0]),
        ("leaky_relu", {"slope": 0.2}, lambda x: F.leaky_relu(x, 0.2), [0.0]),
        ("elu", {"alpha": 1.0}, lambda x: F.elu(x, 1.0), [0.0]),
        ("elu", {"alpha": 0.5}, lambda x: F.elu(x, 0.5), [0.0]),
        ("selu", {}, lambda x: F.selu(x), [0.0]),
        ("sigmoid", {}, lambda x: torch.sigmoid(x), []),
        ("tanh", {}, lambda x: torch.tanh(x), []),
        ("hardtanh", {"min": -1.0, "max": 1.0}, lambda x: F.hardtanh(x, -1.0, 1.0), [-1.0, 1.0]),
        ("hardtanh", {"min": -0.5, "max": 2.0}, lambda x: F.hardtanh(x, -0.5, 2.0), [-0.5, 2.0]),
        ("softsign", {}, lambda x: F.softsign(x), []),
        ("softplus", {"beta": 1.0, "threshold": 20.0}, lambda x: F.softplus(x, 1.0, 20.0), []),
        ("softplus", {"beta": 2.0, "threshold": 1.0}, lambda x: F.softplus(x, 2.0, 1.0), [0.5]),
        ("softplus", {"beta": 0.5, "threshold": 1.0}, lambda x: F.softplus(x, 0.5, 1.0), [2.0]),
    ]
    seen = {}
    for keyword, attrs, act, kinks in acts:
        variant = seen.get(keyword, 0)
        seen[keyword] = variant + 1
        # Two map inputs and one flat input per attribute variant.
        for shape in [(2, 5, 7, 3), (3, 10), (3, 6, 2, 5)]:
            name = f"{keyword}_{variant}_{'x'.join(map(str, shape))}"
            x = away(Rand(name).normal(shape, 1.5), kinks)
            layer_case(name, keyword, attrs, [x], lambda xs, ps, act=act: act(xs[0]))


def prelu_cases():
    for name, shape in [("prelu_5ch", (2, 5, 6, 7)), ("prelu_3ch_batch3", (3, 3, 4, 5)), ("prelu_flat10", (3, 10))]:
        r = Rand(name)
        x = away(r.normal(shape, 1.5), [0.0])
        weight = r.normal((shape[1],), 0.3, 0.2)  # per-channel slopes, some negative

        def fn(xs, ps):
            return F.prelu(xs[0], ps["weight"])

        layer_case(name, "prelu", {}, [x], fn, {"weight": weight}, ("weight",))


def softmax_cases():
    for name, shape, scale in [
        ("softmax_flat10", (3, 10), 2.0),
        ("softmax_flat5_batch4", (4, 5), 1.0),
        ("softmax_map5", (2, 5, 3, 4), 2.0),
        ("softmax_map3_w1", (2, 3, 5, 1), 1.0),
    ]:
        x = Rand(name).normal(shape, scale)
        layer_case(name, "softmax", {}, [x], lambda xs, ps: F.softmax(xs[0], 1))


def bn_cases():
    specs = [
        # name, shape, mode, eps, momentum
        ("bn_eval_map5", (2, 5, 6, 7), "inference", 1e-5, 0.1),
        ("bn_eval_flat10", (4, 10), "inference", 1e-5, 0.1),
        ("bn_eval_map3_eps", (3, 3, 4, 5), "inference", 1e-3, 0.1),
        ("bn_train_map6", (2, 6, 5, 7), "training", 1e-5, 0.1),
        ("bn_train_map3", (3, 3, 4, 5), "training", 1e-5, 0.1),
        ("bn_train_flat10", (5, 10), "training", 1e-5, 0.1),
        ("bn_train_map5_mom03", (2, 5, 3, 3), "training", 1e-3, 0.3),
    ]
    for name, shape, mode, eps, momentum in specs:
        r = Rand(name)
        c = shape[1]
        # Inputs with a per-channel offset and scale, so the normalisation does something.
        bshape = (1, c) + (1,) * (len(shape) - 2)
        x = f32(r.normal(shape) * r.uniform(bshape, 0.5, 2.0) + r.normal(bshape))
        params = {
            "weight": r.normal((c,), 0.3, 1.0),
            "bias": r.normal((c,), 0.5),
            "running_mean": r.normal((c,), 0.5),
            "running_var": r.uniform((c,), 0.5, 2.0),
        }
        training = mode == "training"

        def fn(xs, ps, training=training, eps=eps, momentum=momentum):
            # In training mode this updates ps["running_*"] in place (momentum, unbiased variance).
            return F.batch_norm(
                xs[0], ps["running_mean"], ps["running_var"], ps["weight"], ps["bias"], training, momentum, eps
            )

        attrs = {"eps": eps, "momentum": momentum}
        layer_case(name, "bn", attrs, [x], fn, params, ("weight", "bias"), mode)


def lrn_cases():
    specs = [
        ("lrn_alexnet", (2, 10, 5, 6), 5, 1e-4, 0.75, 2.0, 1.0),
        ("lrn_even_size4", (2, 6, 5, 3), 4, 0.5, 0.75, 1.0, 1.5),
        ("lrn_size3", (2, 5, 4, 4), 3, 1.0, 0.5, 1.5, 1.5),
        ("lrn_size2", (3, 5, 3, 4), 2, 0.3, 0.75, 1.0, 1.5),
        ("lrn_size7_gt_channels", (2, 3, 4, 5), 7, 0.8, 1.0, 1.0, 1.5),
    ]
    for name, shape, size, alpha, beta, k, scale in specs:
        x = Rand(name).normal(shape, scale)

        def fn(xs, ps, size=size, alpha=alpha, beta=beta, k=k):
            return F.local_response_norm(xs[0], size, alpha, beta, k)

        layer_case(name, "lrn", {"size": size, "alpha": alpha, "beta": beta, "k": k}, [x], fn)


def dropout_cases():
    for name, shape, p in [("dropout_eval_map", (2, 5, 4, 3), 0.5), ("dropout_eval_flat", (3, 10), 0.2)]:
        x = Rand(name).normal(shape)
        layer_case(name, "dropout", {"p": p}, [x], lambda xs, ps, p=p: F.dropout(xs[0], p, training=False))


def concat_add_cases():
    for name, shapes in [
        ("concat_3_5", [(2, 3, 5, 4), (2, 5, 5, 4)]),
        ("concat_6_1_10", [(2, 6, 3, 7), (2, 1, 3, 7), (2, 10, 3, 7)]),
        ("concat_flat_4_6", [(3, 4), (3, 6)]),
    ]:
        r = Rand(name)
        xs = [r.normal(s) for s in shapes]
        layer_case(name, "concat", {}, xs, lambda xs, ps: torch.cat(xs, 1))

    for name, shapes in [
        ("add_2", [(2, 5, 4, 3)] * 2),
        ("add_3", [(2, 6, 3, 5)] * 3),
        ("add_flat_2", [(3, 10)] * 2),
    ]:
        r = Rand(name)
        xs = [r.normal(s) for s in shapes]
        layer_case(name, "add", {}, xs, lambda xs, ps: sum(xs[1:], xs[0]))


# ----------------------------------------------------------------------------------------------
# Losses


def margin_ok_rows(r, n, c, scale, ok):
    """Draws rows of an [n, c] tensor and class targets until `ok(row, target)` holds for each."""
    rows, targets = [], []
    for _ in range(n):
        while True:
            row = r.normal((c,), scale)
            t = int(r.classes(1, c)[0])
            if ok(row, t):
                rows.append(row)
                targets.append(t)
                break
    return torch.stack(rows), torch.tensor(targets, dtype=torch.int64)


def loss_cases():
    for name, shape in [("ce_4x5", (4, 5)), ("ce_3x10", (3, 10)), ("ce_6x3", (6, 3))]:
        r = Rand(name)
        x = r.normal(shape, 2.0)
        t = r.classes(shape[0], shape[1])
        loss_case(name, "cross_entropy", x, t, lambda x, t: F.cross_entropy(x, t))
    # The output of a global pool, [N, C, 1, 1], is accepted as [N, C] logits.
    name = "ce_2x6x1x1"
    r = Rand(name)
    x = r.normal((2, 6, 1, 1), 2.0)
    t = r.classes(2, 6)
    loss_case(name, "cross_entropy", x, t, lambda x, t: F.cross_entropy(x.flatten(1), t))

    def hinge_ok(row, t):
        z = 1.0 - row[t] + row
        z[t] = 10.0
        return bool((z.abs() > KINK_MARGIN).all())

    for name, shape in [("multi_margin_4x5", (4, 5)), ("multi_margin_3x10", (3, 10)), ("multi_margin_6x3", (6, 3))]:
        x, t = margin_ok_rows(Rand(name), shape[0], shape[1], 1.0, hinge_ok)
        loss_case(name, "multi_margin", x, t, lambda x, t: F.multi_margin_loss(x, t, p=1, margin=1.0))

    regression = [
        ("mse", lambda x, t: F.mse_loss(x, t), []),
        ("l1", lambda x, t: F.l1_loss(x, t), [0.0]),
        ("huber", lambda x, t: F.huber_loss(x, t, delta=1.0), [-1.0, 0.0, 1.0]),
    ]
    for loss, fn, kinks in regression:
        for shape in [(4, 6), (2, 3, 4, 5), (3, 1)]:
            name = f"{loss}_{'x'.join(map(str, shape))}"
            r = Rand(name)
            x = r.normal(shape, 1.5)
            t = r.normal(shape)
            x = f32(t + away(x - t, kinks))  # keep x - t off the kinks
            for k in kinks:
                assert ((x - t - k).abs() > KINK_MARGIN / 2).all(), name
            loss_case(name, loss, x, t, fn)


# ----------------------------------------------------------------------------------------------
# Whole models (tests/golden/models/): a section of its own, which leaves the op cases alone

MODELS = os.path.join(HERE, "models")
MODEL_FILES = set()
# Every ReLU input is at least this far from 0 (the draw is repeated with the next seed until
# it is), so that the f32 interpreter and torch's float64 arithmetic, which differ by about
# 1e-7, cannot disagree on which side of the kink a value falls.
RELU_MARGIN = 1e-5


class Recorder:
    """Collects the inputs of every ReLU of a forward pass (to check the kink margin)."""

    def __init__(self):
        self.pre_relu = []

    def relu(self, x):
        self.pre_relu.append(x.detach())
        return F.relu(x)


class LeNet5(torch.nn.Module):
    """examples/lenet5.cnn: the same layers under the same names (`c1`, `c3`, `c5`, `f6`,
    `output`; the pooling and tanh layers own no parameters)."""

    def __init__(self, classes=10):
        super().__init__()
        nn = torch.nn
        self.c1 = nn.Conv2d(1, 6, 5)
        self.s2 = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.s4 = nn.AvgPool2d(2)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, classes)

    def forward(self, x, rec):
        x = self.s2(torch.tanh(self.c1(x)))
        x = self.s4(torch.tanh(self.c3(x)))
        x = torch.tanh(self.c5(x)).flatten(1)
        return self.output(torch.tanh(self.f6(x)))


class BasicBlock(torch.nn.Module):
    """The `basic` block of tests/golden/models/tiny_resnet.cnn (torchvision's BasicBlock)."""

    def __init__(self, cin, width, stride=1):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x, rec):
        r = self.bn2(self.conv2(rec.relu(self.bn1(self.conv1(x)))))
        s = x if self.downsample is None else self.downsample(x)
        return rec.relu(r + s)


class TinyResNet(torch.nn.Module):
    """tests/golden/models/tiny_resnet.cnn."""

    def __init__(self, classes=7):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 12, 2)
        self.fc = nn.Linear(12, classes)

    def forward(self, x, rec):
        x = self.maxpool(rec.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x, rec), rec)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomize(model, r):
    """Random float32-rounded values for every parameter and buffer: weights ~ N(0, 1/fan_in)
    (tanh and ReLU nets both stay in range), biases ~ N(0, 0.1), batch norm gamma ~ N(1, 0.2),
    beta ~ N(0, 0.2), running mean ~ N(0, 0.3), running var ~ U(0.5, 2), and a step counter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            module = model.get_submodule(name.rsplit(".", 1)[0])
            if isinstance(module, torch.nn.BatchNorm2d):
                p.copy_(r.normal(p.shape, 0.2, 1.0) if name.endswith(".weight") else r.normal(p.shape, 0.2))
            elif name.endswith(".weight"):
                fan_in = p[0].numel()
                p.copy_(r.normal(p.shape, 1 / math.sqrt(fan_in)))
            else:
                p.copy_(r.normal(p.shape, 0.1))
        for name, b in model.named_buffers():
            if name.endswith(".running_mean"):
                b.copy_(r.normal(b.shape, 0.3))
            elif name.endswith(".running_var"):
                b.copy_(r.uniform(b.shape, 0.5, 2.0))
            elif name.endswith(".num_batches_tracked"):
                b.fill_(int(r.classes(1, 1000)[0]))


def model_case(name, source, model, input_shape, batch, classes):
    model = model.to(torch.float64)
    for attempt in range(100):
        r = Rand(f"model/{name}" + (f"/{attempt}" if attempt else ""))
        randomize(model, r)
        model.eval()
        x = r.normal((batch, *input_shape))
        target = r.classes(batch, classes)

        rec = Recorder()
        xg = x.clone().requires_grad_(True)
        params = dict(model.named_parameters())
        out = model(xg, rec)
        loss = F.cross_entropy(out, target)
        grads = torch.autograd.grad(loss, [xg] + list(params.values()))
        if all(float(t.abs().min()) > RELU_MARGIN for t in rec.pre_relu):
            break
    else:
        raise AssertionError(f"{name}: no draw keeps the ReLU inputs off 0")

    state = {}
    for key, t in model.state_dict().items():
        state[key] = (t.to(torch.int64) if t.dtype == torch.int64 else t.to(torch.float32)).contiguous()
    grad_tensors = {"input": grads[0].to(torch.float32).contiguous()}
    for (key, _), g in zip(params.items(), grads[1:]):
        grad_tensors[key] = g.to(torch.float32).contiguous()

    def save_npy(suffix, array):
        path = os.path.join(MODELS, f"{name}.{suffix}.npy")
        np.save(path, array)
        MODEL_FILES.add(os.path.basename(path))

    def save_st(suffix, tensors):
        path = os.path.join(MODELS, f"{name}.{suffix}.safetensors")
        save_file(tensors, path, metadata={"generator": "tests/golden/gen.py"})
        MODEL_FILES.add(os.path.basename(path))

    save_st("weights", state)
    save_npy("input", x.to(torch.float32).numpy())
    save_npy("output", out.detach().to(torch.float32).numpy())
    save_npy("target", target.numpy().astype(np.int64))
    save_st("grads", grad_tensors)
    return {
        "name": name,
        "source": source,
        "model": name,
        "input_shape": list(input_shape),
        "batch": batch,
        "classes": classes,
        "weights": f"{name}.weights.safetensors",
        "input": f"{name}.input.npy",
        "output": f"{name}.output.npy",
        "loss": "ce",
        "target": f"{name}.target.npy",
        "loss_value": loss.item(),
        "seed_attempt": attempt,
        "grads": f"{name}.grads.safetensors",
        "parameters": sum(p.numel() for p in params.values()),
    }


TORCHVISION_MODELS = ["resnet18", "resnet50", "alexnet", "vgg11"]


def torchvision_manifests():
    """`state_dict` key -> shape of torchvision's models (no weights are downloaded: the
    models are built with `weights=None`). Returns the index entries, or None without
    torchvision (the committed manifests are then left as they are)."""
    try:
        import torchvision
    except ImportError:
        print("torchvision is not installed: the torchvision manifests were not regenerated")
        return None
    out_dir = os.path.join(MODELS, "torchvision")
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for name in TORCHVISION_MODELS:
        model = getattr(torchvision.models, name)(weights=None)
        state = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        manifest = {
            "model": name,
            "torchvision_version": torchvision.__version__,
            "torch_version": torch.__version__,
            "state_dict": state,
        }
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(manifest, f, separators=(",", ":"))
            f.write("\n")
        entries.append({"model": name, "example": f"examples/{name}.cnn", "manifest": f"torchvision/{name}.json"})
    return entries, torchvision.__version__


def models_main():
    os.makedirs(MODELS, exist_ok=True)
    entries = [
        model_case("lenet5", "examples/lenet5.cnn", LeNet5(), (1, 32, 32), 5, 10),
        model_case("tiny_resnet", "tests/golden/models/tiny_resnet.cnn", TinyResNet(), (3, 15, 13), 4, 7),
    ]
    for stale in sorted(set(os.listdir(MODELS)) - MODEL_FILES):
        if stale.endswith(".npy") or stale.endswith(".safetensors"):
            os.remove(os.path.join(MODELS, stale))
    index_path = os.path.join(MODELS, "models.json")
    index = {
        "generator": "tests/golden/gen.py (models section)",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "safetensors_version": safetensors.__version__,
        "python_version": sys.version.split()[0],
        "models": entries,
    }
    tv = torchvision_manifests()
    if tv is not None:
        index["torchvision"], index["torchvision_version"] = tv
    elif os.path.exists(index_path):
        with open(index_path) as f:
            old = json.load(f)
        for key in ("torchvision", "torchvision_version"):
            if key in old:
                index[key] = old[key]
    with open(index_path, "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(MODELS, f)) for f in MODEL_FILES)
    print(f"{len(entries)} models, {total / 1024:.0f} KiB")
    for e in entries:
        print(f"  {e['name']}: {e['parameters']} parameters, ce loss {e['loss_value']:.6f}")


# ----------------------------------------------------------------------------------------------


def main():
    if sys.argv[1:] == ["--models"]:
        models_main()
        return
    if sys.argv[1:]:
        sys.exit(f"usage: {sys.argv[0]} [--models]")
    models_main()
    os.makedirs(DATA, exist_ok=True)
    conv_cases()
    pool_cases()
    global_adaptive_cases()
    fc_flatten_cases()
    activation_cases()
    prelu_cases()
    softmax_cases()
    bn_cases()
    lrn_cases()
    dropout_cases()
    concat_add_cases()
    loss_cases()

    for stale in sorted(set(os.listdir(DATA)) - FILES):
        if stale.endswith(".safetensors"):
            os.remove(os.path.join(DATA, stale))

    index = {
        "generator": "tests/golden/gen.py",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "safetensors_version": safetensors.__version__,
        "python_version": sys.version.split()[0],
        "cases": CASES,
    }
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")

    counts = {}
    for c in CASES:
        key = c["op"] if c["op"] != "loss" else "loss:" + c["loss"]
        counts[key] = counts.get(key, 0) + 1
    total = sum(os.path.getsize(os.path.join(DATA, f)) for f in FILES)
    print(f"{len(CASES)} cases, {total / 1024:.0f} KiB, torch {torch.__version__}")
    for key, n in counts.items():
        print(f"  {key}: {n}")


if __name__ == "__main__":
    main()
