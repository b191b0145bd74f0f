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
