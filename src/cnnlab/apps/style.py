"""`cnnlab stylize CONTENT STYLE`: neural style transfer as Gatys et al. teach it. The output image is
optimised directly: a content loss on one deep layer, a style loss as distances between Gram matrices on
several layers with per-layer weights, a total-variation loss for smoothness; Adam or L-BFGS.

Loss networks:
- VGG-19 with ImageNet weights (torchvision; downloaded when online, or `--weights PATH`), with the course's
  layers: content conv4_2, style conv1_1..conv5_1 weighted 1, 0.75, 0.2, 0.2, 0.2.
- Offline, the default: the EfficientNet-Lite0 backbone whose ImageNet weights ship with pip. Plain Gram losses
  on such networks stylise poorly: Wang, Li and Vasconcelos (CVPR 2021, "Rethinking and Improving the
  Robustness of Image Style Transfer") trace it to feature maps of low entropy (residual connections) and
  apply a softmax to each layer's activations (over all its channels and positions) before the Gram
  matrices and the content comparison ("SWAG"). `smoothing="softmax"` does that here (activations divided by
  their standard deviation first, and scaled so that the maps average 1). Measured on the demo pair at 128 px
  (bench/RESULTS.md), it did not help: the plain Gram losses on Lite0's five stages cut the style loss 53x and
  carried the stain's colours and strokes, while the softmax variant cut its own loss 4-6x and added
  coloured noise. The default is therefore plain Gram losses (`smoothing="none"`), and the softmax stays an
  option. The paper's exact transform may differ from this reading of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageOps, UnidentifiedImageError
from rich.progress import Progress
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.extras import require
from cnnlab.figures import new_figure
from cnnlab.files import save_figure_atomic, write_text_atomic
from cnnlab.models.pretrained import PretrainedClassifier, load_pretrained
from cnnlab.runs import refuse_existing

NETWORKS = ("efficientnet_lite0", "vgg19")
VGG_STYLE = {1: 1.0, 6: 0.75, 11: 0.2, 20: 0.2, 29: 0.2}  # ReLU after conv1_1, 2_1, 3_1, 4_1, 5_1
VGG_CONTENT = 22  # ReLU after conv4_2
LITE_STYLE = {0: 1.0, 1: 0.75, 2: 0.2, 3: 0.2, 4: 0.2}  # the five stages (strides 2..32)
LITE_CONTENT = 3  # stride 16


@dataclass(frozen=True)
class StyleOptions:
    size: int = 256  # px, the output's longer side
    steps: int = 300
    network: str = "efficientnet_lite0"
    weights: str | None = None
    smoothing: str = "none"  # none | softmax (SWAG-style activation smoothing; measured worse here, see module doc)
    optimizer: str = "adam"  # adam | lbfgs
    lr: float = 0.02  # Adam, on pixels in 0..1
    content_weight: float = 1.0
    style_weight: float = 1e3
    tv_weight: float = 1e-2
    init: str = "content"  # content | noise
    seed: int = 0

    def check(self) -> None:
        for what, value, choices in (("--network", self.network, NETWORKS), ("--optimizer", self.optimizer,
                                     ("adam", "lbfgs")), ("--init", self.init, ("content", "noise")),
                                     ("--smoothing", self.smoothing, ("none", "softmax"))):  # fmt: skip
            if value not in choices:
                raise CnnlabError(f"unknown {what} '{value}' (choose from: {', '.join(choices)})")
        if self.size < 64:
            raise CnnlabError(f"--size {self.size} is too small for the loss network's deepest style layer "
                              "(stride 32): use 64 px or more")  # fmt: skip
        if self.steps < 1:
            raise CnnlabError(f"--steps must be >= 1, got {self.steps}")


class LossNetwork(nn.Module):
    """Feature maps at the style layers and the content layer, from normalised 0..1 RGB images."""

    def __init__(self, options: StyleOptions) -> None:
        super().__init__()
        self.kind = options.network
        if self.kind == "vgg19":
            self.body = _vgg19(options.weights)
            self.style_weights, self.content_layer = VGG_STYLE, VGG_CONTENT
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:
            self.body = _lite0(options.weights)
            self.style_weights, self.content_layer = LITE_STYLE, LITE_CONTENT
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def layer_names(self) -> dict[int, str]:
        if self.kind == "vgg19":
            return {1: "conv1_1", 6: "conv2_1", 11: "conv3_1", 20: "conv4_1", 22: "conv4_2", 29: "conv5_1"}
        return {i: f"stage{i}" for i in range(5)}

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = (x - self.mean) / self.std
        wanted = set(self.style_weights) | {self.content_layer}
        if self.kind == "vgg19":
            out = {}
            for i, layer in enumerate(self.body):
                x = layer(x)
                if i in wanted:
                    out[i] = x
                if i >= max(wanted):
                    break
            return out
        maps = self.body.forward_intermediates(x, indices=5, intermediates_only=True)
        return {i: maps[i] for i in wanted}


def _vgg19(weights: str | None) -> nn.Module:
    model = torchvision.models.vgg19()
    if weights:
        state = _read_state(weights)
    else:
        try:
            state = torchvision.models.VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:
            raise CnnlabError(
                f"VGG-19's ImageNet weights are not here and could not be downloaded ({type(exc).__name__}); pass "
                "--weights vgg19-dcbb9e9d.pth, or use the offline default --network efficientnet_lite0"
            ) from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CnnlabError(f"--weights {weights} is not a VGG-19 state_dict ({str(exc).splitlines()[0][:120]})") from exc
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.ReLU):
            model.features[i] = nn.ReLU(inplace=False)
        if isinstance(layer, nn.MaxPool2d):  # Gatys et al.: average pooling gives smoother results
            model.features[i] = nn.AvgPool2d(2, 2)
    return model.features


def _lite0(weights: str | None) -> nn.Module:
    model = PretrainedClassifier(1000, 3, 224, backbone="efficientnet_lite0", strategy="feature-extract")
    load_pretrained(model, weights)
    return model.backbone


def _read_state(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise CnnlabError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CnnlabError(f"{path} is not a readable state_dict ({type(exc).__name__})") from exc


def read_image(path: Path | None, array: np.ndarray | None = None, *, longer: int) -> torch.Tensor:
    """An RGB image [1, 3, H, W] in 0..1, its longer side `longer` px (EXIF orientation applied; any mode)."""
    if array is not None:
        img = Image.fromarray(array)
    else:
        try:
            with Image.open(path) as opened:
                img = ImageOps.exif_transpose(opened)
                img.load()
        except FileNotFoundError as exc:
            raise CnnlabError(f"image not found: {path}") from exc
        except (UnidentifiedImageError, OSError) as exc:
            raise CnnlabError(f"cannot read image {path}: not an image or damaged (pass a JPEG, PNG, ...)") from exc
    img = img.convert("RGB")
    scale = longer / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def smoothed(feature: torch.Tensor, on: bool) -> torch.Tensor:
    """SWAG's softmax over all of a layer's activations, scaled so that they average 1, or the map as is. The
    activations are divided by their standard deviation first (a temperature: on raw EfficientNet activations
    the softmax saturated into a few spikes, with style losses of 1e9)."""
    if not on:
        return feature
    flat = feature.flatten(1)
    return ((flat / flat.std(1, keepdim=True).detach().clamp_min(1e-6)).softmax(1) * flat.shape[1]).view_as(feature)


def gram(feature: torch.Tensor) -> torch.Tensor:
    """Channel correlations [C, C] averaged over positions."""
    f = feature[0].flatten(1)
    return f @ f.T / f.shape[1]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def stylize(content: torch.Tensor, style: torch.Tensor, options: StyleOptions, *,
            progress: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
    """The stylised image [1, 3, H, W] (content's size) and a record: losses per step, Gram distances per style
    layer of the content, the style and the result, the network, layers and time."""
    options.check()
    start = time.perf_counter()
    torch.manual_seed(options.seed)
    net = LossNetwork(options)
    smooth = options.smoothing == "softmax"
    style = F.interpolate(style, size=content.shape[-2:], mode="bilinear", align_corners=False)
    with torch.no_grad():
        targets = {k: gram(smoothed(v, smooth)) for k, v in net(style).items() if k in net.style_weights}
        content_target = smoothed(net(content)[net.content_layer], smooth)
    image = (content.clone() if options.init == "content" else torch.rand_like(content)).requires_grad_(True)

    def losses(x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = net(x)
        style_loss = sum(w * F.mse_loss(gram(smoothed(maps[k], smooth)), targets[k])
                         for k, w in net.style_weights.items())  # fmt: skip
        content_loss = F.mse_loss(smoothed(maps[net.content_layer], smooth), content_target)
        tv = total_variation(x)
        total = options.content_weight * content_loss + options.style_weight * style_loss + options.tv_weight * tv
        return {"total": total, "style": style_loss, "content": content_loss, "tv": tv}

    history: list[dict[str, float]] = []
    if options.optimizer == "adam":
        optimizer = torch.optim.Adam([image], lr=options.lr)
    else:
        optimizer = torch.optim.LBFGS([image], lr=1.0, max_iter=1)
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"stylizing ({options.network})", total=options.steps)
        for _ in range(options.steps):

            def closure():
                optimizer.zero_grad(set_to_none=True)
                parts = losses(image)
                parts["total"].backward()
                history.append({k: v.item() for k, v in parts.items()})
                return parts["total"]

            optimizer.step(closure)
            with torch.no_grad():
                image.clamp_(0, 1)
            bar.update(task, advance=1)
    result = image.detach()
    names = net.layer_names()
    with torch.no_grad():
        distances = {}
        for label, picture in (("content", content), ("style", style), ("result", result)):
            maps = net(picture)
            distances[label] = {names[k]: float(F.mse_loss(gram(smoothed(maps[k], smooth)), targets[k]))
                                for k in net.style_weights}  # fmt: skip
    record = {
        "network": options.network, "smoothing": "softmax (SWAG)" if smooth else "none",
        "style_layers": {names[k]: w for k, w in net.style_weights.items()}, "content_layer": names[net.content_layer],
        "options": asdict(options), "size": list(result.shape[-2:]), "seconds": round(time.perf_counter() - start, 1),
        "style_loss_first": history[0]["style"], "style_loss_last": history[-1]["style"],
        "style_loss_fall": history[0]["style"] / max(history[-1]["style"], 1e-30),
        "gram_distance_to_style": distances, "history": history,
    }  # fmt: skip
    return result, record


def save_outputs(result: torch.Tensor, record: dict[str, Any], output: Path, *, force: bool) -> list[Path]:
    """The image, its loss curve (OUTPUT.loss.png) and the record (OUTPUT.json); nothing is overwritten without
    `force`."""
    paths = [output, output.with_suffix(".loss.png"), output.with_suffix(".json")]
    clash = next((p for p in paths if p.exists()), None)
    if clash is not None and not force:
        raise CnnlabError(f"{clash} already exists (choose another --output or pass --force)")
    output.parent.mkdir(parents=True, exist_ok=True)
    pixels = (result[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(output)
    fig = new_figure((6, 3.5))
    ax = fig.subplots()
    for key in ("style", "content", "total"):
        ax.plot([h[key] for h in record["history"]], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("loss evaluation")
    ax.legend()
    ax.set_title(f"{record['network']} ({record['smoothing']})", fontsize=9)
    save_figure_atomic(fig, paths[1], dpi=100)
    write_text_atomic(paths[2], json.dumps({k: v for k, v in record.items() if k != "history"}, indent=1))
    return paths


def demo_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's astronaut photo as content and its stained-tissue (immunohistochemistry) image as style."""
    from skimage import data  # optional heavy import: scikit-image (bundled photos, only here)

    return data.astronaut(), data.immunohistochemistry()


def format_record(r: dict[str, Any]) -> str:
    d = r["gram_distance_to_style"]
    beaten = sum(d["result"][k] < d["content"][k] for k in d["result"])
    return (f"{r['network']} ({r['smoothing']}), style layers {', '.join(r['style_layers'])}, content layer "
            f"{r['content_layer']}: style loss {r['style_loss_first']:.4g} -> {r['style_loss_last']:.4g} "
            f"({r['style_loss_fall']:.0f}x lower); Gram distance to the style below the content image's at "
            f"{beaten} of {len(d['result'])} style layers; {r['seconds']} s")  # fmt: skip


def stylize_files(
    content: Path | None, style: Path | None, options: StyleOptions, *, demo: bool = False,
    output: Path = Path("stylized.png"), force: bool = False, log: Callable[[str], None] = print,
) -> list[Path]:  # fmt: skip
    """`cnnlab stylize`: CONTENT in the style of STYLE (or the bundled demo pair), the image with its loss curve
    and JSON record written beside `output`. Returns the written paths."""
    options.check()
    if demo == (content is not None or style is not None) or (not demo and (content is None or style is None)):
        raise CnnlabError("give CONTENT and STYLE images, or --demo (and no images)")
    if demo:
        require("skimage", purpose="cnnlab stylize --demo")
    refuse_existing(output, force=force)
    arrays = demo_images() if demo else (None, None)
    content_image = read_image(content, arrays[0], longer=options.size)
    style_image = read_image(style, arrays[1], longer=options.size)
    result, record = stylize(content_image, style_image, options)
    log(format_record(record))
    paths = save_outputs(result, record, output, force=force)
    log(f"wrote {', '.join(map(str, paths))}")
    return paths
