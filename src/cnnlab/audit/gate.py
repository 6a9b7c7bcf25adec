"""`cnnlab audit` and the audit inside `cnnlab train`: run `data.audit`'s checks on a data source's splits,
print the ranked table, write audit.csv / audit.json, drop leaked held-out images on `--dedupe`, and give the
report its "About the data" section. Nothing here changes or deletes a user's file.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.audit import checks as A
from cnnlab.config import DataConfig, RunConfig
from cnnlab.data.groups import identical_files, merge_groups, user_groups
from cnnlab.data.sources import PHOTO_SIDE, Source, load_source, scan_folder
from cnnlab.data.splits import DROPPED, make_splits, read_run_splits
from cnnlab.errors import CnnlabError
from cnnlab.extras import require
from cnnlab.figures import figure_png_base64, new_figure
from cnnlab.files import write_text_atomic
from cnnlab.models.pretrained import DEFAULT_BACKBONE, backbone_decoding
from cnnlab.runs import RunFile, open_run, refuse_existing, source_slug

FILES = (RunFile.AUDIT_CSV, RunFile.AUDIT_JSON)
SHOWN = 15  # table rows printed
AUTO_MAX_IMAGES = 30_000  # `--audit auto` checks duplicates up to this many images (about 5 s on 2 cores)
SECONDS_PER_PAIR = 5e-9  # the duplicate pass's cost per image pair, measured on 2 Zen 4 cores (70,000: 24 s)


def audit_data(config, *, output: Path | None, force: bool = False, labels: bool = True, dedupe_preview: bool = True,
               log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Audit the source and the splits `cnnlab train` would make from `config` (a RunConfig), or, when `output`
    is a run folder, the run's own splits; write audit.csv and audit.json into `output`."""
    _check_labels(labels)
    source = load_source(audited_data(config.data, log), log=log)
    config = replace(config, data=replace(config.data, audit="on"))  # the command is the audit: whatever the size
    groups, pairs = split_groups(config, source, log)
    splits = make_splits(
        source.labels.numpy(), source.partitions, valid_fraction=config.data.valid_fraction,
        test_fraction=config.data.test_fraction, seed=config.train.seed, train_limit=config.data.train_limit,
        groups=groups,
    )  # fmt: skip
    return _audit_and_write(source, splits, config, output, force=force, labels=labels, pairs=pairs,
                            groups=_users(config, groups), log=log)  # fmt: skip


def _check_labels(labels: bool) -> None:
    """Label checks need cleanlab (cnnlab[audit]): one clear line before any work, when it is missing."""
    if labels:
        require("cleanlab", purpose="cnnlab audit's label checks (--no-labels skips them)")


def split_groups(
    config, source: Source, log: Callable[[str], None], *, near: bool = True
) -> tuple[np.ndarray | None, list[A.Pair] | None]:
    """What a split must keep together, found before splitting: the user's groups (--group-by, --groups) and every
    cluster of duplicates, so a random split never puts a copy on both sides. Identical files are known from their
    fingerprints at no cost; near duplicates (resized, re-encoded copies) from the audit's thumbnail pass, where the
    audit gate runs it (and `near`: a dry run skips it). Returns (one group id per image or None, the duplicate
    pairs or None when not searched)."""
    n = len(source.labels)
    users = user_groups(source, group_by=config.data.group_by, groups_file=config.data.groups)
    start = time.perf_counter()
    pairs = None if not near or _skip_reason(config, source) else A.duplicate_pairs(source.images)
    linked = [(a, b) for a, b, *_ in pairs or []] + identical_files(source.fingerprints)
    groups = merge_groups(n, users, linked)
    if groups is None:
        return None, pairs
    sizes = np.unique(groups, return_counts=True)[1]
    what = []
    if users is not None:
        what.append(f"{len(np.unique(users)):,} groups from --{'group-by' if config.data.group_by else 'groups'}")
    if linked:
        what.append(f"{len({tuple(sorted(p)) for p in linked}):,} duplicate pair(s)")
    log(f"splits: {' and '.join(what)} kept whole: {int((sizes > 1).sum()):,} group(s) of 2-{int(sizes.max())} "
        f"images never span two splits ({time.perf_counter() - start:.1f} s)")  # fmt: skip
    return groups, pairs


def _users(config, groups: np.ndarray | None) -> np.ndarray | None:
    """The groups the audit checks across splits: only where the user named groups (duplicate clusters alone are kept
    whole by construction)."""
    return groups if config.data.group_by or config.data.groups else None


def _skip_reason(config, source: Source) -> str | None:
    """Why the audit gate does not look for duplicates here, or None when it does."""
    n = len(source.labels)
    if config.data.audit == "off":
        return "--audit off"
    if config.data.audit == "auto" and n > AUTO_MAX_IMAGES and not config.data.dedupe:
        return (f"skipped for {n:,} images (about {SECONDS_PER_PAIR * n * n:.0f} s here; --audit on runs it, "
                f"or cnnlab audit --data {config.data.source})")  # fmt: skip
    return None


def audited_data(data: DataConfig, log: Callable[[str], None]) -> DataConfig:
    """A photo folder without --image-size is audited as `cnnlab train` decodes it (at the backbone's input size
    and crop), not at the from-scratch CNN's 64 px: on the blood-cell folder the label check's headline at 64 px
    flagged 19 images for 5 planted flips (3 right), at 224 px 7 (3 right); on caltech12, 5 of 5 and no false
    alarm on the clean folder."""
    if not data.source.startswith("folder:") or data.image_size is not None:
        return data
    scan = scan_folder(data)
    if scan.median_side < PHOTO_SIDE:
        return data
    data = backbone_decoding(data, DEFAULT_BACKBONE)
    log(f"image size: {data.image_size} px (photos, median shorter side {scan.median_side} px: as training decodes "
        "them for the pretrained backbone)")  # fmt: skip
    return data


def audit_run(
    run_dir: Path, *, output: Path | None = None, force: bool = False, labels: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Audit a run folder's data with the splits it trained on (splits.json); the files go into the run (its
    own earlier audit is replaced), or into `output`."""
    _check_labels(labels)
    config = open_run(run_dir)
    source = load_source(config.data, log=log)
    recorded = read_run_splits(Path(run_dir) / RunFile.SPLITS, source, needed=(), log=log)
    splits = A.all_restored(recorded.splits, recorded.dropped)  # the data as it is: dropped images back in
    groups = _users(config, recorded.group_ids(source, np.arange(len(source.labels))) if recorded.groups else None)
    into_run = output is None
    return _audit_and_write(source, splits, config, Path(run_dir) if into_run else Path(output),
                            force=force or into_run, labels=labels, groups=groups, log=log)  # fmt: skip


def _audit_and_write(source, splits, config, output: Path | None, *, force: bool, labels: bool, log,
                     pairs=None, groups=None) -> dict[str, Any]:  # fmt: skip
    out = Path(output) if output is not None else Path("runs") / f"audit-{source_slug(source.name)}"
    for name in FILES:
        refuse_existing(out / name, force=force)
    cache_dir = Path(config.data.root) / "cache"
    found = A.audit(source, splits, labels_too=labels, cache_dir=cache_dir, seed=config.train.seed, pairs=pairs,
                    groups=groups, log=log)  # fmt: skip
    table = A.rows(found, source, splits)
    log(format_audit(found, table))
    write_audit(out, found, table)
    log(f"wrote {out / 'audit.csv'} and {out / 'audit.json'}")
    return A.as_json(found, table)


def write_audit(folder: Path, found: A.Audit, table: list[dict[str, Any]]) -> None:
    """audit.csv (the ranked table) and audit.json (summary + table), written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    fields = ["rank", "issue", "score", "split", "image", "label", "other_split", "other_image", "other_label",
              "suggested_label", "reason"]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    write_text_atomic(folder / RunFile.AUDIT_CSV, buffer.getvalue())
    write_text_atomic(folder / RunFile.AUDIT_JSON, json.dumps(A.as_json(found, table), indent=1))


def format_audit(found: A.Audit, table: list[dict[str, Any]], *, shown: int = SHOWN) -> str:
    s = found.summary
    c, leaked, balance = s["counts"], s["leaked_held_out_images"], s["class_balance"]
    lines = [f"audit of {s['images']} images ({', '.join(f'{k} {v}' for k, v in s['splits'].items())}); "
             f"checks: {', '.join(s['checks'])}; {sum(s['seconds'].values()):.1f} s"]  # fmt: skip
    lines.append(f"  leakage: {c['leakage']} pair(s) across splits ({leaked['test']} test and {leaked['valid']} valid "
                 f"image(s) duplicate another split's image)")  # fmt: skip
    kinds = ", ".join(f"{k} {v}" for k, v in s.get("degenerate_kinds", {}).items())
    lines.append(f"  degenerate images: {c.get('degenerate', 0)}" + (f" ({kinds}): nothing to learn from them" if kinds
                                                                      else ""))  # fmt: skip
    lines.append(f"  duplicates within a split: {c['duplicate']}")
    crossing = s.get("groups_across_splits")
    if crossing:
        held = crossing["held_out_images"]
        lines.append(f"  groups across splits: {crossing['crossing']} of {crossing['groups']} ({held['test']} test and "
                     f"{held['valid']} valid image(s) share a group with training images"
                     + (f"; e.g. {', '.join(crossing['examples'][:3])})" if crossing["examples"] else ")"))  # fmt: skip
    if "labels" in s["checks"]:
        lines.append(f"  likely label errors: {c['label']} ({c.get('possible label', 0)} more possible, in audit.csv); "
                     f"outlier candidates: {c['outlier']}")  # fmt: skip
    else:
        lines.append("  label errors and outliers: not checked (cnnlab audit runs them: one backbone pass, cached)")
    imbalance = balance["imbalanced_classes"]
    lines.append(f"  class balance: smallest/largest {balance['smallest_to_largest']}"
                 + (f"; small classes: {', '.join(imbalance)}" if imbalance else ""))  # fmt: skip
    if table:
        lines.append(f"  {'#':>3} {'issue':17} {'score':>6}  {'image (label)':48} other / suggested")
        for row in table[:shown]:
            other = (f"{row['other_image']} ({row['other_label']}, {row['other_split']})" if row["other_image"]
                     else row["suggested_label"] and f"suggested: {row['suggested_label']}")  # fmt: skip
            other = other or row["reason"]
            image = f"{row['image']} ({row['label']}, {row['split']})"
            lines.append(f"  {row['rank']:>3} {row['issue']:17} {row['score']:>6.3f}  {_short(image, 48):48} {other}")
        if len(table) > shown:
            lines.append(f"  ... {len(table) - shown} more in audit.csv")
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def audit_for_training(config, source, splits: dict[str, np.ndarray], log: Callable[[str], None], *,
                       pairs: list[A.Pair] | None = None, groups: np.ndarray | None = None):  # fmt: skip
    """The audit `cnnlab train` runs before training: duplicates and leakage (a thumbnail comparison whose cost
    grows with the number of pairs: `auto` runs it up to AUTO_MAX_IMAGES, `on` always; `pairs` when
    `split_groups` found them already), and label issues and outliers only when the backbone's features are already
    cached (by `cnnlab audit`). Returns (splits, audit or None, dropped per split)."""
    skip = _skip_reason(config, source)
    if skip is not None:
        if config.data.audit != "off":
            log(f"audit: {skip}")
        return splits, None, {}
    found = A.audit(source, splits, labels_too="cached", cache_dir=Path(config.data.root) / "cache",
                    seed=config.train.seed, pairs=pairs, groups=_users(config, groups), log=log)  # fmt: skip
    s = found.summary
    leaked = s["leaked_held_out_images"]
    log(f"audit: {s['counts']['leakage']} leaked pair(s), {s['counts']['degenerate']} degenerate image(s), "
        f"{s['counts']['duplicate']} duplicate(s) within splits"
        + (f", {s['counts']['label']} likely label error(s)" if "labels" in s["checks"] else "")
        + f" ({sum(s['seconds'].values()):.1f} s; audit.csv in the run folder)")  # fmt: skip
    if leaked["test"] or leaked["valid"]:
        verb = "dropped (--dedupe)" if config.data.dedupe else "kept; --dedupe drops them"
        log(f"warning: {leaked['test']} test and {leaked['valid']} valid image(s) duplicate a training image: "
            f"the scores on them would be inflated ({verb})")  # fmt: skip
    if s["counts"]["degenerate"]:
        kinds = ", ".join(f"{k} {v}" for k, v in s["degenerate_kinds"].items())
        verb = "dropped (--drop-degenerate)" if config.data.drop_degenerate else "kept; --drop-degenerate drops them"
        log(f"warning: {s['counts']['degenerate']} degenerate image(s) ({kinds}): nothing to learn from them, and a "
            f"score on them means little ({verb}; audit.csv lists them)")  # fmt: skip
    dropped: dict[str, dict[str, list[int]]] = {}
    if config.data.dedupe:
        splits, dropped["deduplicated"] = A.deduplicated(splits, found)
        _refuse_empty(splits, "--dedupe", "every image duplicates a training one")
    if config.data.drop_degenerate and s["counts"]["degenerate"]:
        splits, dropped["degenerate"] = A.without_degenerate(splits, found)
        _refuse_empty(splits, "--drop-degenerate", "every image is degenerate")
    return splits, found, {k: v for k, v in dropped.items() if any(v.values())}


def _refuse_empty(splits: dict[str, np.ndarray], option: str, why: str) -> None:
    for split in ("train", "valid", "test"):
        if split in splits and len(splits[split]) == 0:
            raise CnnlabError(f"{option} would leave the {split} split empty ({why})")


def evaluation_note(run_dir: Path) -> dict[str, Any] | None:
    """What eval.json says about the data under its score: leakage found and images dropped by --dedupe."""
    path = Path(run_dir) / RunFile.AUDIT_JSON
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    splits = Path(run_dir) / RunFile.SPLITS
    saved = json.loads(splits.read_text()) if splits.is_file() else {}
    note = {"leaked_held_out_images": s["leaked_held_out_images"], "counts": s["counts"], "checks": s["checks"]}
    for key in DROPPED:
        note[key] = {k: len(v) for k, v in (saved.get(key) or {}).items()}
    return note


def about_the_data(run_dir: Path, source) -> dict[str, Any] | None:
    """The report's "About the data" section: the audit's summary and thumbnails of what it found."""
    path = Path(run_dir) / RunFile.AUDIT_JSON
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    index = {name: i for i, name in enumerate(source.ids)}
    rows = [
        r for r in result["findings"] if r["image"] in index and (not r["other_image"] or r["other_image"] in index)
    ]
    picture = None
    if rows:
        picture = figure_png_base64(_findings_figure(rows[:12], source, index))
    return {"summary": result, "note": evaluation_note(run_dir), "picture": picture, "top": result["findings"][:12]}


def _findings_figure(rows: list[dict[str, Any]], source, index: dict[str, int]):
    """One row per finding: the image (and its pair), titled with the issue, labels and splits."""
    fig = new_figure((4.2, 1.9 * len(rows) + 0.2))
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for (left, right), row in zip(axes, rows, strict=True):
        _thumb(left, source, index[row["image"]], f"{row['issue']} {row['score']:.3f}\n{row['label']} ({row['split']})")
        if row["other_image"]:
            _thumb(right, source, index[row["other_image"]], f"{row['other_label']} ({row['other_split']})")
        else:
            right.axis("off")
            right.text(0.05, 0.5, f"suggested:\n{row['suggested_label']}" if row["suggested_label"] else "", fontsize=8)
    return fig


def _thumb(ax, source, i: int, title: str) -> None:
    image = source.images[i].numpy().transpose(1, 2, 0)
    ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray" if image.shape[2] == 1 else None)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def audit_command(
    run: Path | None, config: RunConfig | None, *, output: Path | None = None, force: bool = False,
    labels: bool = True, log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """`cnnlab audit`: a run folder's data with its own splits, or a data source (`config`) split as train would."""
    if (run is None) == (config is None):
        raise CnnlabError("give a run folder or --data SOURCE to audit (one of them)")
    if run is not None:
        return audit_run(run, output=output, force=force, labels=labels, log=log)
    return audit_data(config, output=output, force=force, labels=labels, log=log)
