"""Weight initialisation compared: the same model, seed and batch order, trained once per scheme.

The lesson on real data: all-zero and constant weights cannot break the symmetry between hidden units
and barely learn; weights scaled by 1/sqrt(fan_in) (uniform, normal, Xavier, Kaiming) train well.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import DataConfig, TrainConfig
from cnnlab.data.batches import InMemoryBatches, Normalization
from cnnlab.data.sources import load_source
from cnnlab.data.splits import make_splits
from cnnlab.errors import unknown_choice
from cnnlab.figures import new_figure
from cnnlab.files import save_figure_atomic
from cnnlab.models import create_model, describe_model
from cnnlab.runs import refuse_existing
from cnnlab.training.fit import evaluate_loss


def _scaled_uniform(w: torch.Tensor) -> None:
    bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(w)[0])
    nn.init.uniform_(w, -bound, bound)


def _scaled_normal(w: torch.Tensor) -> None:
    nn.init.normal_(w, 0.0, 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(w)[0]))


SCHEMES: dict[str, Callable[[torch.Tensor], None] | None] = {
    "zeros": nn.init.zeros_,
    "ones": nn.init.ones_,
    "uniform": _scaled_uniform,  # U(-1/sqrt(n_in), +1/sqrt(n_in)), the course's "general rule"
    "normal": _scaled_normal,  # N(0, 1/sqrt(n_in))
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "default": None,  # PyTorch's own (kaiming_uniform with a=sqrt(5), biases uniform)
}


def apply_init(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every Linear and Conv weight with `scheme`, biases to zero ("default" keeps PyTorch's)."""
    if scheme not in SCHEMES:
        raise unknown_choice("init scheme", scheme, SCHEMES)
    init = SCHEMES[scheme]
    if init is None:
        return model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                init(m.weight)
                if m.bias is not None:
                    m.bias.zero_()
    return model


@dataclass
class InitResult:
    scheme: str
    step_losses: list[float]  # training loss of every batch
    valid_loss: float
    valid_acc: float


def compare_inits(
    build: Callable[[], nn.Module], train_batches, valid_batches, *, schemes: list[str], epochs: int, lr: float,
    seed: int, log: Callable[[str], None] = print,
) -> list[InitResult]:  # fmt: skip
    """Train a fresh `build()` per scheme with SGD (momentum 0.9, constant lr), same seed and batch order."""
    results = []
    for scheme in schemes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = apply_init(build(), scheme).to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            losses = []
            for epoch in range(1, epochs + 1):
                model.train()
                train_batches.set_epoch(epoch)
                for x, y in train_batches:
                    loss = F.cross_entropy(model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
            valid_loss, valid_acc = evaluate_loss(model, valid_batches)
        results.append(InitResult(scheme, losses, valid_loss, valid_acc))
        log(f"{scheme:<16} final train loss {sum(losses[-20:]) / min(20, len(losses)):.4f}  "
            f"valid loss {valid_loss:.4f}  valid acc {100 * valid_acc:5.2f}%")  # fmt: skip
    return results


def init_comparison(
    data: str, model: str, *, schemes: list[str], epochs: int, lr: float, batch_size: int, seed: int,
    dry_run: bool = False, log: Callable[[str], None] = print,
) -> list[InitResult]:  # fmt: skip
    """The course's lesson end to end: `model` on data source `data`, trained once per init scheme (one batch
    each in a dry run). Options are checked before any data is read."""
    TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size)  # validates the numbers
    describe_model(model)
    for name in schemes:
        if name not in SCHEMES:
            raise unknown_choice("init scheme", name, SCHEMES)
    src = load_source(DataConfig(source=data))
    splits = make_splits(src.labels.numpy(), src.partitions, valid_fraction=0.2, test_fraction=0.2, seed=seed)
    norm = Normalization.from_images(src.images[splits["train"]])
    limit = 1 if dry_run else None
    train_b = InMemoryBatches(src.images, src.labels, splits["train"], batch_size=batch_size, norm=norm,
                              shuffle=True, seed=seed, drop_last=True, max_batches=limit)  # fmt: skip
    valid_b = InMemoryBatches(src.images, src.labels, splits["valid"], batch_size=1000, norm=norm, max_batches=limit)

    def build() -> nn.Module:
        return create_model(model, num_classes=len(src.class_names), in_channels=src.channels,
                            image_size=src.image_size)  # fmt: skip

    log(f"{model} on {data}: {len(splits['train'])} train / {len(splits['valid'])} valid images, "
        f"{epochs} epochs of SGD lr {lr} per scheme")  # fmt: skip
    return compare_inits(build, train_b, valid_b, schemes=schemes, epochs=1 if dry_run else epochs, lr=lr,
                         seed=seed, log=log)  # fmt: skip


def plot_init_losses(results: list[InitResult], out, *, title: str) -> None:
    """All schemes' training-loss curves (smoothed over 20 batches) on one figure."""
    fig = new_figure((8, 4.5))
    ax = fig.subplots()
    for r in results:
        k = min(20, len(r.step_losses))
        smooth = np.convolve(r.step_losses, np.ones(k) / k, mode="valid")
        ax.plot(smooth, label=f"{r.scheme} (valid acc {100 * r.valid_acc:.1f}%)")
    ax.set(xlabel="batch", ylabel="training loss (20-batch mean)", title=title)
    ax.set_ylim(0, min(3.0, ax.get_ylim()[1]))
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, out, dpi=90)


def init_compare_command(
    data: str, model: str, *, schemes: list[str] | None, epochs: int, lr: float, batch_size: int, seed: int,
    output: Path, force: bool = False, dry_run: bool = False, log: Callable[[str], None] = print,
) -> None:  # fmt: skip
    """`cnnlab init-compare`: every scheme (or `schemes`) trained alike, the loss curves drawn to `output`."""
    if not dry_run:
        refuse_existing(output, force=force)
    results = init_comparison(data, model, schemes=schemes or list(SCHEMES), epochs=epochs, lr=lr,
                              batch_size=batch_size, seed=seed, dry_run=dry_run, log=log)  # fmt: skip
    if not dry_run:
        plot_init_losses(results, output, title=f"weight initialisation: {model} on {data}")
        log(f"wrote {output}")
