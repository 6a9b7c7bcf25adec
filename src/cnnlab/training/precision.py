"""`decide_precision`: what `--precision auto` means on the machine at hand, decided by measurement.

CPUs of one name differ: an AVX2 EPYC emulates bf16 (autocast trained 10x slower than fp32 there), an
AVX-512/bf16 one runs it natively (1.8x faster). So on a CPU whose oneDNN reports bf16 support, a few
training steps of the run's own model are timed in fp32 and under bf16 autocast (fp32 master weights either
way) and the faster is taken, if its loss agrees with fp32's. The measurement is cached per CPU, threads,
torch version, model and input shape (`<data root>/cache/speed.json`), so later runs reuse it; a cached
measurement makes the decision deterministic. The chosen precision replaces `auto` in config.yaml (resume
trains the same way) and the reason is printed and kept under `decisions:`.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cnnlab.config import ModelConfig, RunConfig, TrainConfig, with_decisions
from cnnlab.files import write_text_atomic
from cnnlab.machine import CpuInfo
from cnnlab.models import create_model
from cnnlab.models.base import Classifier

FP32, BF16 = "32-true", "bf16-mixed"
MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this much: a tie is not worth bf16's rounding
MAX_LOSS_GAP = 0.05  # relative gap between the bf16 and fp32 loss of the same batch that still counts as agreeing
PROBE_STEPS, WARMUP_STEPS = 3, 1  # after the first (oneDNN kernel selection) Lite0 steps varied <25%; the probe is
# paid from a search candidate's budget (7 steps of each were 43 s of a 5-minute run)


@dataclass(frozen=True)
class Measurement:
    fp32_step_s: float
    bf16_step_s: float
    loss_gap: float  # |loss_bf16 - loss_fp32| / loss_fp32 on the same batch and weights

    @property
    def speedup(self) -> float:
        return self.fp32_step_s / self.bf16_step_s


def choose(m: Measurement) -> tuple[str, str]:
    """(precision, reason) from a measurement: bf16 only when clearly faster and its loss agrees.

    >>> choose(Measurement(0.2, 0.1, 0.01))
    ('bf16-mixed', '2.0x faster than fp32 on this CPU, measured')
    >>> choose(Measurement(0.1, 0.2, 0.01))[0]
    '32-true'
    """
    if m.loss_gap > MAX_LOSS_GAP:
        return FP32, f"bf16's loss differed from fp32's by {100 * m.loss_gap:.0f}% on the same batch, measured"
    if m.speedup >= MIN_SPEEDUP:
        return BF16, f"{m.speedup:.1f}x faster than fp32 on this CPU, measured"
    return FP32, f"bf16 ran at {m.speedup:.2f}x fp32's speed on this CPU (needs {MIN_SPEEDUP}x), measured"


def time_training_steps(model: Classifier, shape: tuple[int, ...], num_classes: int) -> Measurement:
    """Seconds per training step (forward, backward, AdamW step) of copies of `model` on random input of
    `shape`, fp32 and bf16 autocast interleaved so that a load change hits both; the model, its optimizer
    state and every RNG stay untouched."""
    times, first_loss = _timed_steps(model, shape, num_classes, (FP32, BF16))
    gap = abs(first_loss[BF16] - first_loss[FP32]) / max(abs(first_loss[FP32]), 1e-8)
    return Measurement(times[FP32], times[BF16], gap)


def step_seconds(model: Classifier, shape: tuple[int, ...], num_classes: int, precision: str) -> float:
    """Seconds per training step of a copy of `model` in `precision` on the CPU (as `time_training_steps`)."""
    return _timed_steps(model, shape, num_classes, (precision,))[0][precision]


def _timed_steps(
    model: Classifier, shape: tuple[int, ...], num_classes: int, precisions: tuple[str, ...]
) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """(median seconds per step, first loss) per precision, on copies of `model`; every RNG stays untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (shape[0],))
        probes = {p: copy.deepcopy(model).train() for p in precisions}
        optimizers = {p: torch.optim.AdamW([q for q in m.parameters() if q.requires_grad]) for p, m in probes.items()}
        times: dict[str, list[float]] = {p: [] for p in precisions}
        first_loss: dict[str, float] = {}
        for step in range(WARMUP_STEPS + PROBE_STEPS):
            for p, probe in probes.items():
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == BF16):
                    loss, _ = probe.compute_loss(probe(x), y, 0.0)  # the model's own loss (capsnet's margin)
                optimizers[p].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[p].step()
                first_loss.setdefault(p, float(loss.detach()))
                if step >= WARMUP_STEPS:
                    times[p].append(time.perf_counter() - start)
    return {p: _median(t) for p, t in times.items()}, first_loss


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def decide_precision(
    config: RunConfig,
    build_model: Callable[[], Classifier],
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    measure: bool = True,
    cpu: CpuInfo | None = None,
    log: Callable[[str], None] = print,
) -> RunConfig:
    """Replace `precision: auto` with the precision this machine trains this model fastest in (see the module
    docstring); an explicit precision is kept. `build_model` is only called when a measurement is needed.
    Without `measure` (a dry run; several processes, whose Fabric exists before the data does) CPUs keep fp32."""
    t = config.train
    if t.precision != "auto":
        return config
    if t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available()):
        bf16 = torch.cuda.is_bf16_supported()
        return _decided(config, BF16 if bf16 else FP32, "CUDA GPU with bf16" if bf16 else "GPU without bf16", log)
    if not measure:
        return _decided(config, FP32, "not measured in a dry run or with several processes", log)
    cpu = cpu or CpuInfo.here()
    if not cpu.bf16:
        why = f"this CPU ({cpu.capability}) has no native bf16: emulated bf16 trained 10x slower than fp32"
        return _decided(config, FP32, why, log)
    cache = Path(config.data.root) / "cache" / "speed.json"
    key = _cache_key(cpu, config, in_channels, image_size)
    record = _read_cache(cache).get(key)
    if record is not None:
        precision, why = choose(Measurement(**record))
        return _decided(config, precision, f"{why} earlier, cached in {cache}", log)
    m = time_training_steps(build_model(), (t.batch_size or 128, in_channels, image_size, image_size), num_classes)
    _write_cache(cache, key, m)
    precision, why = choose(m)
    steps = f"{1000 * m.fp32_step_s:.0f} vs {1000 * m.bf16_step_s:.0f} ms per step"
    return _decided(config, precision, f"{why}: {steps}", log)


def auto_precision(model_name: str, *, batch: int, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                   log: Callable[[str], None] = lambda _: None) -> str:  # fmt: skip
    """What `--precision auto` picks here for `model_name` at this input and batch (measured, or cached)."""
    config = RunConfig(model=ModelConfig(name=model_name), train=TrainConfig(batch_size=batch))

    def build() -> Classifier:
        model = create_model(model_name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        return model.to(memory_format=torch.channels_last)

    shape = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    return decide_precision(config, build, **shape, log=log).train.precision


def _decided(config: RunConfig, precision: str, why: str, log: Callable[[str], None]) -> RunConfig:
    log(f"precision: {precision} ({why})")
    config = replace(config, train=replace(config.train, precision=precision))
    return with_decisions(config, precision=why)


def _cache_key(cpu: CpuInfo, config: RunConfig, in_channels: int, image_size: int) -> str:
    m, t = config.model, config.train
    start = "from " + (m.weights or "its default weights")  # a measurement of another starting point is not reused
    model = " ".join(filter(None, [m.name, json.dumps(m.options, sort_keys=True), m.strategy, start]))
    machine = f"{cpu.name} | {cpu.capability} | {torch.get_num_threads()} threads | torch {torch.__version__}"
    return f"{machine} | {model} | {in_channels}x{image_size}x{image_size} | batch {t.batch_size}"


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or an unreadable one: measure again
    return raw if isinstance(raw, dict) else {}


def _write_cache(path: Path, key: str, m: Measurement) -> None:
    entries = _read_cache(path)
    entries[key] = {"fp32_step_s": m.fp32_step_s, "bf16_step_s": m.bf16_step_s, "loss_gap": m.loss_gap}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(entries, indent=1, sort_keys=True))
    except OSError:
        pass  # an unwritable cache only costs the reuse
