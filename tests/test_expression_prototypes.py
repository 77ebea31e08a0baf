"""Prototype-based expression: the project's classes, each prototype wins its class, neutral, posed photos."""
import numpy as np
import pytest

from video_fer.data.expression_datasets import RAFDB_EXPRESSIONS
from video_fer.faces.expression_prototypes import (EXPRESSION_CLASSES, PROTOTYPE_AUS, PROTOTYPES, expression_columns,
                                                   expression_probabilities, prototype_metadata)


def aus(**values) -> dict:
    return {f"AU{au:02d}_r": np.array([values.get(f"AU{au:02d}", 0.0)]) for au in PROTOTYPE_AUS}


def test_classes_are_the_projects_rafdb_order_and_named_prototype_based():
    assert EXPRESSION_CLASSES == tuple(RAFDB_EXPRESSIONS)
    metadata = prototype_metadata()
    assert metadata["method"].startswith("prototype-based")
    assert metadata["prototypes"]["happiness"] == ["AU06", "AU12"]


@pytest.mark.parametrize("label", [name for name in EXPRESSION_CLASSES if name != "neutral"])
def test_each_full_prototype_wins_its_class(label):
    probabilities = expression_probabilities(aus(**{f"AU{au:02d}": 4.0 for au in PROTOTYPES[label]}))
    assert EXPRESSION_CLASSES[int(probabilities.argmax())] == label
    assert probabilities.sum() == pytest.approx(1.0)


def test_no_action_is_neutral_missing_columns_are_named_and_missing_faces_stay_empty():
    assert EXPRESSION_CLASSES[int(expression_probabilities(aus()).argmax())] == "neutral"
    with pytest.raises(KeyError, match="need AU01_r"):
        expression_probabilities({"AU06_r": np.zeros(1)})
    rows = {name: np.array([4.0 if name in ("AU06_r", "AU12_r") else 0.0, np.nan]) for name in aus()}
    columns = expression_columns(rows)
    assert columns["expression"].tolist() == ["happiness", ""]
    assert columns["expression_happiness"][0] > 0.5 and np.isnan(columns["expression_happiness"][1])


def posed_probabilities(model_path, image_path) -> np.ndarray:
    from PIL import Image

    from video_fer.faces import create_landmarker
    from video_fer.faces.blendshape_aus import blendshape_aus
    from video_fer.faces.native_logs import NativeLogFilter

    image = np.asarray(Image.open(image_path).convert("RGB"))
    with NativeLogFilter():
        landmarker = create_landmarker("mediapipe", model_path=str(model_path), mode="image", num_faces=1,
                                       blendshapes=True, detector_scores=False)
        face = landmarker(image[None], np.array([0]), np.array([0.0]))[0][0]
        landmarker.close()
    return expression_probabilities(blendshape_aus(face.blendshapes[None]))[0]


@pytest.mark.parametrize("file, label", [
    ("0-f1-su-ph.jpg", "surprise"), ("0-f15-hao-ph.jpg", "happiness"), ("15-f13-anc-ph.jpg", "anger"),
    pytest.param("45-m7-di-ph.jpg", "disgust", marks=pytest.mark.xfail(
        strict=True, reason="measured: reads sadness (AU15 at 5, AU04 ~1; AU09/AU10 below 1 at 45 deg yaw): the "
                            "blendshapes barely show the raised upper lip of this profile"))])
def test_posed_photos_read_their_label(mediapipe_model, shared_images, file, label):
    probabilities = posed_probabilities(mediapipe_model, shared_images / file)
    assert EXPRESSION_CLASSES[int(probabilities.argmax())] == label, dict(zip(EXPRESSION_CLASSES,
                                                                              probabilities.round(2)))
