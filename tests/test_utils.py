import os
import subprocess
import sys


def test_malloc_tuning_applies_on_glibc_and_can_be_turned_off():
    code = "from ddkit.utils import tune_malloc; print(tune_malloc())"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "DDKIT_MALLOC": "default"})
    assert off.stdout.strip() == "False"
    if sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION"):
        on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={k: v for k, v in os.environ.items() if k != "DDKIT_MALLOC"})
        assert on.stdout.strip() == "True"


def test_trim_malloc_returns_what_tune_malloc_keeps():
    """Under tune_malloc a freed 400 MB buffer stays resident; trim_malloc hands it back, then waits its interval."""
    if not (sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION")):
        return  # both are no-ops off glibc
    code = ("import torch; from ddkit.utils import tune_malloc, trim_malloc\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20\n"
            "tune_malloc(); x = torch.ones(100 * 2 ** 20); del x; kept = rss()\n"
            "print(trim_malloc(), kept - rss(), trim_malloc(every_s=3600))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "DDKIT_MALLOC"}).stdout.split()
    assert out[0] == "True" and int(out[1]) > 300 and out[2] == "False"


def test_inference_batches_shrink_with_the_image_area_only_above_cifar_sizes():
    from ddkit.utils import inference_batch
    assert inference_batch(32, 1000) == inference_batch(64, 1000) == 1000   # CIFAR-scale batches unchanged
    assert inference_batch(224, 1000) == 83 and inference_batch(224, 50) == 50
    assert inference_batch(100_000, 1000) == 1
