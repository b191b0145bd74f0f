import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from conftest import CLASSES, ZOO, zoo_model

from ddkit.cli import main
from ddkit.data import load_splits
from ddkit.models import build_model
from ddkit.teacher import import_teacher, load_checkpoint, load_teacher, train_teacher
from ddkit.train import accuracy, teacher_recipe
from ddkit.utils import DDKitError
from ddkit.zoo import IMAGENET_STATS


def test_teacher_learns_and_is_cached(dataset, monkeypatch, tmp_path):
    train, test = load_splits(str(dataset))
    model, ck = train_teacher(train, test, "convnet3", teacher_recipe(6), seed=1, progress=False)
    assert ck["cached"] is False and ck["test_acc"] > 0.6   # 3 easy classes: chance is 0.33
    assert ck["test_acc_flip_tta"] == accuracy(model, test.batches(None, 1000), test.labels, train.normalize, "cpu",
                                               flip_tta=True)
    monkeypatch.setattr("ddkit.teacher.fit", lambda *a, **k: pytest.fail("retrained a cached teacher"))
    model2, ck2 = train_teacher(train, test, "convnet3", teacher_recipe(6), seed=1, out=tmp_path / "t.pt",
                                progress=False)
    assert ck2["cached"] is True and (tmp_path / "t.pt").is_file()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_a_resumed_teacher_counts_the_time_of_its_interrupted_attempt(dataset, monkeypatch):
    import ddkit.train
    from ddkit.utils import STOP, cache_dir, load_torch
    train, test = load_splits(str(dataset))
    real_save = ddkit.train.save_torch
    monkeypatch.setattr(ddkit.train, "CHECKPOINT_S", 0.0)

    def save_then_stop(obj, path):  # pre-empted right after the first epoch's checkpoint
        real_save(obj, path)
        STOP["requested"] = True
    monkeypatch.setattr(ddkit.train, "save_torch", save_then_stop)
    try:
        with pytest.raises(DDKitError, match="stopped in epoch 1"):
            train_teacher(train, test, "convnet3", teacher_recipe(2), seed=5, progress=False)
    finally:
        STOP["requested"] = False
    partial, = (cache_dir() / "teachers").glob("*.partial")
    real_save({**load_torch(partial), "elapsed_s": 1000.0}, partial)  # as if the first attempt took 1000 s
    monkeypatch.setattr(ddkit.train, "save_torch", real_save)
    _, ck = train_teacher(train, test, "convnet3", teacher_recipe(2), seed=5, progress=False)
    assert ck["train_time_s"] >= 1000.0 and not partial.exists()


def test_a_whitened_teacher_keeps_the_first_layer_set_from_its_seeded_data_sample(dataset):
    train, _ = load_splits(str(dataset))
    recipe = teacher_recipe(1, "airnet")
    assert (recipe.batch_size, recipe.lr, recipe.label_smoothing) == (512, 0.4, 0.2)
    _, ck = train_teacher(train, None, "airnet", recipe, seed=3, use_cache=False, progress=False)
    ref = build_model("airnet", train.num_classes, train.image_size)
    sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))[:1000]
    ref.init_from_data(train.normalize(train.images[sample]))
    assert torch.equal(ck["state_dict"]["whiten.weight"], ref.whiten.weight)  # set from data, then frozen
    assert not torch.equal(ck["state_dict"]["head.weight"], ref.head.weight)  # the rest trained
    with pytest.raises(DDKitError, match="unknown teacher recipe 'fast'; choose from default, airnet"):
        teacher_recipe(1, "fast")


def test_checkpoint_mismatches_are_refused(teacher_path, tmp_path):
    model, ck = load_checkpoint(teacher_path)
    assert ck["classes"] == ["cat", "dog", "frog"] and ck["arch"] == "convnet3"
    with pytest.raises(DDKitError, match="is a convnet3, expected resnet18"):
        load_checkpoint(teacher_path, arch="resnet18")
    with pytest.raises(DDKitError, match="3 classes"):
        load_checkpoint(teacher_path, classes=["a", "b"])


def test_foreign_and_malicious_files_are_not_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w')",))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DDKitError, match="not a readable"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(DDKitError, match="not a ddkit model checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(DDKitError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_an_ensemble_of_one_teacher_is_that_teacher_and_of_copies_the_same_logits(teacher_path, tmp_path):
    from ddkit.teacher import Ensemble, load_teachers
    from ddkit.utils import load_torch, save_torch
    teacher, ck = load_checkpoint(teacher_path)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        ref = teacher(x)
        assert torch.equal(Ensemble([teacher])(x), ref)
        one, info = load_teachers([str(teacher_path)])
        assert torch.equal(one(x), ref) and info["teachers"] == [str(teacher_path)]
        two, _ = load_teachers([str(teacher_path), str(teacher_path)])
        assert isinstance(two, Ensemble) and torch.equal(two(x), ref)
    other = load_torch(teacher_path)
    other["std"] = [s * 2 for s in other["std"]]
    save_torch(other, tmp_path / "other.pt")
    with pytest.raises(DDKitError, match="differ in std"):
        load_teachers([str(teacher_path), str(tmp_path / "other.pt")])


@pytest.mark.parametrize("spec", ZOO)
def test_frozen_import_reproduces_the_imported_logits(spec, zoo_weights, dataset, tmp_path, capsys):
    out = tmp_path / "frozen.pt"
    assert main(["teacher", "--import", spec, "--teacher-weights", str(zoo_weights[spec]), "--data", str(dataset),
                 "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == spec and info["image_size"] == 8 and info["weights"] == str(zoo_weights[spec])
    frozen, ck = load_checkpoint(out, classes=CLASSES)
    assert ck["classes"] == CLASSES and ck["native_stem"] is True
    own = zoo_model(spec, 3)
    own.load_state_dict(torch.load(zoo_weights[spec], weights_only=True))
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(frozen(x), own.eval()(x))
    assert ck["mean"] == list(own.pretrained_cfg["mean"] if spec.startswith("timm") else IMAGENET_STATS[0])


def test_import_takes_the_data_statistics_and_resolution_when_asked(zoo_weights, dataset, tmp_path, capsys):
    out = tmp_path / "frozen.pt"
    assert main(["teacher", "--import", "timm:test_resnet", "--teacher-weights", str(zoo_weights["timm:test_resnet"]),
                 "--data", str(dataset), "--stats", "data", "--image-size", "16", "--out", str(out)]) == 0
    ck = load_checkpoint(out)[1]
    train = load_splits(str(dataset))[0]
    assert ck["mean"] == list(train.mean) and ck["stats_from"] == "data" and ck["image_size"] == 16


def test_weights_are_found_in_the_torch_hub_cache(zoo_weights, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DDKitError, match=r"no weights for torchvision:resnet18: looked in .*"
                                         r"checkpoints/resnet18-f37072fd\.pth, download\.pytorch\.org \(offline\)"):
        import_teacher("torchvision:resnet18", classes=CLASSES, image_size=8)
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    shutil.copy(zoo_weights["torchvision:resnet18"], cached)
    for spec in ("torchvision:resnet18", "torchvision:resnet18.IMAGENET1K_V1"):   # DEFAULT is V1
        _, ck = import_teacher(spec, classes=CLASSES, image_size=8)
        assert ck["imported_from"] == str(cached) and ck["arch"] == spec
    with pytest.raises(DDKitError, match="no resnet18 weights 'V9'; choose IMAGENET1K_V1"):
        import_teacher("torchvision:resnet18.V9")


def test_timm_weights_are_found_in_the_hugging_face_cache(zoo_weights, monkeypatch, tmp_path):
    import huggingface_hub
    from safetensors.torch import save_file
    blob = tmp_path / "model.safetensors"   # what the Hub serves for timm models
    save_file(torch.load(zoo_weights["timm:test_resnet"], weights_only=True), blob)
    asked = []

    def cached(repo, filename, **kw):
        asked.append((repo, filename))
        return str(blob) if filename == "model.safetensors" else None
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cached)
    model, ck = import_teacher("timm:test_resnet", classes=CLASSES, image_size=8)
    assert ("timm/test_resnet.r160_in1k", "model.safetensors") in asked and ck["imported_from"] == str(blob)
    assert ck["mean"] == [0.5, 0.5, 0.5] and ck["input_size"] == 160


def test_import_mismatches_are_one_line(zoo_weights, teacher_path, tmp_path, monkeypatch):
    r18 = zoo_weights["torchvision:resnet18"]
    with pytest.raises(DDKitError, match=r"torchvision:resnet18 has 3 outputs but the data has 2 classes"):
        import_teacher("torchvision:resnet18", r18, ["a", "b"], 8)
    with pytest.raises(DDKitError, match=r"do not fit torchvision:resnet18: Missing key"):
        import_teacher("torchvision:resnet18", zoo_weights["timm:test_resnet"], CLASSES, 8)
    with pytest.raises(DDKitError, match="3 outputs and no known class names: give --data"):
        import_teacher("torchvision:resnet18", r18, image_size=8)
    with pytest.raises(DDKitError, match="holds its own weights"):
        load_teacher(str(teacher_path), r18)
    (tmp_path / "nonclassifier_nets.py").write_text(
        "import torch.nn as nn\n"
        "def encoder():\n"   # a final Linear, but it returns features [n, 3, 16], not logits
        "    return nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(2), nn.Linear(64, 16))\n"
        "def conv():\n"
        "    return nn.Conv2d(3, 3, 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(2), nn.Linear(64, 16)).state_dict(), tmp_path / "e.pt")
    with pytest.raises(DDKitError, match=r"nonclassifier_nets:encoder is not a classifier: it returns \(2, 3, 16\)"):
        import_teacher("nonclassifier_nets:encoder", tmp_path / "e.pt", image_size=8)
    with pytest.raises(DDKitError, match="Conv2d is not a classifier"):
        import_teacher("nonclassifier_nets:conv", tmp_path / "e.pt", image_size=8)


def test_a_user_module_imports_with_its_state_dict(tmp_path, monkeypatch, dataset):
    (tmp_path / "user_nets.py").write_text(
        "import torch.nn as nn\n"
        "def net(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from user_nets import net
    own = net(3)
    torch.save({"state_dict": own.state_dict()}, tmp_path / "net.pt")   # a training script's wrapper
    model, ck = load_teacher("user_nets:net", str(tmp_path / "net.pt"), CLASSES, 8)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), own.eval()(x)) and ck["stats_from"].startswith("ImageNet")


def test_cli_import_errors_are_one_line_and_write_nothing(dataset, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    p = subprocess.run([sys.executable, "-m", "ddkit", "teacher", "--import", "torchvision:resnet18", "--data",
                        str(dataset), "--out", str(tmp_path / "t.pt")], capture_output=True, text=True, env=env)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "no weights for torchvision:resnet18" in err[0]
    assert not (tmp_path / "t.pt").exists()


def test_an_ensemble_takes_zoo_teachers_with_their_weights_in_order(zoo_weights, teacher_path):
    from ddkit.teacher import Ensemble, load_teachers
    r18 = str(zoo_weights["torchvision:resnet18"])
    one, _ = load_teachers(["torchvision:resnet18"], [r18], CLASSES, 8)
    two, info = load_teachers(["torchvision:resnet18"] * 2, [r18, r18], CLASSES, 8)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert isinstance(two, Ensemble) and torch.equal(two(x), one(x).float())
    assert info["teachers"] == ["torchvision:resnet18"] * 2
    with pytest.raises(DDKitError, match="1 --teacher-weights for 2 torchvision:/timm:/module:function teachers"):
        load_teachers([str(teacher_path), "torchvision:resnet18", "timm:test_resnet"], [r18], CLASSES, 8)
