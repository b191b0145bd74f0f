import pytest
import torch
from PIL import Image

from ddkit.rundir import DistilledSet, _to_uint8, read_run, safe_dirname, write_run
from ddkit.utils import DDKitError


def _set(classes):
    g = torch.Generator().manual_seed(0)
    n = len(classes)
    return DistilledSet(torch.rand(2 * n, 3, 8, 8, generator=g), torch.arange(n).repeat_interleave(2), classes)


def test_the_pngs_are_the_set_losslessly_and_data_pt_holds_no_second_copy(tmp_path):
    ds = _set(["a", "b"])
    ds.weights = torch.tensor([0.5, 1.5, 1.0, 1.0])
    run = write_run(tmp_path / "run", ds, {"k": 1}, {"m": 2})
    blob = torch.load(run / "data.pt")
    assert "images" not in blob and blob["store"] == "uint8" and blob["files"][1] == "images/a/0001.png"
    back = read_run(run)
    assert back.weights.tolist() == [0.5, 1.5, 1.0, 1.0] and back.labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(read_run(run, dtype=torch.uint8).images, torch.from_numpy(_to_uint8(ds.images)).permute(0, 3, 1, 2))
    assert torch.equal(back.images, read_run(run, dtype=torch.uint8).images.float() / 255)
    assert (back.images - ds.images).abs().max() <= 0.5 / 255 + 1e-6
    assert sorted(p.name for p in (run / "images" / "a").iterdir()) == ["0000.png", "0001.png"]
    (run / "data.pt").unlink()   # a plain ImageFolder (e.g. made by another tool) reads too, 8-bit
    plain = read_run(run)
    assert plain.classes == ["a", "b"] and torch.equal(plain.images, back.images)


def test_float32_store_keeps_the_images_unquantised_and_old_runs_still_load(tmp_path):
    ds = _set(["a", "b"])
    run = write_run(tmp_path / "run", ds, {}, {}, store="float32")
    assert torch.equal(read_run(run).images, ds.images)
    with pytest.raises(DDKitError, match="unknown store"):
        write_run(tmp_path / "bad", ds, {}, {}, store="fp8")
    blob = torch.load(run / "data.pt")   # a run written by ddkit before v2: float images, no file list
    torch.save({"format": "ddkit-run-v1", "images": ds.images, "labels": ds.labels, "classes": ds.classes},
               run / "data.pt")
    assert torch.equal(read_run(run).images, ds.images) and blob["format"] == "ddkit-run-v2"


def test_a_changed_or_missing_png_is_a_clear_error(tmp_path):
    run = write_run(tmp_path / "run", _set(["a"]), {}, {})
    Image.new("RGB", (4, 4)).save(run / "images" / "a" / "0000.png")
    with pytest.raises(DDKitError, match="run folder was changed"):
        read_run(run)
    Image.new("RGB", (8, 8)).save(run / "images" / "a" / "0000.png")
    assert read_run(run).images[0].max() == 0       # a same-sized edit is what the set now holds
    (run / "images" / "a" / "0001.png").unlink()
    with pytest.raises(DDKitError, match="cannot read"):
        read_run(run)


def test_hostile_class_names_stay_inside_the_run(tmp_path):
    names = ["..", "../../etc", "a/b", ".hidden", "ünï cödé", ""]
    run = write_run(tmp_path / "run", _set(names), {}, {})
    folders = sorted(p.name for p in (run / "images").iterdir())
    assert len(folders) == len(names) and all(not f.startswith(".") and "/" not in f for f in folders)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert safe_dirname("..") != ".." and safe_dirname("a/b") == "a%2Fb"


def test_existing_output_is_refused_and_failure_leaves_nothing(tmp_path, monkeypatch):
    write_run(tmp_path / "run", _set(["a"]), {}, {})
    with pytest.raises(DDKitError, match="already exists"):
        write_run(tmp_path / "run", _set(["a"]), {}, {})

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("ddkit.rundir.save_json", full_disk)
    with pytest.raises(OSError):
        write_run(tmp_path / "run2", _set(["a"]), {}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]   # no half-written run2


def test_missing_run_is_clear(tmp_path):
    with pytest.raises(DDKitError, match="not found"):
        read_run(tmp_path / "nope")


def test_ddranking_export_has_images_and_soft_labels(tmp_path, teacher_path):
    from ddkit.rundir import export_ddranking
    from ddkit.teacher import load_checkpoint
    teacher, ck = load_checkpoint(teacher_path)
    ds = _set(["cat", "dog", "frog"])
    ds.labels = torch.tensor([2, 0, 1, 0, 2, 1])   # interleaved: DD-Ranking wants class-major order
    run = write_run(tmp_path / "run", ds, {}, {})
    out = export_ddranking(run, tmp_path / "dd", teacher, ck["mean"], ck["std"])
    images, labels = torch.load(out / "images.pt"), torch.load(out / "labels.pt")
    assert images.shape == (6, 3, 8, 8) and labels.shape == (6, 3)
    assert torch.load(out / "hard_labels.pt").tolist() == [0, 0, 1, 1, 2, 2]
    first_cat = (ds.images[1] - torch.tensor(ck["mean"]).view(3, 1, 1)) / torch.tensor(ck["std"]).view(3, 1, 1)
    torch.testing.assert_close(images[0], first_cat, atol=1e-2, rtol=0)   # PNG round trip: 1/255
    ds.labels = torch.tensor([0, 0, 0, 1, 1, 2])
    with pytest.raises(DDKitError, match="same number of images"):
        export_ddranking(write_run(tmp_path / "uneven", ds, {}, {}), tmp_path / "dd2")


def test_uint8_conversion_in_chunks_matches_the_whole_tensor():
    x = torch.rand(7, 3, 5, 5) * 1.2 - 0.1   # out of range too: clamped
    whole = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert (_to_uint8(x, chunk=3) == whole).all()


def test_an_evaluation_entry_keeps_the_other_keys_written_since(tmp_path):
    # two evaluations of one run (two protocols in two processes) store one key each, merged with the file as
    # it is on disk, so neither drops the other's students
    from ddkit.rundir import read_json, update_evaluation, update_metrics
    from ddkit.utils import save_json
    save_json({"evaluation": {}}, tmp_path / "metrics.json")
    update_evaluation(tmp_path, "convnet3/soft/rded/e300-a", {"seeds": {"0": {"acc": 0.5}}})
    update_evaluation(tmp_path, "resnet18/soft/ddkit/e300-b", {"seeds": {"0": {"acc": 0.6}}})
    update_evaluation(tmp_path, "convnet3/soft/rded/e300-a", {"seeds": {"0": {"acc": 0.5}, "1": {"acc": 0.4}}})
    update_metrics(tmp_path, diversity_cos=0.5)
    m = read_json(tmp_path / "metrics.json")
    assert m["evaluation"] == {"convnet3/soft/rded/e300-a": {"seeds": {"0": {"acc": 0.5}, "1": {"acc": 0.4}}},
                               "resnet18/soft/ddkit/e300-b": {"seeds": {"0": {"acc": 0.6}}}}
    assert m["diversity_cos"] == 0.5
