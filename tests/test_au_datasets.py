"""AU benchmark readers (BP4D, DISFA, generic CSV), fold lists and the face-cache join.

Every fixture is written here in the layout the datasets are distributed in (a few
frames, a few subjects).
"""
from pathlib import Path

import numpy as np
import pytest

from video_fer.data import au_datasets, folds
from video_fer.errors import ConfigError, LabelFileError, VideoReadError

# ----------------------------------------------------------------------------- folds


def test_folds_are_disjoint_cover_all_subjects_and_test_on_part_k():
    for dataset, num_subjects in (("bp4d", 41), ("disfa", 27)):
        parts = folds.dataset_parts(dataset)
        every = [subject for part in parts for subject in part]
        assert len(every) == len(set(every)) == num_subjects
        for k in (1, 2, 3):
            train, test = folds.fold_split(dataset, k)
            assert test == list(parts[k - 1])
            assert not set(train) & set(test)
            assert sorted(train + test) == sorted(every)
    assert folds.fold_split("BP4D", 1)[1][:3] == ["F001", "M007", "F018"]
    assert folds.fold_split("disfa", 3)[1][-1] == "SN004"
    assert len(folds.BP4D_AUS) == 12 and len(folds.DISFA_AUS) == 8


def test_fold_split_rejects_unknown_dataset_and_fold_number():
    with pytest.raises(ConfigError, match="folds are numbered 1..3"):
        folds.fold_split("bp4d", 0)
    with pytest.raises(ConfigError, match="'affectnet': no standard folds"):
        folds.fold_split("affectnet", 1)


def test_split_validation_is_subject_exclusive_and_deterministic():
    train, _ = folds.fold_split("bp4d", 1)  # 27 training subjects
    kept, validation = folds.split_validation(train, 0.2, seed=3)
    assert len(validation) == 5 and len(kept) == 22  # round(0.2 * 27) = 5
    assert sorted(kept + validation) == sorted(train) and not set(kept) & set(validation)
    assert folds.split_validation(train, 0.2, seed=3) == (kept, validation)
    assert folds.split_validation(train, 0.2, seed=4)[1] != validation
    assert kept == [subject for subject in train if subject in kept]  # order preserved
    assert folds.split_validation(train, 0.0) == (train, [])
    with pytest.raises(ConfigError, match="leaves no training subject"):
        folds.split_validation(["F001", "F002"], 0.9)


# ----------------------------------------------------------------------------- BP4D
# Header as distributed: frame column first, then AU numbers, more AUs than the 12 (5, 27 extra).
BP4D_HEADER = "0,1,2,4,5,6,7,10,12,14,15,17,23,24,27"


def bp4d_row(frame: int, codes12: list[int], extra: int = 9) -> str:
    """A CSV row: frame, the 12 standard AUs in order with AU5 and AU27 (extra) interleaved."""
    values = codes12[:3] + [extra] + codes12[3:] + [extra]
    return ",".join(map(str, [frame] + values))


def write_bp4d(root: Path, files: dict[str, list[str]], images: bool = True, pattern="{s}/{t}/{f:04d}.jpg"):
    labels = root / "AU_OCC"
    labels.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        (labels / f"{name}.csv").write_text("\n".join([BP4D_HEADER] + rows) + "\n")
        if images:
            subject, task = name.split("_")
            for row in rows:
                image = root / "frames" / pattern.format(s=subject, t=task, f=int(row.split(",")[0]))
                image.parent.mkdir(parents=True, exist_ok=True)
                image.write_bytes(b"jpg")
    return labels, root / "frames"


ONES = [1] * 12
ZEROS = [0] * 12
WITH_NOT_CODED = [1, 0, 9, 1, 0, 1, 9, 0, 1, 0, 1, 0]


def test_read_bp4d_picks_the_12_aus_masks_9_and_pairs_images(tmp_path):
    labels, frames_root = write_bp4d(tmp_path, {
        "F001_T1": [bp4d_row(10, ONES, extra=0), bp4d_row(11, WITH_NOT_CODED), bp4d_row(12, ZEROS, extra=1)],
        "F001_T2": [bp4d_row(1, ZEROS)],
        "M007_T1": [bp4d_row(5, ONES)],
    })
    table = au_datasets.read_bp4d(labels, frames_root)
    assert len(table) == 5 and table.au_numbers == folds.BP4D_AUS
    assert table.subjects.tolist() == ["F001"] * 4 + ["M007"]
    assert table.tasks.tolist() == ["T1", "T1", "T1", "T2", "T1"]
    assert table.frames.tolist() == [10, 11, 12, 1, 5]
    assert table.sources[1] == str(frames_root / "F001" / "T1" / "0011.jpg")
    assert (table.source_frames == -1).all()  # still images
    assert table.occurrence.dtype == np.int8 and table.occurrence.shape == (5, 12)
    np.testing.assert_array_equal(table.occurrence[0], ONES)  # extra AU columns (coded 0 here) not picked
    np.testing.assert_array_equal(table.occurrence[1], [1, 0, -1, 1, 0, 1, -1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(table.mask[1], np.array(WITH_NOT_CODED) != 9)
    np.testing.assert_array_equal(table.occurrence[2], ZEROS)
    assert table.intensity is None
    assert table.au_names[:3] == ["AU01", "AU02", "AU04"]
    record = table[4]
    assert (record.subject, record.task, record.frame) == ("M007", "T1", 5)


def test_read_bp4d_subject_filter_custom_pattern_and_fold_selection(tmp_path):
    labels, frames_root = write_bp4d(tmp_path, {
        "F001_T1": [bp4d_row(7, ONES)], "M011_T3": [bp4d_row(8, ZEROS), bp4d_row(9, ONES)],
    }, pattern="{s}/{t}/img{f:05d}.png")
    table = au_datasets.read_bp4d(labels, frames_root, image_pattern="{subject}/{task}/img{frame:05d}.png")
    assert table.sources[2] == str(frames_root / "M011" / "T3" / "img00009.png")
    only = au_datasets.read_bp4d(labels, frames_root, image_pattern="{subject}/{task}/img{frame:05d}.png",
                                 subjects=["M011"])
    assert only.subjects.tolist() == ["M011", "M011"]
    train, test = folds.fold_split("bp4d", 1)  # F001 is in part 1 (test), M011 in part 2 (train)
    assert table.for_subjects(test).subjects.tolist() == ["F001"]
    assert table.for_subjects(train).frames.tolist() == [8, 9]


@pytest.mark.parametrize("rows, message", [
    ([bp4d_row(1, ONES), "2,1,1"], r"F001_T1.csv line 3: 3 fields, the header has 15"),
    ([bp4d_row(1, ONES), bp4d_row(2, ONES).replace(",1,", ",x,", 1)], r"F001_T1.csv line 3: AU1 = 'x' is not a number"),
    ([bp4d_row(1, [2] + ONES[1:])], r"F001_T1.csv line 2: AU1 = 2; BP4D occurrence codes are 0, 1 or 9"),
    ([bp4d_row(1, ONES), bp4d_row(2, ONES), bp4d_row(1, ZEROS)],
     r"F001_T1.csv line 4: frame 1 is duplicated \(already on line 2\)"),
    ([bp4d_row(1, ONES), bp4d_row(2, ONES), bp4d_row(5, ONES)], r"F001_T1.csv line 4: frames 3..4 are missing"),
])
def test_read_bp4d_malformed_files_name_file_and_line(tmp_path, rows, message):
    labels, frames_root = write_bp4d(tmp_path, {"F001_T1": rows}, images=False)
    with pytest.raises(LabelFileError, match=message):
        au_datasets.read_bp4d(labels, frames_root, check_images=False)


def test_read_bp4d_missing_au_column_missing_image_and_allowed_gaps(tmp_path):
    labels, frames_root = write_bp4d(tmp_path, {"F001_T1": [bp4d_row(1, ONES), bp4d_row(4, ZEROS)]})
    table = au_datasets.read_bp4d(labels, frames_root, allow_frame_gaps=True)
    assert table.frames.tolist() == [1, 4]
    (frames_root / "F001" / "T1" / "0004.jpg").unlink()
    with pytest.raises(LabelFileError, match=r"F001_T1.csv line 3: image .*0004.jpg for frame 4 not found"):
        au_datasets.read_bp4d(labels, frames_root, allow_frame_gaps=True)
    (labels / "F001_T1.csv").write_text("0,1,2,4\n1,0,0,0\n")
    with pytest.raises(LabelFileError, match=r"F001_T1.csv line 1: no column for AU 6, 7, 10"):
        au_datasets.read_bp4d(labels, frames_root)


# ----------------------------------------------------------------------------- DISFA
def write_video(path: Path, num_frames: int) -> None:
    """A tiny real AVI (MPEG-4 part 2) so the frame-count check decodes a genuine file."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * index, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_disfa(root: Path, subject: str, intensities: dict[int, list[int]], video_frames: int | None = 6):
    folder = root / "ActionUnit_Labels" / subject
    folder.mkdir(parents=True, exist_ok=True)
    for au, values in intensities.items():
        lines = [f"{frame},{value}" for frame, value in enumerate(values, start=1)]
        (folder / f"{subject}_au{au}.txt").write_text("\n".join(lines) + "\n")
    if video_frames is not None:
        write_video(root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi", video_frames)
    return folder


def disfa_intensities(first: list[int]) -> dict[int, list[int]]:
    """AU1 gets ``first``, every other standard AU a constant, plus AU5 (not one of the 8)."""
    values = {au: [index % 6] * len(first) for index, au in enumerate(folds.DISFA_AUS)}
    values[1] = first
    values[5] = [5] * len(first)
    return values


def test_read_disfa_thresholds_intensity_and_maps_frames_to_the_video(tmp_path):
    write_disfa(tmp_path, "SN001", disfa_intensities([0, 1, 2, 3, 5]))
    write_disfa(tmp_path, "SN002", disfa_intensities([4, 0, 0]), video_frames=4)
    table = au_datasets.read_disfa(tmp_path)
    assert len(table) == 8 and table.au_numbers == folds.DISFA_AUS
    assert table.subjects.tolist() == ["SN001"] * 5 + ["SN002"] * 3
    np.testing.assert_array_equal(table.intensity[:5, 0], [0, 1, 2, 3, 5])
    np.testing.assert_array_equal(table.occurrence[:5, 0], [0, 0, 1, 1, 1])  # intensity >= 2
    # AU k of the 8 has constant intensity k % 6: present from 2 on
    np.testing.assert_array_equal(table.occurrence[0], [0, 0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(table.intensity[0, 1:], [1, 2, 3, 4, 5, 0, 1])
    assert table.frames[:5].tolist() == [1, 2, 3, 4, 5]
    assert table.source_frames[:5].tolist() == [0, 1, 2, 3, 4]  # DISFA counts frames from 1
    assert table.sources[5] == str(tmp_path / "Videos_LeftCamera" / "LeftVideoSN002_comp.avi")
    assert table.tasks.tolist() == [""] * 8
    lowered = au_datasets.read_disfa(tmp_path, subjects=["SN002"], occurrence_threshold=1)
    np.testing.assert_array_equal(lowered.occurrence[0], [1, 1, 1, 1, 1, 1, 0, 1])


def test_read_disfa_frame_missing_in_one_au_file_names_that_file(tmp_path):
    folder = write_disfa(tmp_path, "SN003", disfa_intensities([0, 1, 2, 3]))
    (folder / "SN003_au12.txt").write_text("1,0\n2,0\n4,0\n")
    with pytest.raises(LabelFileError, match=r"SN003_au12.txt: frame 3 is missing"):
        au_datasets.read_disfa(tmp_path)
    (folder / "SN003_au12.txt").write_text("1,0\n2,0\n3,0\n4,0\n9,1\n")
    with pytest.raises(LabelFileError, match=r"SN003_au12.txt line 5: frame 9 is not in SN003_au1.txt"):
        au_datasets.read_disfa(tmp_path)


@pytest.mark.parametrize("content, message", [
    ("1,0\n2,7\n3,0\n4,0\n", r"SN001_au4.txt line 2: intensity 7; DISFA intensities are whole numbers 0..5"),
    ("1,0\n2,0,1\n3,0\n4,0\n", r"SN001_au4.txt line 2: 3 fields"),
    ("1,0\n2,0\nthree,0\n4,0\n", r"SN001_au4.txt line 3: frame = 'three' is not a number"),
    ("1,0\n2,0\n2,1\n3,0\n4,0\n", r"SN001_au4.txt line 3: frame 2 is duplicated \(already on line 2\)"),
])
def test_read_disfa_malformed_lines(tmp_path, content, message):
    folder = write_disfa(tmp_path, "SN001", disfa_intensities([0, 1, 2, 3]), video_frames=None)
    (folder / "SN001_au4.txt").write_text(content)
    with pytest.raises(LabelFileError, match=message):
        au_datasets.read_disfa(tmp_path, check_videos=False, check_frame_counts=False)


def test_read_disfa_checks_the_video(tmp_path):
    write_disfa(tmp_path, "SN001", disfa_intensities([0, 1, 2, 3]), video_frames=3)
    with pytest.raises(LabelFileError, match=r"SN001_au1.txt line 4: frame 4 is past the end of "
                                             r"LeftVideoSN001_comp.avi \(3 frames\)"):
        au_datasets.read_disfa(tmp_path)
    (tmp_path / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi").unlink()
    with pytest.raises(VideoReadError, match="LeftVideoSN001_comp.avi: DISFA video of SN001 not found"):
        au_datasets.read_disfa(tmp_path)
    assert len(au_datasets.read_disfa(tmp_path, check_videos=False, check_frame_counts=False)) == 4
    with pytest.raises(LabelFileError, match=r"SN009_au1.txt: label file not found"):
        au_datasets.read_disfa(tmp_path, subjects=["SN009"], check_videos=False)


# ----------------------------------------------------------------------------- generic CSV
def test_read_au_csv_occurrence_with_not_coded_and_video_frames(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "path,subject,frame,AU12,AU1,note\n"
        "clips/a.mp4,p1,0,1,0,x\n"
        "clips/a.mp4,p1,3,,1,y\n"
        "/data/b.mp4,p2,5,0,,z\n")
    table = au_datasets.read_au_csv(tmp_path / "labels.csv")
    assert table.au_numbers == (1, 12)  # increasing AU order whatever the column order
    np.testing.assert_array_equal(table.occurrence, [[0, 1], [1, -1], [-1, 0]])
    assert np.isnan(table.intensity[1, 1]) and table.intensity[0, 1] == 1
    assert table.sources.tolist() == [str(tmp_path / "clips/a.mp4")] * 2 + ["/data/b.mp4"]
    assert table.source_frames.tolist() == [0, 3, 5]
    assert table.subjects.tolist() == ["p1", "p1", "p2"]


def test_read_au_csv_intensity_needs_a_threshold(tmp_path):
    (tmp_path / "labels.csv").write_text("path,subject,AU06,AU12\nimg1.jpg,s1,0,3\nimg2.jpg,s1,2,1\n")
    with pytest.raises(LabelFileError, match=r"labels.csv line 2: AU12 = 3 is not 0/1; pass occurrence_threshold"):
        au_datasets.read_au_csv(tmp_path / "labels.csv")
    table = au_datasets.read_au_csv(tmp_path / "labels.csv", occurrence_threshold=2, root="/images")
    np.testing.assert_array_equal(table.occurrence, [[0, 1], [1, 0]])
    np.testing.assert_array_equal(table.intensity, [[0, 3], [2, 1]])
    assert table.sources[0] == "/images/img1.jpg" and (table.source_frames == -1).all()


@pytest.mark.parametrize("content, message", [
    ("file,subject,AU01\na.jpg,s,1\n", r"labels.csv line 1: no 'path' column"),
    ("path,subject,AU01\na.jpg,s,1\nb.jpg,s\n", r"labels.csv line 3: 2 fields, the header has 3"),
    ("path,subject,AU01\na.jpg,s,1\nb.jpg,s,yes\n", r"labels.csv line 3: AU01 = 'yes' is not a number"),
    ("path,subject,AU01\na.jpg,s,1\na.jpg,s,0\n", r"labels.csv line 3: .*a.jpg is duplicated \(already on line 2\)"),
    ("path,subject,note\na.jpg,s,1\n", r"labels.csv line 1: no column for AU"),
])
def test_read_au_csv_malformed(tmp_path, content, message):
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(LabelFileError, match=message):
        au_datasets.read_au_csv(tmp_path / "labels.csv")


# ----------------------------------------------------------------------------- join with the face cache
class FakeCache:
    """The FaceTrackCache contract the join needs: ``.tracks`` rows and per-track frame_indices."""

    def __init__(self, rows, frame_indices):
        self.tracks, self._frame_indices, self.reads = rows, frame_indices, []

    def frame_indices(self, track_id):
        self.reads.append(track_id)
        return self._frame_indices[track_id]


def video_table(sources, source_frames, subjects):
    count = len(sources)
    return au_datasets.AUFrameTable((1,), np.array(subjects), np.full(count, ""), np.arange(count),
                                    np.array(sources), np.array(source_frames), np.zeros((count, 1), np.int8))


def test_join_maps_frames_to_tracks_and_reports_unmatched_per_subject(tmp_path):
    video_a, video_b, video_c = (str(tmp_path / name) for name in ("a.avi", "b.avi", "c.avi"))
    table = video_table([video_a] * 4 + [video_b] * 2 + [video_c], [0, 2, 5, 9, 1, 4, 0],
                        ["S1"] * 4 + ["S2"] * 2 + ["S3"])
    rows = [
        {"track_id": "a0", "source": video_a, "first_frame": 0, "num_frames": 3},  # frames 0 2 4 (subsampled)
        {"track_id": "a1", "source": video_a, "first_frame": 5, "num_frames": 2},  # frames 5 6
        {"track_id": "a2", "source": video_a, "first_frame": 20, "num_frames": 2},  # misses every label: not read
        {"track_id": "b0", "source": "elsewhere/b.avi", "first_frame": 0, "num_frames": 5},  # same file name as b
        {"track_id": "b1", "source": "elsewhere/b.avi", "first_frame": 4, "num_frames": 1},  # shorter, also frame 4
    ]
    cache = FakeCache(rows, {"a0": np.array([0, 2, 4]), "a1": np.array([5, 6]), "a2": np.array([20, 21]),
                             "b0": np.arange(5), "b1": np.array([4])})
    join = au_datasets.join_with_face_cache(table, cache)
    assert join.track_ids.tolist() == ["a0", "a0", "a1", "", "b0", "b0", ""]
    assert join.track_positions.tolist() == [0, 1, 0, -1, 1, 4, -1]
    assert join.matched.tolist() == [True, True, True, False, True, True, False]
    assert join.unmatched_per_subject == {"S1": 1, "S2": 0, "S3": 1}
    assert join.frames_per_subject == {"S1": 4, "S2": 2, "S3": 1}
    assert join.sources_without_tracks == [video_c]
    assert join.ambiguous_frames == 1  # b frame 4 is in tracks b0 and b1; the longer (b0) wins
    assert "a2" not in cache.reads
    summary = join.summary()
    assert "5 of 7 labelled frames have a face in the cache; 2 have none" in summary
    assert "S1: 1 of 4 frames without a face" in summary and "c.avi" in summary
    assert len(table.select(join.matched)) == 5


def test_join_with_a_real_face_track_cache(tmp_path):
    from video_fer.data.cache import CacheWriter, FaceTrackCache
    from video_fer.faces.alignment import AlignmentSpec

    video = str(tmp_path / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi")
    writer = CacheWriter(tmp_path / "cache")
    writer.begin({"alignment": AlignmentSpec(size=16).to_dict(), "landmarker": "synthetic", "size": 16})
    crops = np.zeros((3, 16, 16, 3), np.uint8)
    row = writer.write_track("sn001__t0000", crops, {"frame_indices": np.array([1, 3, 4])},
                             source=video, identity="SN001", fps=25.0)
    writer.commit_video("sn001", {"source": video, "status": "ok", "tracks": [row]})
    writer.rebuild_index()
    table = video_table([video] * 4, [0, 1, 3, 4], ["SN001"] * 4)
    join = au_datasets.join_with_face_cache(table, FaceTrackCache(tmp_path / "cache"))
    assert join.track_ids.tolist() == ["", "sn001__t0000", "sn001__t0000", "sn001__t0000"]
    assert join.track_positions.tolist() == [-1, 0, 1, 2]
    assert join.unmatched_per_subject == {"SN001": 1}


def test_join_finds_frames_of_subsampled_tracks_beyond_first_plus_count():
    # a track sampled every 10th frame: 3 crops spanning frames 0..20, so 20 >= first + num_frames
    rows = [{"track_id": "t", "source": "/v.avi", "first_frame": 0, "last_frame": 20, "num_frames": 3},
            {"track_id": "u", "source": "/w.avi", "first_frame": 0, "num_frames": 2}]  # no last_frame column
    indices = {"t": np.array([0, 10, 20]), "u": np.array([0, 30])}
    join = au_datasets.match_frames_to_tracks(["/v.avi", "/v.avi", "/w.avi"], [20, 15, 30], ["a", "a", "b"],
                                              rows, indices.__getitem__)
    assert join.track_ids.tolist() == ["t", "", "u"] and join.track_positions.tolist() == [2, -1, 1]


def test_join_still_images_match_frame_zero_and_cache_without_frame_indices_fails():
    join = au_datasets.match_frames_to_tracks(
        ["/x/F001/T1/0001.jpg", "/x/F001/T1/0002.jpg"], [-1, -1], ["F001", "F001"],
        [{"track_id": 7, "source": "/x/F001/T1/0001.jpg", "first_frame": 0, "num_frames": 1}],
        lambda track_id: np.array([0]))
    assert join.track_ids.tolist() == ["7", ""] and join.unmatched_per_subject == {"F001": 1}

    class NoIndices:
        root, tracks = "/cache", []

    from video_fer.errors import CacheError
    with pytest.raises(CacheError, match="/cache: this cache object offers no per-track frame_indices"):
        au_datasets.join_with_face_cache(video_table(["v"], [0], ["s"]), NoIndices())
