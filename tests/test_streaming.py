"""The streamed path (a folder too large for memory, or `--stream`): batches read from the decoded-image cache on disk
through a DataLoader give what the in-memory path gives; the choice between them follows the memory available."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from collections import Counter
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.config import DataConfig
from cnnlab.data import loader, sources
from cnnlab.data.augment import AugmentPolicy
from cnnlab.data.batches import InMemoryBatches, Normalization
from cnnlab.data.cache import tensor_digest
from cnnlab.data.images import decode_files, decoded_chunks
from cnnlab.data.lazy import CachedImages, ImageRows, LazyImages, row_view, select
from cnnlab.data.memory import choose_stream
from cnnlab.data.samples import write_sample_folder
from cnnlab.data.sources import load_source
from cnnlab.models import create_model
from cnnlab.models.checkpoint import load_checkpoint
from cnnlab.predict.features import backbone_features


@pytest.fixture(scope="module")
def lfw(tmp_path_factory):
    root = tmp_path_factory.mktemp("lfw") / "lfw"
    write_sample_folder("lfw", root)
    return root


@pytest.mark.parametrize("cache_writable", [True, False])
def test_streamed_images_equal_the_in_memory_ones(lfw, tmp_path, cache_writable):
    """Read from the decoded cache, or (a cache that cannot be written) decoded from the files batch by batch."""
    memory = load_source(DataConfig(source=f"folder:{lfw}", root=str(tmp_path / "a"), image_size=32))
    root = tmp_path / "b"
    if not cache_writable:
        root.mkdir()
        (root / "cache").write_text("a file where the cache folder would go")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unwritable cache's warning
        stream = load_source(DataConfig(source=f"folder:{lfw}", root=str(root), image_size=32, stream=True))
    assert isinstance(stream.images, CachedImages if cache_writable else LazyImages)
    assert stream.images.shape == tuple(memory.images.shape)
    assert stream.ids == memory.ids and torch.equal(stream.labels, memory.labels)
    idx = torch.tensor([5, 0, 150])
    assert torch.equal(stream.images[idx], memory.images[idx]) and torch.equal(stream.images[3:7], memory.images[3:7])
    train = memory.partitions["train"]
    assert Normalization.from_images(select(stream.images, train)) == Normalization.from_images(memory.images[train])


def test_the_path_follows_the_memory_available(lfw, tmp_path, monkeypatch):
    """In memory while the decoded pixels take at most 15% of the free memory and at most 1 GB, streamed above; a
    forced choice is kept without a reason to record."""
    gb = 10**9
    assert choose_stream(None, n_images=6_000, side=224, available=16 * gb)[0] is False  # 0.9 GB of 16
    streamed, why = choose_stream(None, n_images=10_000, side=224, available=64 * gb)  # 1.5 GB: over 1 GB
    assert streamed and "over the 1 GB held in memory at most" in why
    streamed, why = choose_stream(None, n_images=100_000, side=224, available=24 * gb)  # 15 GB of 24
    assert streamed and "15.05 GB decoded" in why and "--in-memory" in why
    assert choose_stream(False, n_images=100_000, side=224, available=gb) == (False, None)
    # the lfw folder at 32 px is 200 x 3 KB: streamed on a machine with 1 MB free, recorded as a decision
    monkeypatch.setattr(sources, "memory_available", lambda: 10**6)
    source = load_source(DataConfig(source=f"folder:{lfw}", root=str(tmp_path), image_size=32))
    assert isinstance(source.images, CachedImages) and "over 15% of the 0.0 GB available" in source.stream_reason


def test_a_changed_file_is_decoded_again_on_the_streamed_path(lfw, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(lfw, copy)
    cfg = DataConfig(source=f"folder:{copy}", root=str(tmp_path / "root"), image_size=32, stream=True)
    first = load_source(cfg)
    a, b = sorted((copy / "train" / "face").iterdir())[:2]
    shutil.copyfile(b, a)  # a's content is now b's
    again = load_source(cfg)
    ia, ib = again.ids.index(str(a)), again.ids.index(str(b))
    assert torch.equal(again.images[ia], first.images[ib]) and not torch.equal(again.images[ia], first.images[ia])


@pytest.mark.parametrize(("batch", "steps", "per_rank"), [(60, 1, 51), (8, 6, 48)])
def test_ddp_ranks_take_the_same_number_of_steps_and_cover_the_split(batch, steps, per_rank):
    """101 training images over 2 ranks, a split the world size does not divide. Too small to drop a ragged batch
    (60 per rank): each rank takes 51 images, the order padded by wrapping round as DistributedSampler does, and
    together they cover every image; larger (8 per rank): the ragged batch is dropped, the same on both ranks."""
    images = torch.arange(120, dtype=torch.uint8).view(120, 1, 1, 1).expand(120, 1, 4, 4).contiguous()
    labels = torch.zeros(120, dtype=torch.int64)
    norm = Normalization((0.0,), (1 / 255,))  # x back as the image's value
    seen, counts = set(), []
    for rank in (0, 1):
        batches = InMemoryBatches(images, labels, np.arange(101), batch_size=batch, norm=norm, shuffle=True, seed=3,
                                  drop_last=True, rank=rank, world=2, policy=AugmentPolicy())  # fmt: skip
        batches.set_epoch(1)
        got = [x[:, 0, 0, 0] for x, _ in batches]
        counts.append(len(got))
        seen |= {round(float(v)) for b in got for v in b}
        assert sum(len(b) for b in got) == per_rank
    assert counts == [steps, steps] and seen <= set(range(101))
    assert len(seen) == (101 if per_rank * 2 > 101 else per_rank * 2)


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_batches_come_through_dataloader_workers(lfw, tmp_path, monkeypatch, workers):
    """The streamed path's batches equal the in-memory ones (same seed: same order, same augmentation draws), read
    by the training process (two cores or fewer) or by a worker process."""
    monkeypatch.setattr(loader, "loader_workers", lambda: workers)
    cfg = DataConfig(source=f"folder:{lfw}", root=str(tmp_path), image_size=32)
    memory, stream = load_source(cfg), load_source(DataConfig(**{**cfg.__dict__, "stream": True}))
    train = memory.partitions["train"]
    norm = Normalization.from_images(memory.images[train])
    made = {}
    for name, images in (("memory", memory.images), ("stream", stream.images)):
        batches = InMemoryBatches(images, memory.labels, train, batch_size=16, norm=norm, shuffle=True, seed=1,
                                  drop_last=True, policy=AugmentPolicy(flip=True, max_shift=0.1))  # fmt: skip
        made[name] = [(x, y) for x, y in batches]
        if name == "stream":
            assert batches.reader is not None and batches.reader.loader.num_workers == workers
    assert len(made["memory"]) == len(made["stream"]) > 1
    for (xm, ym), (xs, ys) in zip(made["memory"], made["stream"], strict=True):
        assert torch.equal(xm, xs) and torch.equal(ym, ys)


def test_a_row_view_cuts_the_batches_and_keeps_the_cache_key_of_the_copy(lfw, tmp_path):
    """The frozen head's feature pass reads its split through a view, not a copy; the features cached from a
    copy must still be found."""
    images = load_source(DataConfig(source=f"folder:{lfw}", root=str(tmp_path), image_size=32)).images
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:130]
    view, copy = row_view(images, idx), images[idx]
    assert isinstance(view, ImageRows) and view.shape == tuple(copy.shape) and len(view) == 130
    assert torch.equal(view[100:130], copy[100:130]) and torch.equal(view[7], copy[7])
    assert tensor_digest(view) == tensor_digest(copy) != tensor_digest(images[idx[:129]])


def test_streamed_and_in_memory_training_agree(cli, lfw, tmp_path):
    results = {}
    for mode in ("in-memory", "stream"):
        code, out, err = cli(
            "train", "--data", f"folder:{lfw}", "--model", "simple_cnn_bn", "--epochs", "3", f"--{mode}",
            "--runs-dir", tmp_path,
            "--name", mode, "--data-root", tmp_path / "data", "--no-report", "--image-size", "32",
        )  # fmt: skip
        assert code == 0, err
        with (tmp_path / mode / "metrics.csv").open() as fh:
            losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
        results[mode] = (losses, float(out.split("Test Accuracy (Overall): ")[1].split("%")[0]))
    (mem_losses, mem_acc), (str_losses, str_acc) = results["in-memory"], results["stream"]
    assert mem_losses == pytest.approx(str_losses, rel=1e-3)  # same seed, same batches, same decode
    assert abs(mem_acc - str_acc) <= 2.5


def test_streamed_path_skips_a_corrupt_file_with_a_warning(lfw, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(lfw, copy)
    bad = sorted((copy / "train" / "face").iterdir())[0]
    bad.write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        source = load_source(DataConfig(source=f"folder:{copy}", root=str(tmp_path), stream=True))
    assert str(bad) not in source.ids and len(source.images) == 199


def test_predicting_in_chunks_gives_the_whole_array_and_one_warning(lfw, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted(lfw.rglob("*.png"))[:7]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    whole, kept = decode_files([folder], size=16, channels=3, crop_pct=1.0)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        chunks = list(decoded_chunks([folder], size=16, channels=3, crop_pct=1.0, chunk=3))
    assert len(chunks) == 3 and max(len(c) for c, _ in chunks) <= 3 and sum(len(c) for c, _ in chunks) == 7
    assert np.array_equal(np.concatenate([c for c, _ in chunks]), whole) and [p for _, k in chunks for p in k] == kept


def _torchrun_node(rank: int, args: list[str], cwd: Path) -> subprocess.Popen:
    """One node of `torchrun --nnodes 2 --nproc-per-node 1` (static rendezvous on this machine) running cnnlab."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    launch = [torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr",
              "127.0.0.1", "--master-port", "29517"]  # fmt: skip
    return subprocess.Popen([*launch, str(Path(sys.executable).parent / "cnnlab"), *args, "--num-nodes", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)  # fmt: skip


@pytest.mark.slow
def test_ddp_on_a_streamed_folder_decodes_half_each_and_matches_one_process(lfw, tmp_path):
    """`--devices 2 --stream` and `torchrun --nnodes 2` (gloo): each process decodes every other file into the shared
    decoded cache and reads the rest from it; the losses match one process within the DDP test's tolerance
    (tests/test_training.py: no dropout, no batch norm, fp32)."""
    cnnlab = str(Path(sys.executable).parent / "cnnlab")
    common = [
        "train",
        "--data",
        f"folder:{lfw}",
        "--stream",
        "--model",
        "cnn",
        "--model-option",
        "dropout=0",
        "--model-option",
        "batch_norm=false",
        "--epochs",
        "3",
        "--augment",
        "none",
        "--precision",
        "32-true",
        "--no-report",
        "--image-size",
        "32",
        "--batch-size",
        "32",
        "--audit",
        "off",
        "--runs-dir",
        str(tmp_path),
    ]
    losses = {}
    for name in ("one", "two", "nodes"):
        root = tmp_path / f"data-{name}"
        args = [*common, "--name", name, "--data-root", str(root)]
        if name == "nodes":
            nodes = [_torchrun_node(rank, args, tmp_path) for rank in (1, 0)]
            outcomes = [node.communicate(timeout=300) for node in nodes]
            assert all(node.returncode == 0 for node in nodes), [err[-2000:] for _, err in outcomes]
        else:
            extra = ["--devices", "2"] if name == "two" else []
            done = subprocess.run([cnnlab, *args, *extra], capture_output=True, text=True, timeout=300, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-2000:]
        with (tmp_path / name / "metrics.csv").open() as fh:
            losses[name] = [float(r[c]) for r in csv.DictReader(fh) for c in ("train_loss", "valid_loss")]
        writers = Counter()
        for part in root.glob("cache/decoded/*/shard-*.json"):
            index = json.loads(part.read_text())
            writers[index["written_by"]["rank"]] += len(index["rows"])
        assert writers == ({0: 200} if name == "one" else {0: 100, 1: 100}), (name, writers)  # 200 files
    assert losses["one"] == pytest.approx(losses["two"], rel=1e-4)
    assert losses["one"] == pytest.approx(losses["nodes"], rel=1e-4)


@pytest.mark.slow
def test_ddp_with_the_default_model_search_and_a_budget(lfw, tmp_path):
    """`--devices 2 --budget-minutes 1` with `--model auto` (the default): rank 0 measures the candidates and plans
    the budget, both processes follow; the table is printed once and the run is evaluated."""
    cnnlab = str(Path(sys.executable).parent / "cnnlab")
    done = subprocess.run(
        [cnnlab, "train", "--data", f"folder:{lfw}", "--devices", "2", "--budget-minutes", "1", "--no-report",
         "--runs-dir", str(tmp_path), "--name", "auto", "--data-root", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("model: auto, measuring candidates") == 1, done.stdout
    assert "Test Accuracy (Overall)" in done.stdout and (tmp_path / "auto" / "eval.json").is_file()
    assert "model:" in (tmp_path / "auto" / "config.yaml").read_text().split("decisions:")[1]


@pytest.mark.slow
def test_ddp_frozen_head_computes_half_the_features_each_and_matches_one_process(lfw, tmp_path):
    """`--devices 2` with a frozen backbone (gloo): each process pushes every other image through the backbone and
    the shares are gathered in order, so the head fit on them equals one process's (a share left out or gathered
    out of order would change the features, the head and its losses)."""
    cnnlab = str(Path(sys.executable).parent / "cnnlab")
    common = ["train", "--data", f"folder:{lfw}", "--model", "efficientnet_lite0", "--strategy", "feature-extract",
              "--image-size", "32", "--audit", "off", "--no-report", "--runs-dir", str(tmp_path)]  # fmt: skip
    rows, outputs = {}, {}
    for name, extra in (("one", []), ("two", ["--devices", "2"])):
        args = [cnnlab, *common, *extra, "--name", name, "--data-root", str(tmp_path / f"data-{name}")]
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[name] = done.stdout
        with (tmp_path / name / "metrics.csv").open() as fh:
            (rows[name],) = list(csv.DictReader(fh))
    assert "each of 2 processes computes 1 image in 2" in outputs["two"]
    assert "each of" not in outputs["one"]
    for column in ("train_loss", "valid_loss", "valid_acc"):
        assert float(rows["one"][column]) == pytest.approx(float(rows["two"][column]), rel=1e-3, abs=1e-6), column
    one, two = (load_checkpoint(tmp_path / n / "best.pt").weights for n in ("one", "two"))
    assert max(float((one[k] - two[k]).abs().max()) for k in one if k.startswith("head")) <= 1e-3


def _features_on_rank(rank: int, port: int, cache_dirs: list[str], out: str) -> None:
    """One gloo process of `test_a_rank_without_the_cached_features_...`: its own cache folder, shared=True."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )  # a rank left waiting fails, not hangs
    try:
        torch.manual_seed(0)  # the same weights on every rank and in the test's own process
        model = create_model("efficientnet_lite0", num_classes=2, in_channels=3, image_size=32,
                             strategy="feature-extract")  # fmt: skip
        model.input_size = 64
        images = torch.randint(0, 255, (7, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        got = backbone_features(model, images, Normalization((0.5,) * 3, (0.5,) * 3), cache_dir=cache_dirs[rank],
                                shared=True)  # fmt: skip
        torch.save(got, f"{out}-{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_a_rank_without_the_cached_features_makes_every_rank_compute_its_share(tmp_path):
    """Nodes need not share a disk: when rank 0 has the features cached and rank 1 has not, both compute their shares
    (neither waits for ever in a collective the other skipped), and both get one process's features."""
    import socket

    import torch.multiprocessing as mp

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=2, in_channels=3, image_size=32, strategy="feature-extract")
    model.input_size = 64
    images = torch.randint(0, 255, (7, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = Normalization((0.5,) * 3, (0.5,) * 3)
    expected = backbone_features(model, images, norm, cache_dir=tmp_path / "rank0")  # rank 0's disk has them
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dirs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    mp.spawn(_features_on_rank, args=(port, dirs, str(tmp_path / "out")), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"out-{rank}.pt", weights_only=True)
        assert torch.allclose(got, expected, atol=1e-4), rank
    assert len(list((tmp_path / "rank1" / "features").glob("*.pt"))) == 1  # rank 1 now has its own copy
