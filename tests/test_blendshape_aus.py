"""The blendshape -> AU table: OpenFace's AUs and names, the intensity curve, the rules' logic, the docs, real video."""
from pathlib import Path

import numpy as np
import pytest

from video_fer.faces import blendshape_aus as table_module
from video_fer.faces.blendshape_aus import (AU_RULES, AU_TABLE, BLENDSHAPE_NAMES, INTENSITY_AUS, PRESENCE_AUS,
                                            au_table_markdown, blendshape_aus, intensity_from_score, rule_scores)

OPENFACE_R = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
OPENFACE_C = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "TRACK_COLUMNS.md"


def frame(**scores) -> np.ndarray:
    """One (1, 52) blendshape row, zeros except the named scores."""
    row = np.zeros((1, len(BLENDSHAPE_NAMES)))
    for name, value in scores.items():
        row[0, BLENDSHAPE_NAMES.index(name)] = value
    return row


def test_table_has_exactly_openface_aus_and_valid_parts():
    assert INTENSITY_AUS == OPENFACE_R and PRESENCE_AUS == OPENFACE_C
    columns = blendshape_aus(frame())
    assert list(columns) == [f"AU{a:02d}_r" for a in OPENFACE_R] + [f"AU{a:02d}_c" for a in OPENFACE_C]
    for rule in AU_TABLE:
        assert 0.0 <= rule.rest < rule.full <= 1.0, rule
        assert rule.name and rule.why, f"AU{rule.au} has no FACS name or reason"
        for part in rule.parts:
            for name in part.split("-"):
                assert name in BLENDSHAPE_NAMES or {name + "Left", name + "Right"} <= set(BLENDSHAPE_NAMES), name


def test_the_module_doc_and_the_docs_print_the_table_itself():
    text = au_table_markdown()
    assert len(text.splitlines()) == 2 + len(AU_TABLE)
    assert "| 12 | lip corner puller | mouthSmileL/R | single |" in text
    assert text in table_module.__doc__
    assert text in DOCS.read_text(), f"{DOCS} holds another AU table; paste au_table_markdown() into it"


def test_intensity_curve_is_monotone_and_spans_0_to_5():
    rest, full = 0.2, 0.7
    values = intensity_from_score(np.linspace(0, 1, 101), rest, full)
    assert values[0] == 0 and values[-1] == 5 and np.all(np.diff(values) >= 0)
    assert intensity_from_score(np.array([rest, (rest + full) / 2, full]), rest, full) == pytest.approx([0, 2.5, 5])
    raw = blendshape_aus(frame(mouthSmileLeft=0.4, mouthSmileRight=0.4), calibrated=False)
    assert raw["AU12_r"][0] == pytest.approx(2.0)  # the reference behaviour: raw score x 5


def test_smile_drives_au12_only_among_mouth_aus():
    out = blendshape_aus(frame(mouthSmileLeft=0.8, mouthSmileRight=0.8))
    assert out["AU12_r"][0] > 4.0 and out["AU12_c"][0] == 1.0
    for au in (4, 10, 15, 20, 23, 26):
        assert out[f"AU{au:02d}_r"][0] == 0.0 and out[f"AU{au:02d}_c"][0] == 0.0


def test_resting_scores_read_zero():
    rest = frame()
    for rule in AU_TABLE:  # every single-part rule's blendshapes at its rest value
        if rule.combine == "single" and "-" not in rule.parts[0]:
            base = rule.parts[0]
            for name in ((base,) if base in BLENDSHAPE_NAMES else (base + "Left", base + "Right")):
                rest[0, BLENDSHAPE_NAMES.index(name)] = rule.rest
    out = blendshape_aus(rest)
    for rule in AU_TABLE:
        if rule.combine == "single" and rule.intensity and "-" not in rule.parts[0]:
            assert out[f"AU{rule.au:02d}_r"][0] == pytest.approx(0.0, abs=1e-9), rule.au


def test_side_mean_halves_a_one_sided_action_and_max_keeps_it():
    row = frame(browDownLeft=0.6)
    assert rule_scores(row, [AU_RULES[4]], side="mean")[0, 0] == pytest.approx(0.3)
    assert rule_scores(row, [AU_RULES[4]], side="max")[0, 0] == pytest.approx(0.6)


def test_nose_wrinkle_needs_both_cues_and_lips_part_unless_held_closed():
    both = blendshape_aus(frame(mouthUpperUpLeft=0.5, mouthUpperUpRight=0.5, browDownLeft=0.5, browDownRight=0.5))
    lip_only = blendshape_aus(frame(mouthUpperUpLeft=0.5, mouthUpperUpRight=0.5))
    assert both["AU09_r"][0] > 2.5
    assert lip_only["AU09_r"][0] < 0.2 and lip_only["AU10_r"][0] > 2.5
    open_jaw = blendshape_aus(frame(jawOpen=0.6))
    held_closed = blendshape_aus(frame(jawOpen=0.6, mouthClose=0.6))
    assert open_jaw["AU25_r"][0] > 3.5 and open_jaw["AU26_r"][0] > 3.5
    assert held_closed["AU25_r"][0] == 0.0 and held_closed["AU26_r"][0] > 3.5


def test_nan_rows_and_bad_inputs():
    out = blendshape_aus(np.vstack([frame(mouthSmileLeft=0.9, mouthSmileRight=0.9), np.full((1, 52), np.nan)]))
    assert out["AU12_r"][0] > 4 and np.isnan(out["AU12_r"][1]) and np.isnan(out["AU12_c"][1])
    with pytest.raises(ValueError, match=r"\(F, 52\)"):
        blendshape_aus(np.zeros((3, 51)))
    with pytest.raises(ValueError, match="side"):
        blendshape_aus(frame(), side="left")


def test_mediapipe_names_its_blendshapes_in_the_tables_order(mediapipe_model, shared_images):
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    from PIL import Image

    from video_fer.faces.native_logs import NativeLogFilter

    image = np.asarray(Image.open(shared_images / "0-f15-hao-ph.jpg").convert("RGB"))
    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(mediapipe_model)),
                                           output_face_blendshapes=True)
    with NativeLogFilter():
        landmarker = vision.FaceLandmarker.create_from_options(options)
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        landmarker.close()
    assert tuple(category.category_name for category in result.face_blendshapes[0]) == BLENDSHAPE_NAMES


def test_smile_aus_follow_openface_on_single_face(single_face_mediapipe):
    """single_face is neutral, then smiling: the smile AUs follow OpenFace closely (measured r 0.99 / 0.99 / 0.99)."""
    ours = blendshape_aus(single_face_mediapipe["blendshapes"])
    openface = single_face_mediapipe["openface"]
    for au in ("AU12", "AU06", "AU10"):
        r = np.corrcoef(ours[f"{au}_r"], openface[f"{au}_r"])[0, 1]
        assert r > 0.9, (au, r)
    assert (ours["AU12_c"] == openface["AU12_c"]).mean() > 0.9
