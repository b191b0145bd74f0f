"""The squeeze pass: per-class and global statistics equal a direct computation; cache hit, resume, refusal."""
import json

import pytest
import torch
import torch.nn.functional as F

from ddkit import stats
from ddkit.data import ImageData
from ddkit.models import build_model
from ddkit.stats import class_seed, squeeze, stat_layers, views
from ddkit.utils import DDKitError


def _data(n=5, size=16):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3 * n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(3).repeat_interleave(n)
    return ImageData(images, labels, ["a", "b", "c"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("convnet3", 3, 16).eval()


def _direct(model, data, c, scale):
    """Per-image statistics of every stat layer over class c's views, written out with plain torch ops."""
    x = torch.cat(list(views(data, data.class_indices(c), 4, scale, class_seed(0, c), "cpu")))
    feats = []
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: feats.append(i[0] if k == "bn" else o) and None)
             for m, k in stat_layers(model)]
    with torch.no_grad():
        model(data.normalize(x))
    for h in hooks:
        h.remove()
    rows = []
    for a, (_, k) in zip(feats, stat_layers(model)):
        rows.append((a.mean((2, 3)), a.var((2, 3), unbiased=False)))
        if k == "conv":
            side = -(-a.shape[-1] // 16) * 16
            b = F.interpolate(a, size=(side, side), mode="bilinear", align_corners=False)
            blocks = [b[:, :, 16 * i:16 * i + 16, 16 * j:16 * j + 16].flatten(1)
                      for i in range(side // 16) for j in range(side // 16)]
            rows.append((torch.stack([p.mean(1) for p in blocks], 1),
                         torch.stack([p.var(1, unbiased=False) for p in blocks], 1)))
    return [torch.cat(r, 1) for r in zip(*rows)]    # [n, D] means, [n, D] variances


def test_squeeze_statistics_equal_a_direct_computation(tmp_path):
    data, model = _data(), _model()
    st = squeeze(model, data, tmp_path / "s", scale=(0.3, 1.0), progress=False)
    per = [_direct(model, data, c, (0.3, 1.0)) for c in range(3)]
    for c, (m, v) in enumerate(per):   # EDC's per-class targets: the class's per-image statistics, averaged
        assert torch.allclose(st.class_targets([c])[0], torch.stack([m.mean(0), v.mean(0)]), rtol=1e-4, atol=1e-5)
    m = torch.cat([p[0] for p in per])
    v = torch.cat([p[1] for p in per])
    # global: pooled over every view's pixels = mean of the within-image variances + variance of the image means
    pooled = torch.stack([m.mean(0), v.mean(0) + m.var(0, unbiased=False)])
    assert torch.allclose(st.global_targets(), pooled, rtol=1e-4, atol=1e-5)
    assert st.layout.size == m.shape[1] and st.global_targets().shape == (2, m.shape[1])
    # a group reads only its own classes' files
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == \
        ["class_00000.pt", "class_00001.pt", "class_00002.pt", "global.pt", "manifest.json"]


def test_squeeze_is_cached_resumes_and_refuses_other_inputs(tmp_path, monkeypatch):
    data, model = _data(3), _model()
    first = squeeze(model, data, root=tmp_path, progress=False)
    folder = first.folder
    assert folder.parent == tmp_path and folder.name == json.loads((folder / "manifest.json").read_text())["hash"]
    ref = torch.cat([first.global_targets(), first.class_targets([0, 1, 2]).flatten(0, 1)])
    calls = []
    real = stats._class_rows
    monkeypatch.setattr(stats, "_class_rows", lambda *a: calls.append(1) or real(*a))
    again = squeeze(model, data, root=tmp_path, progress=False)   # a cache hit: nothing recomputed
    assert calls == [] and again.folder == folder
    (folder / "global.pt").unlink()                                  # interrupted after two classes
    (folder / "class_00002.pt").unlink()
    resumed = squeeze(model, data, root=tmp_path, progress=False)
    assert calls == [1]
    assert torch.equal(torch.cat([resumed.global_targets(), resumed.class_targets([0, 1, 2]).flatten(0, 1)]), ref)
    # the same folder for another teacher, or for other data (a subset), is refused with one line
    with pytest.raises(DDKitError, match="computed on other teacher"):
        squeeze(_model(1), data, folder, progress=False)
    with pytest.raises(DDKitError, match="computed on other data"):
        squeeze(model, data.subset(torch.arange(1, 9)), folder, progress=False)


def test_squeeze_sharded_over_ranks_equals_one_process(tmp_path, monkeypatch):
    """Rank r of W takes classes c % W == r, each class's views drawn from (seed, class): the shards' files are
    the one-process files. (Ranks are simulated in turn here; `torchrun --nproc_per_node 2 -m ddkit distill
    --method e2d --set recipe=paper` gives the one-process images at equal OMP_NUM_THREADS.)"""
    data, model = _data(3), _model()
    one = squeeze(model, data, tmp_path / "one", progress=False)
    monkeypatch.setattr(stats.dist, "barrier", lambda: None)
    (tmp_path / "two").mkdir()   # what rank 0 writes before the first barrier
    (tmp_path / "two" / "manifest.json").write_text((one.folder / "manifest.json").read_text())
    for rank in (1, 0):   # rank 0 last: it writes the global file once every class is there
        monkeypatch.setattr(stats.dist, "rank_world", lambda r=rank: (r, 2))
        monkeypatch.setattr(stats.dist, "is_main", lambda r=rank: r == 0)
        two = squeeze(model, data, tmp_path / "two", progress=False)
    for name in ("class_00000.pt", "class_00001.pt", "class_00002.pt", "global.pt"):
        assert torch.equal(torch.load(one.folder / name)["stats"], torch.load(two.folder / name)["stats"])
