import torch
from torchvision.ops import roi_align

from ddkit.augment import crop_resize, random_resized_crop, random_translate, sample_boxes


def test_crops_are_bilinear_like_roi_align_and_the_full_box_is_identity():
    x = torch.randn(6, 3, 16, 16)
    boxes = sample_boxes(6, 16, 16, (0.1, 1.0), generator=torch.Generator().manual_seed(0))
    ref = roi_align(x, torch.cat([torch.arange(6.).unsqueeze(1), boxes], 1), (16, 16), 1.0, 0, True)
    torch.testing.assert_close(crop_resize(x, boxes, 16), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(crop_resize(x, torch.tensor([[0., 0., 16., 16.]]), 16), x, atol=1e-5, rtol=0)


def test_downsizing_averages_instead_of_aliasing():
    checker = (torch.arange(16).view(1, -1) + torch.arange(16).view(-1, 1)) % 2  # 0/1 pixel checkerboard
    x = checker.float().expand(1, 3, 16, 16)
    small = crop_resize(x, torch.tensor([[0., 0., 16., 16.]]), 4)
    torch.testing.assert_close(small, torch.full_like(small, 0.5))


def test_shards_see_the_rows_of_the_whole_batch_view():
    x = torch.randn(10, 3, 8, 8)
    for aug in (lambda t, g, s: random_resized_crop(t, g, shard=s), lambda t, g, s: random_translate(t, 1, g, s)):
        whole = aug(x, torch.Generator().manual_seed(3), None)
        parts = [aug(x[r], torch.Generator().manual_seed(3), (10, r)) for r in (slice(0, 4), slice(4, 10))]
        torch.testing.assert_close(torch.cat(parts), whole)


def test_randaugment_draws_are_reproducible_from_the_seed_and_the_same_on_every_shard():
    from ddkit.augment import draw_views, rand_augment
    x = (torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    plain = draw_views("rrc", 6, 16, 16, torch.Generator().manual_seed(1))
    v = draw_views("rrc", 6, 16, 16, torch.Generator().manual_seed(1), randaug=(2, 9))
    assert torch.equal(v.boxes, plain.boxes) and torch.equal(v.flips, plain.flips)   # drawn last
    assert plain.ra_seeds is None and torch.equal(rand_augment(x, plain, slice(None)), x)
    out = rand_augment(x, v, slice(None))
    torch.manual_seed(123)   # the global generator's state does not matter, and is left as it was
    state = torch.get_rng_state()
    again = rand_augment(x, draw_views("rrc", 6, 16, 16, torch.Generator().manual_seed(1), randaug=(2, 9)),
                         slice(None))
    assert torch.equal(out, again) and torch.equal(torch.get_rng_state(), state)
    parts = torch.cat([rand_augment(x[r], v, r) for r in (slice(0, 2), slice(2, 6))])
    assert torch.equal(parts, out) and out.dtype == torch.uint8
    other = rand_augment(x, draw_views("rrc", 6, 16, 16, torch.Generator().manual_seed(2), randaug=(2, 9)),
                         slice(None))
    assert not torch.equal(other, out) and not torch.equal(out, x)
    floats = rand_augment(x.float() / 255, v, slice(None))   # synthetic sets are floats in [0, 1]
    assert floats.dtype == torch.float32 and 0 <= floats.min() and floats.max() <= 1


def test_torchvision_boxes_keep_their_ratio_and_fall_back_to_the_centre_as_torchvision():
    from ddkit.augment import torchvision_boxes
    g = torch.Generator().manual_seed(0)
    b = torchvision_boxes(500, 24, 32, (0.08, 1.0), generator=g)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert torch.equal(b, b.round()) and (b[:, :2] >= 0).all() and (b[:, 2] <= 32).all() and (b[:, 3] <= 24).all()
    # the ratio and area drawn, up to the rounding of each side to whole pixels
    assert (((w - 0.5) / (h + 0.5) <= 4 / 3) & ((w + 0.5) / (h - 0.5) >= 3 / 4)).all()
    assert ((w + 0.5) * (h + 0.5) >= 0.08 * 24 * 32).all()
    # scale (1, 1): every draw but the rare exact fit falls back to the whole image (RDED at factor 1)
    assert torch.equal(torchvision_boxes(200, 32, 32, (1.0, 1.0), generator=g), torch.tensor([[0.0, 0, 32, 32]] * 200))
    # an image wider than the ratios allow: the centred box of the largest allowed ratio
    assert torchvision_boxes(3, 10, 40, (1.0, 1.0), (1.0, 2.0), generator=g).tolist() == [[10.0, 0, 30, 10]] * 3


def test_shuffle_patches_reorders_column_and_row_strips():
    from ddkit.augment import shuffle_patches
    x = torch.arange(16.).view(1, 1, 4, 4)
    swapped = shuffle_patches(x, torch.tensor([[[1, 0], [0, 1]]]))   # the two column strips swap places
    assert swapped[0, 0].tolist() == [[2, 3, 0, 1], [6, 7, 4, 5], [10, 11, 8, 9], [14, 15, 12, 13]]
    both = shuffle_patches(x, torch.tensor([[[1, 0], [1, 0]]]))
    assert both[0, 0].tolist() == [[10, 11, 8, 9], [14, 15, 12, 13], [2, 3, 0, 1], [6, 7, 4, 5]]
    odd = shuffle_patches(torch.arange(5.).view(1, 1, 1, 5), torch.tensor([[[1, 0], [0, 1]]]))
    assert odd.flatten().tolist() == [2, 3, 4, 0, 1]   # the last strip takes the remainder
