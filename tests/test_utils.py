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
