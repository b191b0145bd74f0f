import json

import pytest
import torch

from ddkit.cli import main
from ddkit.distill import DistillConfig, distill
from ddkit.layouts import detect, read_set, write_indexed
from ddkit.rundir import DistilledSet, export_ddranking, read_run
from ddkit.utils import DDKitError, save_torch

CLASSES = ["cat", "dog", "frog"]   # the dataset's class order (conftest)


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    return distill(DistillConfig(method="random", ipc=2, data=str(dataset)), tmp_path_factory.mktemp("r") / "run",
                   "cpu", progress=False)


@pytest.mark.parametrize("layout, first", [("rded", "00000/class00000_id00000.png"),
                                           ("sre2l", "new000/class000_id000.png")])
def test_a_run_goes_out_and_back_in_each_peer_layout(run, tmp_path, layout, first):
    out = write_indexed(read_run(run), tmp_path / layout, layout)
    assert (out / first).is_file() and len(list(out.rglob("*.png"))) == 6 and detect(out) == layout
    back, orig = read_set(out, CLASSES, by_index=True), read_run(run)
    assert back.classes == CLASSES and back.labels.tolist() == orig.labels.tolist()
    assert (back.images - orig.images).abs().max() <= 0.5 / 255 + 1e-6   # 8-bit PNG of the run's pixels
    with pytest.raises(DDKitError, match="already exists"):
        write_indexed(read_run(run), out, layout)


def test_index_named_classes_need_an_explicit_mapping_with_matching_counts(run, tmp_path):
    out = write_indexed(read_run(run), tmp_path / "rded", "rded")
    with pytest.raises(DDKitError, match="names its classes by index .*--classes-by-index"):
        read_set(out, CLASSES)
    with pytest.raises(DDKitError, match="has 3 classes .*, the dataset 4"):
        read_set(out, CLASSES + ["owl"], by_index=True)
    # any other correspondence is a class-map file
    (tmp_path / "map.json").write_text(json.dumps({"00000": "frog", "00001": "cat", "00002": "dog"}))
    mapped = read_set(out, CLASSES, class_map=tmp_path / "map.json")
    assert mapped.classes == ["frog", "cat", "dog"]
    (tmp_path / "short.json").write_text(json.dumps({"00000": "frog"}))
    with pytest.raises(DDKitError, match="no entry for"):
        read_set(out, CLASSES, class_map=tmp_path / "short.json")
    # a dataset whose own class folders are named 00000, ... needs no option
    assert read_set(out, ["00000", "00001", "00002"]).classes == ["00000", "00001", "00002"]
    mixed = write_indexed(read_run(run), tmp_path / "sre2l", "sre2l")
    (mixed / "extra").mkdir()   # a class folder that is not the layout's
    next(out.rglob("*.png")).rename(mixed / "extra" / "0.png")
    assert detect(mixed) == "folder"
    with pytest.raises(DDKitError, match="class folder 'extra' is not named as the sre2l layout's"):
        read_set(mixed, CLASSES, layout="sre2l", by_index=True)


def test_ddranking_tensors_read_back_normalised_or_not(run, tmp_path):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    export_ddranking(run, tmp_path / "t", mean=mean, std=std)
    orig = read_run(run)
    back = read_set(tmp_path / "t", CLASSES, by_index=True, mean=mean, std=std)
    assert back.classes == CLASSES and back.labels.tolist() == orig.labels.sort().values.tolist()
    torch.testing.assert_close(back.images, orig.images[orig.labels.argsort(stable=True)], atol=1e-5, rtol=0)
    with pytest.raises(DDKitError, match="normalised .*give a teacher"):
        read_set(tmp_path / "t", CLASSES, by_index=True)
    # DD-Ranking's own files: soft labels only, so IPC copies of each class in class order
    peer = tmp_path / "peer"
    peer.mkdir()
    save_torch(torch.rand(6, 3, 8, 8), peer / "images.pt")
    save_torch(torch.randn(6, 3), peer / "labels.pt")
    assert read_set(peer, CLASSES, by_index=True).labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(DDKitError, match="7 images without class labels"):
        save_torch(torch.rand(7, 3, 8, 8), peer / "images.pt")
        read_set(peer, CLASSES, by_index=True)


def test_evaluate_scores_a_peer_folder_and_a_count_mismatch_is_one_line(run, dataset, teacher_path, tmp_path, capsys):
    out = tmp_path / "sre2l"
    assert main(["export", str(run), "--out", str(out), "--layout", "sre2l"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["classes"] == CLASSES
    assert main(["evaluate", str(out), "--data", str(dataset), "--teacher", str(teacher_path), "--classes-by-index",
                 "--seeds", "1", "--epochs", "1", "--quiet"]) == 0
    assert "6 images" in capsys.readouterr().out
    extra = DistilledSet(torch.rand(8, 3, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), ["a", "b", "c", "d"])
    write_indexed(extra, tmp_path / "four", "rded")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["evaluate", str(tmp_path / "four"), "--data", str(dataset), "--teacher", str(teacher_path),
                 "--classes-by-index", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddkit: error:") and "has 4 classes" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nothing written
