import numpy as np
import pytest
from PIL import Image

from ddkit.distill import DistillConfig, distill
from ddkit.report import png_figure, write_report


def test_report_has_a_grid_row_per_class_and_the_loss_curves(dataset, teacher_path, tmp_path):
    run = distill(DistillConfig(method="sre2l", ipc=2, data=str(dataset), teacher=str(teacher_path),
                                settings={"iterations": "4", "log_every": "1"}), tmp_path / "run", "cpu",
                  progress=False)
    md = write_report(run).read_text()
    assert "sre2l" in md and "grid.png" in md and "curves.png" in md
    grid = Image.open(run / "grid.png")
    assert grid.size == (150 + 2 * 66, 3 * 66)  # 3 named classes x 2 images, 8 px shown at 64 px
    assert Image.open(run / "curves.png").size[0] > 0


def test_the_grid_of_many_classes_shows_ten_named_classes_at_a_readable_size(tmp_path):
    import torch
    from ddkit.report import image_grid
    from ddkit.rundir import DistilledSet, write_run
    labels = torch.arange(1000).repeat_interleave(torch.tensor([12] + [1] * 999))   # class 0 has 12 images
    images = (labels.float() / 1000).view(-1, 1, 1, 1).expand(-1, 3, 200, 200).contiguous()
    run = write_run(tmp_path / "run", DistilledSet(images, labels, [f"c{i}" for i in range(1000)]), {}, {})
    image_grid(run, tmp_path / "grid.png")
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (150 + 10 * 130, 10 * 130)   # 10 rows of at most 10 cells, 200 px shown at 128
    assert grid.getpixel((150 + 1 + 64, 130 * 5 + 64))[0] == int(0.5 * 255 + 0.5)  # row 5 is class 500
    assert grid.getpixel((150 + 130 + 64, 130 * 5 + 64)) == (255, 255, 255)      # which has one image
    assert np.asarray(grid.crop((0, 130 * 5, 150, 130 * 6))).min() < 100   # and its name beside it


def test_a_failed_plot_leaves_no_file(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with png_figure(tmp_path / "p.png") as (_, ax):
            ax.plot([0, 1])
            1 / 0
    assert not list(tmp_path.iterdir())
