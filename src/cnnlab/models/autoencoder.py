"""The course's three autoencoders, each with a dense bottleneck of `latent` numbers so that they compare at the
same latent size:

- `linear`: flatten -> 256 -> latent -> 256 -> pixels;
- `conv`: two conv + max-pool blocks -> latent -> a transposed-conv decoder (stride 2, kernel 2), the
  course's design; transposed convolutions with overlapping strides are where checkerboard artefacts come from;
- `conv-upsample`: the same encoder -> nearest-neighbour upsampling + 3x3 convolutions (Odena et al. 2016,
  "Deconvolution and checkerboard artifacts"), the usual remedy.

All return logits: the reconstruction is their sigmoid, in [0, 1] like the scaled input.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError

DESIGNS = ("linear", "conv", "conv-upsample")


class Autoencoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def create_autoencoder(design: str, *, channels: int, size: int, latent: int = 32) -> Autoencoder:
    """One of DESIGNS for `channels` x `size` x `size` images; a bad name or size is one clear error."""
    if design not in DESIGNS:
        raise CnnlabError(f"unknown autoencoder '{design}' (choose from: {', '.join(DESIGNS)})")
    if latent < 1:
        raise CnnlabError(f"--latent must be >= 1, got {latent}")
    if design == "linear":
        n = channels * size * size
        encoder = nn.Sequential(nn.Flatten(), nn.Linear(n, 256), nn.ReLU(), nn.Linear(256, latent))
        decoder = nn.Sequential(
            nn.Linear(latent, 256), nn.ReLU(), nn.Linear(256, n), nn.Unflatten(1, (channels, size, size))
        )
        return Autoencoder(encoder, decoder)
    if size % 4 or size < 8:
        raise CnnlabError(f"the conv autoencoders halve the image twice: its size must be a multiple of 4 and >= 8, "
                          f"got {size} px (pass --image-size)")  # fmt: skip
    s = size // 4
    encoder = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * s * s, latent),
    )  # fmt: skip
    if design == "conv":
        up = [nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(), nn.ConvTranspose2d(16, channels, 2, stride=2)]
    else:
        up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(),
              nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(16, channels, 3, padding=1)]  # fmt: skip
    decoder = nn.Sequential(nn.Linear(latent, 32 * s * s), nn.ReLU(), nn.Unflatten(1, (32, s, s)), *up)
    return Autoencoder(encoder, decoder)
