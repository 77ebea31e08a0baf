"""Recompute the blendshape AU table's ``rest`` and ``full`` from an unlabeled face-track cache, and check the table.

``rest`` and ``full`` of each rule of :data:`video_fer.faces.blendshape_aus.AU_TABLE` are the
median and the 99th percentile of the rule's score over every cached frame with blendshapes
(the table holds those of ``shared/data/pretrain`` prepared by ``video-fer prepare`` with MediaPipe
on every frame: 31 clips, 7,584 frames). Also lists the blendshapes this model never moves
(99.9th percentile below 0.005). Never run it on the clips you evaluate against.

    python tools/calibrate_blendshape_aus.py CACHE          # exit 1 when the table differs by more than 5e-4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", type=Path, help="a face-track cache prepared with --landmarker mediapipe")
    args = parser.parse_args(argv)
    from video_fer.data.cache import FaceTrackCache
    from video_fer.faces.blendshape_aus import (AU_TABLE, BLENDSHAPE_NAMES, FULL_QUANTILE, REST_QUANTILE,
                                                rule_scores)

    cache = FaceTrackCache(args.cache)
    parts = [cache.track_arrays(track.track_id).get("blendshapes") for track in cache.tracks]
    blendshapes = np.concatenate([part for part in parts if part is not None]).astype(np.float64)
    blendshapes = blendshapes[np.isfinite(blendshapes).all(1)]
    print(f"{len(blendshapes)} frames with blendshapes in {sum(p is not None for p in parts)} of {len(parts)} tracks")
    dead = [name for name, value in zip(BLENDSHAPE_NAMES, np.percentile(blendshapes, 99.9, axis=0)) if value < 0.005]
    print("blendshapes below 0.005 at the 99.9th percentile (never move here):", ", ".join(dead))
    scores = rule_scores(blendshapes)
    rest = np.percentile(scores, REST_QUANTILE, axis=0)
    full = np.percentile(scores, FULL_QUANTILE, axis=0)
    mismatches = 0
    for rule, r, f in zip(AU_TABLE, rest, full):
        same = abs(rule.rest - r) < 5e-4 and abs(rule.full - f) < 5e-4
        mismatches += not same
        print(f"AU{rule.au:02d}: rest {r:.4f} full {f:.4f}" + ("" if same else f"   <- the table has {rule.rest}, {rule.full}"))
    print("the table matches" if not mismatches else f"{mismatches} rules differ from the table")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
