"""Head pose in OpenFace's camera-axis convention: from the mesh and from 68 points, synthetic and real faces."""
import numpy as np
import pytest

import video_fer.faces.head_pose as hp
from video_fer.faces.canonical_face import read_face_geometry
from video_fer.faces.mean_face import MEAN_FACE_68_MM


@pytest.fixture
def geometry(mediapipe_model):
    return read_face_geometry(str(mediapipe_model))  # cached per path


def perspective_picture(points_mm: np.ndarray, euler_deg, head_px, depth_mm: float, width: int, height: int):
    """A pinhole picture (OpenFace's camera) of model points ``(N, 3)`` mm (origin = the head), turned by
    ``euler_deg`` about the camera axis, the origin at pixel ``head_px`` and depth ``depth_mm``.

    Returns ``(pixels (N, 2), depth along the line of sight in x's pixel scale (N,), true T (3,))``: what a
    network looking at a crop around the head sees (MediaPipe's z).
    """
    focal = hp.openface_focal_px(width, height)
    centre = hp.image_centre(width, height)
    rotation = hp.euler_to_rotation(np.radians(euler_deg))
    translation = np.array([*((np.asarray(head_px) - centre) / focal * depth_mm), depth_mm])
    camera = points_mm @ rotation.T + translation
    pixels = camera[:, :2] / camera[:, 2:] * focal + centre
    bearing = hp.bearing_rotation(translation[None])[0]
    distance = np.linalg.norm(translation)
    return pixels, ((camera @ bearing)[:, 2] - distance) * focal / distance, translation


def mesh_picture(geometry, euler_deg, head_px, depth_mm=600.0, width=1920, height=1080):
    """The canonical face as MediaPipe would report it: ``(1, 468, 3)`` mesh and the true T."""
    model = (geometry.canonical @ hp.FLIP_Y_Z - hp.FLIP_Y_Z @ hp.OPENFACE_ORIGIN_IN_CANONICAL_CM) \
        * hp.CANONICAL_TO_OPENFACE_SCALE
    pixels, depth, translation = perspective_picture(model, euler_deg, head_px, depth_mm, width, height)
    return np.concatenate([pixels, depth[:, None]], 1)[None], translation


def test_euler_round_trip_elementary_rotations_and_openfaces_focal_length():
    angles = np.radians([[10.0, -25.0, 5.0], [-40.0, 30.0, -20.0], [0.0, 0.0, 0.0]])
    assert hp.rotation_to_euler(hp.euler_to_rotation(angles)) == pytest.approx(angles, abs=1e-12)
    a = 0.3
    assert hp.euler_to_rotation(np.array([a, 0, 0])) == pytest.approx(
        np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]))
    assert hp.euler_to_rotation(np.array([0, a, 0]))[0, 2] == pytest.approx(np.sin(a))
    assert hp.openface_focal_px(640, 360) == pytest.approx(437.5)  # what the shared OpenFace CSVs fit


def test_bearing_rotation_maps_the_axis_onto_the_ray():
    rays = np.array([[0.3, -0.2, 1.0], [0.0, 0.0, 1.0], [-1.0, 0.5, 1.0]])
    rotation = hp.bearing_rotation(rays)
    assert rotation @ np.array([0, 0, 1.0]) == pytest.approx(rays / np.linalg.norm(rays, axis=1, keepdims=True))
    assert np.einsum("fij,fkj->fik", rotation, rotation) == pytest.approx(np.broadcast_to(np.eye(3), (3, 3, 3)))


def test_canonical_face_is_read_from_the_task_file(geometry, tmp_path):
    from video_fer.errors import ModelFileError

    assert geometry.canonical.shape == (468, 3)
    assert len(geometry.landmark_ids) == len(geometry.landmark_weights) == 33
    nose_tip, forehead, chin = geometry.canonical[4], geometry.canonical[10], geometry.canonical[152]
    assert nose_tip[2] > 5 and forehead[1] > 5 > -5 > chin[1]  # cm, y up, z to the viewer
    (tmp_path / "not.task").write_bytes(b"no zip")
    with pytest.raises(ModelFileError, match="not a MediaPipe face_landmarker.task bundle"):
        read_face_geometry(str(tmp_path / "not.task"))


@pytest.mark.parametrize("euler", [(0, 0, 0), (15, -20, 8), (-25, 35, -10)])
@pytest.mark.parametrize("head_px", [(959.5, 539.5), (250.0, 180.0), (1700.0, 950.0)])
def test_a_moved_head_keeps_its_camera_axis_angles_from_the_mesh(geometry, euler, head_px):
    """A head that keeps its orientation while it moves to a corner of a wide frame reads the same angles."""
    mesh, translation = mesh_picture(geometry, euler, head_px)
    fit = hp.fit_head_to_mesh(mesh, 1920, 1080, geometry)
    assert np.degrees(fit.pose[0, 3:]) == pytest.approx(euler, abs=1.5)
    assert fit.pose[0, :3] == pytest.approx(translation, rel=0.03, abs=3.0)
    # the line-of-sight rotation is the true one seen from the ray to the head: B^T R
    sight = hp.fit_head_to_mesh(mesh, 1920, 1080, geometry, convention="line_of_sight").rotation[0]
    expected = hp.bearing_rotation(translation[None])[0].T @ hp.euler_to_rotation(np.radians(euler))
    assert np.degrees(np.arccos(np.clip((np.trace(sight.T @ expected) - 1) / 2, -1, 1))) < 1.5


@pytest.mark.parametrize("euler", [(0, 0, 0), (15, -20, 8), (-20, 30, -10)])
@pytest.mark.parametrize("head_px", [(959.5, 539.5), (250.0, 180.0), (1700.0, 950.0)])
def test_a_moved_head_keeps_its_camera_axis_angles_from_68_points(euler, head_px):
    """The 68-point path (FAN, precomputed files) in the same convention; T is the mean face's centroid."""
    points = MEAN_FACE_68_MM.astype(np.float64)
    pixels, _, translation = perspective_picture(points - points.mean(0), euler, head_px, 600.0, 1920, 1080)
    fit = hp.fit_head_to_landmarks68(pixels[None], 1920, 1080)
    assert np.degrees(fit.pose[0, 3:]) == pytest.approx(euler, abs=2.0)
    assert fit.pose[0, :3] == pytest.approx(translation, rel=0.05, abs=5.0)
    weak = np.degrees(hp.estimate_head_pose(pixels[None].astype(np.float32)).numpy()[0])
    if head_px != (959.5, 539.5):  # without the bearing, an off-centre face reads other angles
        assert np.abs(weak - np.asarray(euler)).max() > 5


def test_signs_on_screen(geometry):
    """Positive yaw turns the nose to the image's left, positive pitch moves it down, positive roll lowers the
    image-right eye (clockwise on screen)."""
    def picture(euler):
        return mesh_picture(geometry, euler, (959.5, 539.5))[0][0]

    frontal = picture((0, 0, 0))
    assert picture((0, 20, 0))[4, 0] < frontal[4, 0] - 20
    assert picture((20, 0, 0))[4, 1] > frontal[4, 1] + 20
    assert picture((0, 0, 20))[263, 1] > frontal[263, 1] + 10
    meshes = np.stack([picture((0, 20, 0)), picture((20, 0, 0)), picture((0, 0, 20))])
    recovered = hp.fit_head_to_mesh(meshes, 1920, 1080, geometry).pose
    assert np.degrees(recovered[:, 3:]) == pytest.approx(np.diag([20.0, 20.0, 20.0])[[1, 0, 2]], abs=1.5)


def test_a_pasted_frontal_face_reads_its_bearing(mediapipe_model, shared_images, geometry):
    """A frontal photo pasted at the centre and in two corners of a wide canvas still looks *at the camera*:
    its line-of-sight angles stay put, and its camera-axis angles are those plus the bearing of where it sits."""
    from PIL import Image

    from video_fer.faces import create_landmarker
    from video_fer.faces.native_logs import NativeLogFilter

    face = np.asarray(Image.open(shared_images / "0-f15-hao-ph.jpg").convert("RGB"))
    width, height = 1536, 1024
    readings = {}
    with NativeLogFilter():
        landmarker = create_landmarker("mediapipe", model_path=str(mediapipe_model), mode="image", num_faces=1,
                                       detector_scores=False)
        for place, (left, top) in {"centre": ((width - 512) // 2, (height - 512) // 2), "corner": (0, 0),
                                   "far corner": (width - 512, height - 512)}.items():
            canvas = np.full((height, width, 3), 128, np.uint8)
            canvas[top:top + 512, left:left + 512] = face
            found = landmarker(canvas[None], np.array([0]), np.array([0.0]))[0]
            assert found, place
            fit = hp.fit_head_to_mesh(found[0].native_landmarks[None], width, height, geometry)
            sight = np.degrees(hp.rotation_to_euler(fit.line_of_sight)[0, :2])
            bearing = np.degrees([-np.arctan(fit.pose[0, 1] / fit.pose[0, 2]), np.arctan(fit.pose[0, 0] / fit.pose[0, 2])])
            readings[place] = (np.degrees(fit.pose[0, 3:5]), sight, bearing)
        landmarker.close()
    for place in ("corner", "far corner"):
        camera, sight, bearing = readings[place]
        assert sight == pytest.approx(readings["centre"][1], abs=3.0), place  # still facing the camera
        assert camera - sight == pytest.approx(bearing, abs=1.5), place  # camera axis = line of sight + bearing
        assert abs(bearing[1]) > 20  # far off-axis: the two conventions differ by more than the tolerances


def test_openface_convention_on_its_own_csv(openface_csv):
    """OpenFace_Test.csv: with R = Rx Ry Rz (not the negated angles) the model shape R^T (X - T) is the same in
    every frame, and its 2-D landmarks are its 3-D ones seen by the camera with OpenFace's focal length."""
    from video_fer.evaluate.openface import read_openface_csv

    table = read_openface_csv(openface_csv)
    xyz = np.stack([np.stack([table[f"{a}_{i}"] for i in range(68)], 1) for a in "XYZ"], -1)
    uv = np.stack([np.stack([table[f"{a}_{i}"] for i in range(68)], 1) for a in "xy"], -1)
    focal = hp.openface_focal_px(640, 360)
    assert uv[..., 0] == pytest.approx(xyz[..., 0] / xyz[..., 2] * focal + 320, abs=0.05)
    angles = np.stack([table["pose_Rx"], table["pose_Ry"], table["pose_Rz"]], 1)
    translation = np.stack([table["pose_Tx"], table["pose_Ty"], table["pose_Tz"]], 1)

    def spread(rotation):
        shape = np.einsum("fji,fnj->fni", rotation, xyz - translation[:, None])
        return np.linalg.norm(shape - shape.mean(0), axis=-1).mean()

    assert spread(hp.euler_to_rotation(angles)) < 0.5
    assert spread(hp.euler_to_rotation(-angles)) > 2 * spread(hp.euler_to_rotation(angles))


def test_agreement_with_openface_on_single_face(single_face_mediapipe, geometry):
    run = single_face_mediapipe
    openface = run["openface"]
    mesh = hp.fit_head_to_mesh(run["mesh"], *run["size"], geometry).pose
    points = hp.fit_head_to_landmarks68(run["landmarks"], *run["size"]).pose
    for k, column in enumerate(("pose_Rx", "pose_Ry", "pose_Rz")):
        error = np.degrees(np.abs(mesh[:, 3 + k] - openface[column])).mean()
        assert error < 3.0, (column, error)  # measured 1.3 / 2.3 / 0.1 deg
        assert np.degrees(np.abs(points[:, 3 + k] - openface[column])).mean() < 4.0, column  # measured <= 3.0
    assert np.abs(mesh[:, 2] / openface["pose_Tz"] - 1).mean() < 0.1  # depth in mm


def test_bad_inputs(geometry):
    with pytest.raises(hp.HeadPoseInputError, match=r"\(F, 478, 3\)"):
        hp.fit_head_to_mesh(np.zeros((2, 68, 2)), 640, 360, geometry)
    with pytest.raises(hp.HeadPoseInputError, match="convention"):
        hp.fit_head_to_mesh(np.zeros((1, 478, 3)), 640, 360, geometry, convention="camera")
    with pytest.raises(hp.HeadPoseInputError, match=r"\(F, 68, 2\)"):
        hp.fit_head_to_landmarks68(np.zeros((2, 478, 3)), 640, 360)
    nan = hp.fit_head_to_mesh(np.full((2, 478, 3), np.nan), 640, 360, geometry).pose
    assert nan.shape == (2, 6) and np.isnan(nan).all()
    assert np.isnan(hp.fit_head_to_landmarks68(np.full((1, 68, 2), np.nan), 640, 360).pose).all()
