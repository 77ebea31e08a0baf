"""Process set-up helpers: the GIL switch interval and MediaPipe's import without its drawing and audio modules."""
import subprocess
import sys
from pathlib import Path

from video_fer.runtime import gil_switch_interval

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_gil_switch_interval_is_set_inside_and_restored_after():
    before = sys.getswitchinterval()
    with gil_switch_interval(0.001):
        assert abs(sys.getswitchinterval() - 0.001) < 1e-9
    assert sys.getswitchinterval() == before
    try:
        with gil_switch_interval(0.002):
            raise KeyError("inside")
    except KeyError:
        pass
    assert sys.getswitchinterval() == before


MEDIAPIPE_WITHOUT_PLOTTING = """
import sys
from video_fer.faces.mediapipe_import import import_mediapipe_without_plotting

import_mediapipe_without_plotting()
from mediapipe.tasks.python import vision
assert hasattr(vision, "FaceLandmarker") and hasattr(vision, "FaceDetector")
assert "matplotlib" not in sys.modules and "matplotlib.pyplot" not in sys.modules, "a stand-in stayed"
assert "sounddevice" not in sys.modules, "a stand-in stayed"
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.figure()  # the real module, imported later in the same process
print("ok")
"""


def test_mediapipe_imports_without_matplotlib_and_later_imports_get_the_real_modules():
    done = subprocess.run([sys.executable, "-c", MEDIAPIPE_WITHOUT_PLOTTING], capture_output=True, text=True,
                          timeout=120, cwd=PROJECT_ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_mediapipe_imported_with_matplotlib_already_loaded_keeps_the_real_one():
    script = ("import sys, matplotlib\n"
              "from video_fer.faces.mediapipe_import import import_mediapipe_without_plotting\n"
              "import_mediapipe_without_plotting()\n"
              "import matplotlib.pyplot as plt\n"
              "assert sys.modules['matplotlib'] is matplotlib and hasattr(plt, 'figure')\n"
              "from mediapipe.tasks.python.vision import drawing_utils\n"
              "assert drawing_utils.plt is plt\n"
              "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=PROJECT_ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
