"""`cnnlab stylize --demo` at 256 px, 300 Adam steps, on the offline EfficientNet-Lite0: the time, how far the
style loss falls, and whether the result's Gram matrices are closer to the style's than the content image's at
every style layer. Baseline in the same run: the same job with SWAG-style softmax smoothing (`ratio` = the
default's style-loss fall / the baseline's, each on its own loss). Usage: .venv/bin/python bench/style.py
"""

from __future__ import annotations

import json

import torch

from cnnlab.apps.style import StyleOptions, demo_images, read_image, stylize
from cnnlab.machine import CpuInfo


def main() -> None:
    cpu = CpuInfo.here()
    content, style = demo_images()
    rows = {}
    for smoothing in ("none", "softmax"):
        options = StyleOptions(size=256, steps=300, smoothing=smoothing)
        c, s = read_image(None, content, longer=256), read_image(None, style, longer=256)
        _, record = stylize(c, s, options, progress=False)
        d = record["gram_distance_to_style"]
        rows[smoothing] = {"seconds": record["seconds"], "style_loss_fall": round(record["style_loss_fall"], 1),
                           "layers_closer_than_content": sum(d["result"][k] < d["content"][k] for k in d["result"]),
                           "layers": len(d["result"])}  # fmt: skip
    print(json.dumps({
        "bench": "style", "size": 256, "steps": 300, "network": "efficientnet_lite0", "cpu": cpu.name,
        "capability": cpu.capability, "threads": torch.get_num_threads(), **{f"{k}": v for k, v in rows.items()},
        "ratio": round(rows["none"]["style_loss_fall"] / rows["softmax"]["style_loss_fall"], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
