"""What `adm` prints for progress: plain lines in a log file, bars with our labels on a terminal."""

import io
import math

from pipelines.infra.console import Console, progress


def test_plain_progress_is_the_first_and_the_last_line_of_a_task_between_intervals():
    out = io.StringIO()
    console = Console(stream=out, live=False, every_s=math.inf)  # no interval ends: only the first and the last
    for step in range(0, 21, 5):
        console.progress("[diffusion] training", step, 20, f"loss {1 / (step + 1):.3f}")
    console.progress("[sample] images", 16, 32)
    console("a status line")
    console.progress("[sample] images", 32, 32)
    assert out.getvalue().splitlines() == ["[diffusion] training: 0/20 loss 1.000",
                                           "[diffusion] training: 20/20 loss 0.048",
                                           "[sample] images: 16/32", "a status line", "[sample] images: 32/32"]


def test_bars_keep_our_labels_and_lines_print_between_them():
    out = io.StringIO()
    console = Console(stream=out, live=True)
    console("before")
    for step in (5, 20):
        console.progress("[classifier] training", step, 20, "loss 1.4 [batch 4]")
    console("after")
    text = out.getvalue()
    assert "[classifier] training" in text and "20/20" in text and "[batch 4]" in text  # not taken as rich markup
    assert text.index("before") < text.index("[classifier]") < text.index("after")


def test_progress_through_any_callable_is_a_plain_line():
    lines = []
    progress(lines.append, "[evaluate] featurized images", 64, 64)
    assert lines == ["[evaluate] featurized images: 64/64"]
