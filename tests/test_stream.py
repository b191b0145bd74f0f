"""The stream backend: tiny generated photo folders (JPEGs of mixed sizes) and WebDataset shards."""
import io
import json
import math
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASSES, make_folder
from ddkit.cli import main
from ddkit.data import ImageData, load_image_folder
from ddkit.models import build_model
from ddkit.rundir import read_json, read_run
from ddkit.stream import StreamData, open_data, open_splits
from ddkit.utils import DDKitError, stable_hash, tensor_hash


def make_photos(root, per_class=4, seed=0):
    """JPEGs of 12-40 px on each side, class c bright in channel c, so a model can learn them."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(12, 41, 2)
            img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
            img[..., c] = 230
            Image.fromarray(img).save(root / name / f"{i:03d}.jpg")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    make_photos(root / "train", per_class=6, seed=0)
    make_photos(root / "test", per_class=3, seed=1)
    return root


def test_auto_streams_photos_of_mixed_size_and_keeps_same_size_folders_in_memory(photos, dataset):
    train = open_data(str(photos))
    assert isinstance(train, StreamData) and train.image_size == 224 and train.classes == CLASSES
    assert isinstance(open_data(str(dataset)), ImageData)
    assert open_data(str(photos), image_size=16).load(torch.arange(3)).shape == (3, 3, 16, 16)
    train, test = open_splits(str(photos), image_size=16)  # the test split on the training split's backend
    assert isinstance(test, StreamData) and (test.image_size, len(test)) == (16, 9)
    assert (test.mean, test.std) == (train.mean, train.std)
    with pytest.raises(DDKitError, match="--data-backend stream"):
        open_data(str(photos), backend="memory")
    with pytest.raises(DDKitError, match="loaded in memory"):
        open_data("digits", backend="stream")


def test_memory_backend_is_unchanged_and_stream_decodes_a_same_size_folder_to_the_same_tensors(tmp_path):
    make_folder(tmp_path, per_class=5, size=16)
    old = load_image_folder(tmp_path, cache=False)
    mem, st = open_data(str(tmp_path), backend="memory"), open_data(str(tmp_path), backend="stream")
    assert torch.equal(mem.images, old.images) and (mem.mean, mem.std) == (old.mean, old.std)
    # the teacher/score cache key of memory data is what it was before the interface existed
    assert mem.content_hash() == stable_hash([tensor_hash(old.images), tensor_hash(old.labels), old.classes])
    assert torch.equal(mem.load(torch.arange(len(mem))), old.images)
    assert st.image_size == 16 and st.classes == mem.classes and torch.equal(st.labels, mem.labels)
    assert all(torch.equal(st.class_indices(c), mem.class_indices(c)) for c in range(3))
    assert torch.equal(torch.cat(list(st.batches(None, 4))), mem.images)      # center view at the native size
    assert torch.equal(st.load(torch.arange(15), "whole"), mem.images)
    sub = st.subset(st.class_indices(2))
    assert torch.equal(sub.load(torch.arange(5)), mem.images[10:]) and sub.content_hash() != st.content_hash()


def test_training_views_do_not_depend_on_workers_or_ranks(photos, monkeypatch):
    from ddkit.train import teacher_recipe
    data = open_data(str(photos), image_size=16)
    cfg = teacher_recipe(1)

    def epoch(world, rank, workers):
        monkeypatch.setattr("ddkit.stream.WORKERS", workers)
        return list(data.epoch(cfg, 7, torch.Generator().manual_seed(3), rank, world))
    one = epoch(1, 0, 0)
    halves = [epoch(2, r, 2) for r in (0, 1)]
    assert [len(b) for b, _, _ in one] == [7, 7, 4]
    for (b, x, _), (b0, x0, _), (b1, x1, _) in zip(one, *halves):
        assert torch.equal(b, b0) and torch.equal(x, torch.cat([x0, x1]))
    assert one[0][1].shape == (7, 3, 16, 16) and one[0][1].dtype == torch.uint8
    test = open_data(str(photos), "test", 16, "stream")
    assert next(test.batches(None, 5, "test")).shape == (5, 3, 16, 16)


def test_a_class_reads_only_its_own_files(photos, monkeypatch):
    from ddkit.methods import Context, build_method
    from ddkit.stream import FolderIndex
    data = open_data(str(photos), image_size=16)
    opened, read = [], FolderIndex.read
    monkeypatch.setattr("ddkit.stream.WORKERS", 0)  # decode here, where the reads can be seen
    monkeypatch.setattr(FolderIndex, "read", lambda self, i: opened.append(read(self, i)) or opened[-1])
    ctx = Context(data, None, 3, torch.device("cpu"), torch.Generator().manual_seed(0), progress=False)
    out = build_method("random").run(ctx, [1])
    assert out.x.shape == (3, 3, 16, 16) and len(opened) == 3
    assert all(f"{os.sep}dog{os.sep}" in p for p in opened)


def test_bad_images_on_the_stream_error_or_are_skipped_once(tmp_path, capsys):
    make_photos(tmp_path, per_class=3)
    (tmp_path / "dog" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DDKitError, match="bad.jpg.*--on-bad-image skip"):
        open_data(str(tmp_path), image_size=16).load(torch.arange(10))
    data = open_data(str(tmp_path), image_size=16, on_bad_image="skip")
    dog = data.class_indices(1)
    for _ in range(2):
        x = data.load(dog)
    assert x.shape == (4, 3, 16, 16) and len(data.skipped) == 1 and "bad.jpg" in data.skipped[0]
    assert capsys.readouterr().err.count("skipped: cannot decode image") == 1
    # the unreadable file's row is served by the next readable image of its class
    assert torch.equal(x[3], x[0])


def test_a_class_with_no_readable_image_is_one_line_also_from_loader_workers(tmp_path, monkeypatch):
    make_photos(tmp_path, per_class=2)
    for f in (tmp_path / "frog").iterdir():
        f.write_bytes(b"not an image")
    monkeypatch.setattr("ddkit.stream.WORKERS", 1)   # the error is met inside a worker process
    data = open_data(str(tmp_path), image_size=16, on_bad_image="skip")
    with pytest.raises(DDKitError) as e:
        list(data.batches(None, 2))
    assert str(e.value) == "class 'frog' has no readable images"


def test_cli_skip_counts_bad_images_in_metrics(tmp_path):
    make_photos(tmp_path / "d", per_class=3)
    (tmp_path / "d" / "cat" / "000.jpg").write_bytes(b"\xff\xd8 truncated")  # IPC 3 takes every cat image
    args = ["distill", "--method", "random", "--ipc", "3", "--data", str(tmp_path / "d"), "--image-size", "16",
            "--data-backend", "stream", "--quiet", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "err")]) == 2 and not (tmp_path / "err").exists()
    assert main([*args, "--out", str(tmp_path / "run"), "--on-bad-image", "skip"]) == 0
    (skipped,) = read_json(tmp_path / "run" / "metrics.json")["skipped_images"]
    assert "000.jpg" in skipped and read_run(tmp_path / "run").images.shape == (9, 3, 16, 16)


@pytest.fixture(scope="module")
def stream_teacher(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("st") / "teacher.pt"
    assert main(["teacher", "--data", str(photos), "--data-backend", "stream", "--image-size", "16", "--epochs",
                 "2", "--arch", "convnet3", "--out", str(out), "--quiet", "--device", "cpu", "--no-cache"]) == 0
    return out


def test_teacher_distill_and_evaluate_on_stream_data_via_the_cli(photos, stream_teacher, tmp_path, capsys):
    from ddkit.utils import load_torch
    ck = load_torch(stream_teacher)
    assert ck["image_size"] == 16 and ck["classes"] == CLASSES and 0 <= ck["test_acc"] <= 1
    run = tmp_path / "e2d"
    assert main(["distill", "--method", "e2d", "--ipc", "2", "--data", str(photos), "--teacher", str(stream_teacher),
                 "--data-backend", "stream", "--image-size", "16", "--set", "iterations=3", "--out", str(run),
                 "--quiet", "--device", "cpu"]) == 0
    ds = read_run(run)
    assert ds.images.shape == (6, 3, 16, 16)
    assert read_json(run / "config.json")["distill"]["data_backend"] == "stream"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--epochs", "1", "--seeds", "1", "--data-backend", "stream", "--quiet",
                 "--device", "cpu", "--protocol", "rded", "--json", str(tmp_path / "r.json")]) == 0
    (res,) = json.loads((tmp_path / "r.json").read_text()).values()
    assert res["n"] == 1 and 0 <= res["mean"] <= 100


@pytest.mark.parametrize("method, settings", [("delt", {"iterations": "4", "round_iters": "2"}),
                                              ("sre2l", {"iterations": "2", "bn_targets": "data"}),
                                              ("ddoq", {"restarts": "1"})])
def test_methods_that_read_real_images_run_on_stream_data(photos, stream_teacher, tmp_path, method, settings):
    from ddkit.distill import DistillConfig, distill
    cfg = DistillConfig(method=method, ipc=2, data=str(photos), teacher=str(stream_teacher), settings=settings,
                        data_backend="stream", image_size=16, classes_per_group=2)
    ds = read_run(distill(cfg, tmp_path / "run", "cpu", progress=False))
    assert ds.images.shape == (6, 3, 16, 16) and torch.isfinite(ds.images).all()


def test_select_and_the_full_baseline_on_stream_data(photos, stream_teacher, tmp_path):
    assert main(["select", "--data", str(photos), "--data-backend", "stream", "--image-size", "16", "--keep", "0.5",
                 "--proxy-epochs", "1", "--out", str(tmp_path / "half.pt"), "--quiet", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "half.json").read_text())["num_kept"] == 9
    assert main(["select", "--data", str(photos), "--data-backend", "stream", "--image-size", "16", "--keep", "0.5",
                 "--criterion", "causal", "--teacher", str(stream_teacher), "--ipc", "2", "--out",
                 str(tmp_path / "causal.pt"), "--quiet", "--device", "cpu"]) == 0
    assert main(["evaluate", "--full", "--data", str(photos), "--subset", str(tmp_path / "half.pt"), "--labels",
                 "hard", "--epochs", "1", "--seeds", "1", "--data-backend", "stream", "--image-size", "16",
                 "--quiet", "--device", "cpu"]) == 0


def test_torchrun_two_processes_equal_one_on_the_stream(photos, stream_teacher, tmp_path):
    args = ["-m", "ddkit", "distill", "--method", "rded", "--ipc", "2", "--data", str(photos), "--teacher",
            str(stream_teacher), "--data-backend", "stream", "--image-size", "16", "--classes-per-group", "1",
            "--set", "candidates=4", "--quiet", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], check=True, capture_output=True, env=env)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                        "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert torch.equal(read_run(tmp_path / "two").images, read_run(tmp_path / "one").images)


def write_shards(root, folder, per_shard=5):
    """The photos of an ImageFolder as WebDataset shards (key.jpg + key.cls) and classes.txt."""
    root.mkdir(parents=True)
    files = sorted(p for p in folder.rglob("*.jpg"))
    for s in range(0, len(files), per_shard):
        with tarfile.open(root / f"shard-{s // per_shard:03d}.tar", "w") as tar:
            for f in files[s:s + per_shard]:
                key, label = f"{f.parent.name}_{f.stem}", str(CLASSES.index(f.parent.name)).encode()
                for name, blob in ((f"{key}.jpg", f.read_bytes()), (f"{key}.cls", label)):
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def test_webdataset_shards_stream_with_the_folder_interface(photos, tmp_path, monkeypatch):
    shards = write_shards(tmp_path / "wds" / "train", photos / "train")
    data = open_data(str(tmp_path / "wds"), image_size=16)
    folder = open_data(str(photos), image_size=16)
    assert isinstance(data, StreamData) and data.classes == CLASSES and len(data) == len(folder)
    assert torch.equal(data.labels.sort().values, folder.labels)
    assert data.load(data.class_indices(2)).shape == (6, 3, 16, 16)
    assert torch.equal(data.load(data.class_indices(0)), folder.load(folder.class_indices(0)))  # same photos
    monkeypatch.setitem(sys.modules, "webdataset", None)  # without the extra: the cached index still serves
    assert torch.equal(open_data(str(tmp_path / "wds"), image_size=16).labels, data.labels)
    (shards / "more.tar").write_bytes((shards / "shard-000.tar").read_bytes())  # changed shards: a new pass
    with pytest.raises(DDKitError, match=r"pip install 'ddkit\[webdataset\]'"):
        open_data(str(tmp_path / "wds"))


def test_students_on_the_stream_get_cutmix_and_randaugment(photos, stream_teacher):
    # the default protocol (CutMix, RandAugment) on streamed photos: partners are drawn among the decoded rows
    # and every view is mixed with one box per batch, as in memory
    from ddkit import train as tr
    from ddkit.protocols import preset
    from ddkit.stream import open_data
    data = open_data(str(photos), "train", 16, "stream")
    cfg = preset("ddkit").train_config(2, 6, 3)
    assert cfg.cutmix and cfg.randaug_ops
    seen = []
    real_paste = tr.paste
    tr.paste = lambda x, partner, box: seen.append((x.shape, box.tolist())) or real_paste(x, partner, box)
    try:
        model = build_model("convnet3", 3, 16)
        hist = tr.fit(model, data, data.labels, data.normalize, cfg, torch.device("cpu"), seed=0, progress=False)
    finally:
        tr.paste = real_paste
    assert len(seen) == 2 * math.ceil(len(data) / cfg.batch_size) and all(math.isfinite(v) for v in hist["loss"])
