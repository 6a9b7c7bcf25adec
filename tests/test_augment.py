import torch

from cnnlab.data.augment import AugmentPolicy, augment_batch, policy_for


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 28, 28, generator=g)


def test_none_is_identity():
    x = _batch()
    assert torch.equal(augment_batch(x, policy_for("none", flip_invariant=True), torch.Generator()), x)


def test_integer_shift_moves_whole_pixels_without_blur():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0  # a square far from the border: a shift keeps all of it
    out = augment_batch(x, AugmentPolicy(max_shift=1 / 14, integer_shift=True), torch.Generator().manual_seed(1))
    assert set(out.unique().tolist()) <= {0.0, 1.0}  # no interpolated values
    assert torch.all(out.sum(dim=(1, 2, 3)) == 64)
    moved = (out != x).flatten(1).any(1)
    assert 0 < moved.sum() < 64  # per-sample randomness: some moved, most rarely all


def test_flip_only_for_flip_invariant_sources():
    assert policy_for("standard", flip_invariant=True).flip
    assert not policy_for("standard", flip_invariant=False).flip
    assert not policy_for("light", flip_invariant=False).flip


def test_flip_mirrors_exactly():
    x = _batch()
    out = augment_batch(x, AugmentPolicy(flip=True), torch.Generator().manual_seed(2))
    flipped = torch.isclose(out, x.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    assert torch.all(flipped | same) and flipped.any() and same.any()


def test_same_generator_seed_gives_same_augmentation():
    x, policy = _batch(), policy_for("standard", flip_invariant=True)
    a = augment_batch(x, policy, torch.Generator().manual_seed(5))
    b = augment_batch(x, policy, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_random_erasing_blacks_out_one_rectangle_in_about_half_the_images():
    x = torch.ones(400, 1, 28, 28)
    policy = AugmentPolicy(erase=0.5)
    out = augment_batch(x, policy, torch.Generator().manual_seed(0))
    black = out == 0
    erased = black.flatten(1).any(1)
    assert 0.4 < erased.float().mean() < 0.6  # p = 0.5
    share = black.flatten(1).float().mean(1)[erased]
    assert share.min() >= 0.015 and share.max() <= 0.34  # 2-33% of the area, after rounding to whole pixels
    for image in black[erased][:20, 0]:  # one solid rectangle: its rows and columns span exactly the black pixels
        rows, cols = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        assert image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        assert int(image.sum()) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert torch.equal(out[~erased], x[~erased])  # the others untouched
    assert (
        policy_for("erase", flip_invariant=False).erase == 0.5 and policy_for("light", flip_invariant=False).erase == 0
    )
