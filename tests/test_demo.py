"""The demo's table: each set's margin over random real images, and the line naming the protocol."""
from ddkit.demo import PROTOCOL, protocol_line, with_margins
from ddkit.protocols import PRESETS


def test_soft_rows_get_their_margin_over_random_real_with_soft_labels():
    rows = [{"set": "e2d IPC5", "labels": "soft", "mean": 71.3}, {"set": "random IPC5", "labels": "soft", "mean": 70.0},
            {"set": "random IPC5", "labels": "hard", "mean": 50.0}, {"set": "full real (1437)", "labels": "hard"}]
    out = with_margins(rows)
    assert [r.get("Δ vs random") for r in out] == ["+1.3", None, None, None]
    assert with_margins(rows[:1]) == rows[:1]   # no random row: no margin rather than a wrong one


def test_the_protocol_line_names_the_preset_and_what_it_changes():
    assert PROTOCOL in PRESETS
    assert protocol_line("ddkit", 100, 2).startswith("students: protocol 'ddkit', ConvNet-3, 100 epochs, 2 seeds")
    assert "(batch_size=25, cutmix=0.0, eval_every=10, best_after=0.8, min_steps=0)" in protocol_line("edc", 300, 1)
