import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASSES, make_folder
from ddkit.data import load_data, load_digits, load_image_folder, load_splits, load_subset_file
from ddkit.utils import DDKitError, save_torch


def test_image_folder_loads_with_classes_and_per_class_indices(tmp_path):
    make_folder(tmp_path, per_class=5)
    d = load_image_folder(tmp_path, cache=False)
    assert d.images.dtype == torch.uint8 and d.images.shape == (15, 3, 8, 8)
    assert d.classes == CLASSES
    assert [len(d.class_indices(c)) for c in range(3)] == [5, 5, 5]
    assert all((d.labels[d.class_indices(c)] == c).all() for c in range(3))


def test_cache_is_reused_and_invalidated_by_changed_files(tmp_path, monkeypatch):
    make_folder(tmp_path, per_class=3)
    first = load_image_folder(tmp_path)
    monkeypatch.setattr("ddkit.data._decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    again = load_image_folder(tmp_path)              # served from the cache, nothing decoded
    assert torch.equal(first.images, again.images)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cat" / "new.png")
    with pytest.raises(AssertionError, match="decoded"):
        load_image_folder(tmp_path)                  # a new file invalidates the cache


def test_missing_folder_is_one_line_error(tmp_path):
    with pytest.raises(DDKitError, match="not found"):
        load_image_folder(tmp_path / "nope")


def test_empty_class_is_named(tmp_path):
    make_folder(tmp_path, per_class=2)
    (tmp_path / "zebra").mkdir()
    with pytest.raises(DDKitError, match="zebra.*no images"):
        load_image_folder(tmp_path, cache=False)


def test_corrupt_and_truncated_images_are_named(tmp_path):
    make_folder(tmp_path, per_class=2)
    (tmp_path / "cat" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DDKitError, match="bad.png"):
        load_image_folder(tmp_path, cache=False)
    (tmp_path / "cat" / "bad.png").unlink()
    good = (tmp_path / "dog" / "000.png").read_bytes()
    (tmp_path / "dog" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DDKitError, match="cut.png"):
        load_image_folder(tmp_path, cache=False)


def test_mixed_sizes_error_and_gray_rgba_are_converted(tmp_path):
    make_folder(tmp_path, per_class=2)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "cat" / "gray.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "dog" / "rgba.png")
    assert load_image_folder(tmp_path, cache=False).images.shape == (8, 3, 8, 8)
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / "frog" / "big.png")
    with pytest.raises(DDKitError, match="mixed image sizes"):
        load_image_folder(tmp_path, cache=False)


def test_splits_share_training_stats(dataset):
    train, test = load_splits(str(dataset))
    assert test.mean == train.mean and test.std == train.std
    assert len(train) == 48 and len(test) == 18


def test_digits_is_offline_and_split():
    tr, te = load_digits("train"), load_digits("test")
    assert tr.images.shape[1:] == (3, 8, 8) and len(tr) + len(te) == 1797 and tr.num_classes == 10


def test_unknown_split_and_missing_test_split(tmp_path):
    make_folder(tmp_path, per_class=2)
    with pytest.raises(DDKitError):
        load_data(str(tmp_path), "val")
    with pytest.raises(DDKitError, match="test"):
        load_data(str(tmp_path), "test")


def test_subset_file_checks_its_dataset(tmp_path, dataset):
    train = load_data(str(dataset))
    save_torch({"indices": torch.tensor([0, 20, 40]), "num_samples": len(train)}, tmp_path / "s.pt")
    assert load_subset_file(tmp_path / "s.pt", train).labels.tolist() == [0, 1, 2]
    save_torch({"indices": torch.tensor([0]), "num_samples": 7}, tmp_path / "other.pt")
    with pytest.raises(DDKitError, match="7 samples"):
        load_subset_file(tmp_path / "other.pt", train)


def _lines_naming(name, text):
    return sum(name in line for line in text.splitlines())


def test_unreadable_images_are_skipped_on_request_warned_once_each_and_listed(tmp_path, capsys):
    make_folder(tmp_path, per_class=3)
    (tmp_path / "cat" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DDKitError, match="bad.png.*--on-bad-image skip"):
        load_image_folder(tmp_path)
    d = load_image_folder(tmp_path, on_bad_image="skip")
    assert len(d) == 9 and len(d.skipped) == 1 and "bad.png" in d.skipped[0]
    assert _lines_naming("bad.png", capsys.readouterr().err) == 1
    again = load_image_folder(tmp_path, on_bad_image="skip")   # from the cache: still listed and warned
    assert again.skipped == d.skipped and _lines_naming("bad.png", capsys.readouterr().err) == 1
    with pytest.raises(DDKitError, match="bad.png"):             # a cache made by skipping does not hide it
        load_image_folder(tmp_path)
    for f in (tmp_path / "dog").iterdir():
        f.write_bytes(b"junk")
    with pytest.raises(DDKitError, match="'dog'.*no readable images"):
        load_image_folder(tmp_path, cache=False, on_bad_image="skip")


def test_one_class_is_refused_and_a_missing_test_class_is_named(tmp_path):
    make_folder(tmp_path / "one", classes=["cat"], per_class=2)
    with pytest.raises(DDKitError, match="one class folder.*at least two"):
        load_image_folder(tmp_path / "one", cache=False)
    make_folder(tmp_path / "ds" / "train", per_class=2)
    make_folder(tmp_path / "ds" / "test", classes=["cat", "dog", "lion"], per_class=2)
    with pytest.raises(DDKitError, match=r"test split \(3 classes\) differs from the training split \(3\): "
                                         r"lacks 'frog'; has 'lion' not in it"):
        load_splits(str(tmp_path / "ds"))


def test_batches_and_views_of_memory_data_are_the_stored_images(tmp_path):
    """Downstream code reads memory data through the Images interface: the stored tensor, as before; the
    peers' test view is what evaluate applied to normalised images before (identity at 32 px and below)."""
    from ddkit.augment import resize_center_crop
    make_folder(tmp_path, per_class=2, size=64)
    d = load_image_folder(tmp_path, cache=False)
    idx = torch.tensor([5, 0, 3])
    assert torch.equal(d.load(idx), d.images[idx]) and torch.equal(d.load(idx, "whole"), d.images[idx])
    assert d.fit_images is d.images
    assert [len(b) for b in d.batches(None, 4)] == [4, 2]
    test = torch.cat(list(d.batches(None, 4, "test")))
    torch.testing.assert_close(d.normalize(test), resize_center_crop(d.normalize(d.images), 64), atol=1e-5, rtol=0)
    small = load_data("digits", "test")
    assert next(small.batches(None, 8, "test")).dtype == torch.uint8  # 8 // 7 * 8 == 8: the stored image
