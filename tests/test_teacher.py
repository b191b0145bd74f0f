import pickle

import pytest
import torch

from ddkit.data import load_splits
from ddkit.teacher import load_checkpoint, train_teacher
from ddkit.train import teacher_recipe
from ddkit.utils import DDKitError


def test_teacher_learns_and_is_cached(dataset, monkeypatch, tmp_path):
    train, test = load_splits(str(dataset))
    model, ck = train_teacher(train, test, "convnet3", teacher_recipe(6), seed=1, progress=False)
    assert ck["cached"] is False and ck["test_acc"] > 0.6   # 3 easy classes: chance is 0.33
    monkeypatch.setattr("ddkit.teacher.fit", lambda *a, **k: pytest.fail("retrained a cached teacher"))
    model2, ck2 = train_teacher(train, test, "convnet3", teacher_recipe(6), seed=1, out=tmp_path / "t.pt",
                                progress=False)
    assert ck2["cached"] is True and (tmp_path / "t.pt").is_file()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


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
