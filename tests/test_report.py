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
    assert grid.size[1] > grid.size[0]  # 3 classes x 2 images, 8 px upscaled: taller than wide
    assert Image.open(run / "curves.png").size[0] > 0


def test_the_grid_of_many_classes_shows_every_tenth_class_and_pads_only_to_its_width(tmp_path):
    import torch
    from ddkit.report import image_grid
    from ddkit.rundir import DistilledSet, write_run
    labels = torch.arange(1000).repeat_interleave(torch.tensor([2] + [1] * 999))   # class 0 has two images
    images = (labels.float() / 1000).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous()
    run = write_run(tmp_path / "run", DistilledSet(images, labels, [f"c{i}" for i in range(1000)]), {}, {})
    image_grid(run, tmp_path / "grid.png")
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (2 * 33 + 1, 100 * 33 + 1)   # 100 rows of 2 cells (32 px + 1 px padding)
    assert grid.getpixel((1 + 16, 1 + 33 * 50 + 16))[0] == int(0.5 * 255 + 0.5)  # row 50 is class 500


def test_a_failed_plot_leaves_no_file(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with png_figure(tmp_path / "p.png") as (_, ax):
            ax.plot([0, 1])
            1 / 0
    assert not list(tmp_path.iterdir())
