"""``python -m video_fer.cli``: the ``video-fer`` command."""
import sys

from video_fer.cli import main

sys.exit(main())
