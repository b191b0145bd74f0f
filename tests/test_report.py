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


def test_a_failed_plot_leaves_no_file(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with png_figure(tmp_path / "p.png") as (_, ax):
            ax.plot([0, 1])
            1 / 0
    assert not list(tmp_path.iterdir())
