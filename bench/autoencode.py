"""The issue's autoencoder figures on Fashion-MNIST (48k train / 12k valid / 10k test): linear vs conv vs
conv-upsample at the same latent size (PSNR; the linear one is the baseline, `ratio` = PSNR gain in dB), the
denoising gain at noise 0.5 over the noisy input, and reconstruction error as an anomaly score: a Fashion class
held out of training, and digits-trained vs Fashion-MNIST (MNIST itself is not offline here). One JSON line per
run. Usage: .venv/bin/python bench/autoencode.py [--epochs 6] [--latent 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cnnlab.apps.autoencode import AutoencodeOptions, autoencode
from cnnlab.machine import CpuInfo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--latent", type=int, default=32)
    args = parser.parse_args()
    cpu = CpuInfo.here()
    runs = Path(tempfile.mkdtemp())
    plain = {"data": "fashion-mnist", "latent": args.latent, "epochs": args.epochs}
    jobs = {
        "linear": AutoencodeOptions(model="linear", **plain),
        "conv": AutoencodeOptions(model="conv", **plain),
        "conv-upsample": AutoencodeOptions(model="conv-upsample", **plain),
        "denoise-0.5": AutoencodeOptions(model="conv-upsample", noise=0.5, **plain),
        "anomaly-Trouser": AutoencodeOptions(model="conv-upsample", anomaly="Trouser", **plain),
        "digits-vs-fashion": AutoencodeOptions(
            data="digits", model="conv", latent=16, epochs=30, batch_size=32, lr=3e-3, anomaly="fashion-mnist"
        ),  # fmt: skip
    }
    baseline = None
    for name, options in jobs.items():
        start = time.perf_counter()
        r = autoencode(options, runs_dir=runs, name=name, log=lambda _: None)
        psnr = r["reconstruction"]["psnr_db"]
        baseline = psnr if name == "linear" else baseline
        quality = {k: round(v, 4) for k, v in r["reconstruction"].items()}
        row = {"bench": "autoencode", "run": name, "cpu": cpu.name, "capability": cpu.capability,
               "threads": torch.get_num_threads(), "epochs": options.epochs, "latent": options.latent,
               "seconds": round(time.perf_counter() - start, 1), **quality}  # fmt: skip
        if name in ("conv", "conv-upsample"):
            row["ratio"] = round(psnr - baseline, 2)  # dB over the linear autoencoder
        if "noisy_input" in r:
            row["noisy_psnr_db"], row["psnr_gain_db"] = (
                round(r["noisy_input"]["psnr_db"], 2),
                round(r["psnr_gain_db"], 2),
            )
        if "anomaly" in r:
            row["anomaly_auc"] = round(r["anomaly"]["auc"], 4)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
