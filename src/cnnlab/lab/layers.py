"""Per-layer conv arithmetic from the formulas: output size, parameters, receptive field, jump, MACs.

W_out = floor((W_in + 2P - D(F-1) - 1) / S) + 1 per dimension; parameters F*F*C_in*C_out/groups
(+ C_out bias); receptive field r_out = r_in + (F-1)*D*j_in, jump j_out = j_in*S.
Receptive field and jump follow the execution chain, so inside a branch (a ResNet shortcut) they
describe the main path. Layers are taken in execution order. Where a layer's input is the previous
layer's output, its input size is the previous formula result (a pure chain); after a branch merge
or a functional op (a residual add, a concatenation, a resize) the input size is read from a
shape-only trace on the meta device (no data) and the row is marked. `check_against_forward`
compares every row with a real forward pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.arithmetic import conv_output_size

FORMULA_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.Linear)


@dataclass
class LayerRow:
    name: str
    kind: str
    input_shape: tuple[int, ...]  # (C, H, W) or (features,)
    output_shape: tuple[int, ...]  # from the formula
    params: int
    macs: int  # multiply-adds for one image
    receptive_field: int  # pixels, along the execution chain
    jump: int  # input pixels between neighbouring outputs
    from_trace: bool  # input size read from the shape trace (branch merge / functional op)
    note: str = ""  # size lost to flooring, or the padding that would keep the size


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _formula(module: nn.Module, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int, int, int, int]:
    """(output shape, params, macs, kernel, stride) of one layer from its hyper-parameters."""
    if isinstance(module, nn.Linear):
        params = module.in_features * module.out_features + (module.out_features if module.bias is not None else 0)
        return (module.out_features,), params, module.in_features * module.out_features, 1, 1
    c, h, w = shape
    k, s, p, d = (_pair(getattr(module, a, 1)) for a in ("kernel_size", "stride", "padding", "dilation"))
    if isinstance(module, nn.AvgPool2d | nn.MaxPool2d) and module.stride is None:
        s = k
    ceil = getattr(module, "ceil_mode", False)
    out_hw = [_size(n, k[i], s[i], p[i], d[i], ceil) for i, n in enumerate((h, w))]
    if isinstance(module, nn.Conv2d):
        c_out = module.out_channels
        per_out = k[0] * k[1] * c // module.groups
        params = per_out * c_out + (c_out if module.bias is not None else 0)
        return (c_out, *out_hw), params, per_out * c_out * out_hw[0] * out_hw[1], k[0], s[0]
    return (c, *out_hw), 0, 0, k[0], s[0]


def _size(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    out = conv_output_size(n, k, stride=s, padding=p, dilation=d)
    if ceil and (n + 2 * p - d * (k - 1) - 1) % s and (out * s) < n + p:  # PyTorch's ceil_mode rule
        out += 1
    return out


def layer_table(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """The formula table of every conv, pool and linear layer of `model` for one C x H x W input."""
    trace = _trace_shapes(model, input_shape)
    rows: list[LayerRow] = []
    prev_out: tuple[int, ...] | None = None
    rf, jump = 1, 1
    for name, module, traced_in, traced_out in trace:
        flattened = prev_out is not None and len(traced_in) == 1 and traced_in[0] == _numel(prev_out)
        from_trace = prev_out is None or (traced_in != prev_out and not flattened)
        shape = traced_in if from_trace or flattened else prev_out
        out, params, macs, k, s = _formula(module, shape)
        if isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            rf, jump = rf + (k - 1) * _pair(module.dilation if hasattr(module, "dilation") else 1)[0] * jump, jump * s
        note = _size_note(module, shape, out, k, s)
        rows.append(
            LayerRow(name, type(module).__name__, shape, out, params, macs, rf, jump, from_trace and bool(rows), note)
        )
        if min(out) < 1:
            raise CnnlabError(
                f"layer {name} ({type(module).__name__}) turns a {'x'.join(map(str, shape))} input into "
                f"{'x'.join(map(str, out))}: the image is too small for this model "
                f"(use a larger --input, or padding={k // 2} to keep the size)"
            )
        prev_out = traced_out if out != traced_out else out
    return rows


def _size_note(module: nn.Module, shape, out, k: int, s: int) -> str:
    """Say when a layer loses pixels: a stride-1 conv that shrinks, or a floor that drops a border."""
    if isinstance(module, nn.Linear):
        return ""
    h = shape[1]
    p = _pair(module.padding)[0]
    if isinstance(module, nn.Conv2d) and s == 1 and out[1] < h:
        return f"shrinks {h}->{out[1]}; padding={k // 2} keeps {h}x{shape[2]}"
    lost = (h + 2 * p - (k - 1) - 1) % s - p  # leftover rows at the far edge, less the padding there
    if lost > 0:
        return f"floor drops {lost} px of {h} (pad or resize to {h + s - lost - p if p == 0 else h + 1})"
    return ""


def _trace_shapes(model: nn.Module, input_shape: tuple[int, int, int]):
    """(name, module, input shape, output shape) of each formula layer, from a meta-device run (no data)."""
    meta = copy.deepcopy(model).to("meta")
    originals = dict(model.named_modules())
    records = []

    def record(name):
        def hook(_module, inputs, output):
            records.append((name, originals[name], tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))

        return hook

    for name, module in meta.named_modules():
        if isinstance(module, FORMULA_LAYERS):
            module.register_forward_hook(record(name))
    try:
        with torch.no_grad():
            meta.eval()(torch.empty(1, *input_shape, device="meta"))
    except RuntimeError as exc:
        size = "x".join(map(str, input_shape))
        where = f" after layer {records[-1][0]}" if records else ""
        raise CnnlabError(
            f"a {size} input does not fit this model{where}: {str(exc).splitlines()[0][:120]} (use a larger --input)"
        ) from exc
    return records


def check_against_forward(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """Mismatches between the formula table and a real forward pass (empty = all agree)."""
    real: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(_module, _inputs, output):
            real.setdefault(name, tuple(output.shape[1:]))

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, FORMULA_LAYERS)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    problems = []
    for row in layer_table(model, input_shape):
        if real.get(row.name) != row.output_shape:
            problems.append(f"{row.name}: formula {row.output_shape}, forward {real.get(row.name)}")
        actual = sum(p.numel() for p in dict(model.named_modules())[row.name].parameters(recurse=False))
        if actual != row.params:
            problems.append(f"{row.name}: formula {row.params} parameters, module has {actual}")
    return problems


def format_table(rows: list[LayerRow]) -> str:
    head = f"{'layer':<34}{'type':<11}{'input':>14}{'output':>14}{'params':>12}{'MACs':>14}{'RF':>6}{'jump':>6}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = "*" if r.from_trace else " "
        lines.append(
            f"{r.name[:33]:<34}{r.kind:<11}{'x'.join(map(str, r.input_shape)) + mark:>14}"
            f"{'x'.join(map(str, r.output_shape)):>14}{r.params:>12,}{r.macs:>14,}"
            f"{r.receptive_field:>6}{r.jump:>6}  {r.note}"
        )
    total_p, total_m = sum(r.params for r in rows), sum(r.macs for r in rows)
    lines += ["-" * len(head), f"{'total (conv + linear layers)':<73}{total_p:>12,}{total_m:>14,}",
              "* input size after a branch merge or functional op, read from a shape-only trace"]  # fmt: skip
    return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, int, int]:
    """`1x28x28` -> (1, 28, 28): channels and a square image."""
    parts = text.lower().split("x")
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise CnnlabError(f"--input '{text}' is not CxHxW (e.g. 1x28x28 or 3x32x32)") from None
    if h != w or min(c, h) < 1:
        raise CnnlabError(f"--input '{text}': give positive sizes with a square image (H == W)")
    return c, h, w


def layers_report(model_name: str, *, input_shape: str = "1x28x28", classes: int = 10) -> str:
    """`cnnlab layers`: the per-layer table from the formulas and whether a real forward pass agrees."""
    shape = parse_shape(input_shape)
    net = create_model(model_name, num_classes=classes, in_channels=shape[0], image_size=shape[1])
    rows = layer_table(net, shape)
    problems = check_against_forward(net, shape)
    verdict = f"formula == forward pass for all {len(rows)} layers" if not problems else problems
    return f"{format_table(rows)}\ncheck: {verdict}"
