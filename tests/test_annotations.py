"""Annotation readers on the real files and on broken ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from soundloc.data import annotations as A
from soundloc.data.annotations import AnnotationError


@pytest.fixture
def data(shared_dir: Path) -> Path:
    return shared_dir / "data"


# -- VGG-SS ------------------------------------------------------------------------------------
def test_real_vggss_json(data):
    ann = A.read_vggss(data / "vggss" / "vggss.json")
    assert len(ann) == 5158 and len(ann.classes) == 221
    assert ann.n_corrupt_boxes == 12 and len(ann.corrupt_ids) == 12
    assert ann["MKC9LvRivTM_000030"].empty  # its only box is corrupt
    assert ann["M1P1xla8rg0_000000"].empty  # its only box has zero height (y = 1.0 .. 1.0)
    assert ann.n_empty == 2
    assert ann.n_dropped_boxes == 18  # the 12 corrupt ones collapse when clipped, plus 6 zero-area ones
    assert all(0.0 <= v <= 1.0 for a in ann for b in a.boxes for v in b)
    assert ann["zpWuikVorYg_000032"].boxes == ((0.403125, 0.253125, 0.6, 0.75),)
    assert ann["zpWuikVorYg_000032"].label == "elk bugling"
    # a corrupt box beside a good one: the good one survives
    assert ann["Db6Hjt0x28k_000056"].boxes and "Db6Hjt0x28k_000056" in ann.corrupt_ids


def _write_json(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "ss.json"
    p.write_text(json.dumps(data))
    return p


def test_vggss_clipping_and_counting(tmp_path):
    p = _write_json(tmp_path, [
        {"file": "a_000001", "class": "x", "bbox": [[-0.01, 0.2, 1.02, 0.5]]},  # rounding: clipped, not corrupt
        {"file": "b_000002", "class": "y", "bbox": [[0.1, 0.1, 5.0, 0.5], [0.1, 0.2, -3e16, 0.5]]},
    ])
    ann = A.read_vggss(p)
    assert ann["a_000001"].boxes == ((0.0, 0.2, 1.0, 0.5),)
    assert ann["b_000002"].boxes == ((0.1, 0.1, 1.0, 0.5),)  # 5.0 clipped; the -3e16 box collapses
    assert ann.n_corrupt_boxes == 2 and ann.n_dropped_boxes == 1 and ann.corrupt_ids == ("b_000002",)


def test_vggss_nan_box_dropped(tmp_path):
    p = tmp_path / "nan.json"
    p.write_text('[{"file": "c_000003", "class": "z", "bbox": [[NaN, 0.1, 0.5, 0.5]]}]')
    ann = A.read_vggss(p)
    assert ann["c_000003"].empty and ann.n_corrupt_boxes == 1


@pytest.mark.parametrize("text, why", [
    ('[{"file": "a", "bbox": [[0.1, 0.2', "line 1 column"),  # truncated
    ('{"file": "a"}', "expected a json list"),
    ('[{"file": "a", "bbox": [[0.1, 0.2, 0.3]]}]', "not \\[xmin"),
    ('[{"file": "a", "bbox": [["0.1", 0.2, 0.3, 0.4]]}]', "not a number"),
    ('[{"bbox": []}]', "'file'"),
    ('[{"file": "a", "bbox": []}, {"file": "a", "bbox": []}]', "duplicate"),
])
def test_vggss_corrupt_json_raises(tmp_path, text, why):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=why) as e:
        A.read_vggss(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_vggss_not_utf8(tmp_path):
    p = tmp_path / "bin.json"
    p.write_bytes(b"\xff\xfe\x00[")
    with pytest.raises(AnnotationError, match="UTF-8|line"):
        A.read_vggss(p)


# -- Flickr-SoundNet ---------------------------------------------------------------------------
def _flickr_xml(boxes_by_annotator: list[list[tuple[int, int, int, int]]]) -> str:
    objs = []
    for boxes in boxes_by_annotator:
        inner = "".join(f"<bbox><type>0</type><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bbox>"
                        for a, b, c, d in boxes)
        objs.append(f"<object>{inner}</object>")
    return f"<annotation><filename>x.jpg</filename>{''.join(objs)}</annotation>"


def test_flickr_three_annotators(tmp_path):
    (tmp_path / "111.xml").write_text(_flickr_xml([[(0, 0, 128, 128)], [(64, 64, 192, 192), (0, 0, 16, 16)],
                                                   [(64, 64, 128, 128)]]))
    (tmp_path / "222.xml").write_text(_flickr_xml([[(10, 10, 20, 20)]]))
    ann = A.read_flickr(tmp_path, ["111", "333"])
    assert ann.kind == "flickr" and ann.ids == ("111",) and ann.missing == ("333",)
    a = ann["111"]
    assert a.boxes == ((0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75), (0, 0, 1 / 16, 1 / 16), (0.25, 0.25, 0.5, 0.5))
    assert a.annotators == (0, 1, 1, 2)
    assert A.read_flickr(tmp_path).ids == ("111", "222")  # without ids: every xml


def test_flickr_positional_bbox_layout(tmp_path):
    # the reference code skips the first child of <bbox> and reads the next four by position
    (tmp_path / "5.xml").write_text("<a><o><bbox><k>1</k><v>0</v><v>25.6</v><v>128</v><v>256</v></bbox></o></a>")
    assert A.read_flickr(tmp_path)["5"].boxes == ((0.0, 0.1, 0.5, 1.0),)


@pytest.mark.parametrize("text, why", [
    ("<annotation><object><bbox><xmin>1</xmin>", "line 1"),  # truncated
    ("<a><o><bbox><xmin>1</xmin><ymin>x</ymin><xmax>3</xmax><ymax>4</ymax></bbox></o></a>", "not a number"),
    ("<a><o><bbox><xmin>1</xmin></bbox></o></a>", "needs xmin"),
])
def test_flickr_corrupt_xml_raises(tmp_path, text, why):
    (tmp_path / "9.xml").write_text(text)
    with pytest.raises(AnnotationError, match=why) as e:
        A.read_flickr(tmp_path)
    assert "9.xml" in str(e.value)


def test_flickr_ids_cannot_escape(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "secret.xml").write_text(_flickr_xml([[(0, 0, 1, 1)]]))
    with pytest.raises(AnnotationError, match="escapes"):
        A.read_flickr(tmp_path / "ann", ["../secret"])


def test_real_flickr_test_ids(data):
    ids = A.read_id_list(data / "flickr" / "flickr_test.csv")
    assert len(ids) == 249 and ids[:2] == ["10000130166", "10007936344"]


# -- CSV lists ---------------------------------------------------------------------------------
def test_vggsound_csv(tmp_path):
    p = tmp_path / "vggsound.csv"
    p.write_text('---g-f_I2yQ,1,people marching,test\nabc,30,"bird chirping, tweeting",train\n\n')
    rows = A.read_vggsound_csv(p)
    assert [r.id for r in rows] == ["---g-f_I2yQ_000001", "abc_000030"]
    assert rows[1].label == "bird chirping, tweeting" and rows[1].split == "train" and rows[1].start_seconds == 30


@pytest.mark.parametrize("text, why", [
    ("abc,30,dog barking,train\nxyz,4,cat", "line 2: expected 4 columns, got 3"),  # truncated row
    ('abc,30,"dog barking,train\n', "line"),  # truncated inside a quote
    ("abc,thirty,dog,train\n", "line 1: start_seconds"),
])
def test_vggsound_csv_corrupt_raises(tmp_path, text, why):
    p = tmp_path / "v.csv"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=why) as e:
        A.read_vggsound_csv(p)
    assert str(p) in str(e.value)


def test_real_vggsound_test_and_stat(data):
    test = A.read_vggsound_test(data / "vggsound" / "test.csv")
    assert test[0] == A.LabelledFile("glLQrEijrKg_000300.mp4", "playing hammond organ")
    assert test[0].id == "glLQrEijrKg_000300"
    classes = A.read_class_names(data / "vggsound" / "stat.csv")
    assert len(classes) == 309 == len(set(classes)) and "bird chirping, tweeting" in classes
    assert {t.label for t in test} <= set(classes)
    stats = A.read_class_stats(data / "vggsound" / "stat.csv")
    assert stats[0] == A.ClassStat("ambulance siren", 1050, "vehicle")


def test_class_names_one_reader_for_stat_csv_classes_csv_and_plain_lists(tmp_path):
    p = tmp_path / "classes.csv"
    p.write_text('"dog, barking",12,animals\ncat,3,animals\n\n')  # stat.csv shape, quoted comma
    assert A.read_class_names(p) == ("dog, barking", "cat")  # file order is index order
    p.write_text("violin\ndrum\n")  # one name per line
    assert A.read_class_names(p) == ("violin", "drum")
    for text in ("", "violin\ndrum\nviolin\n"):
        p.write_text(text)
        with pytest.raises(AnnotationError, match="empty or names a class twice"):
            A.read_class_names(p)
    with pytest.raises(AnnotationError, match="cannot read"):
        A.read_class_names(tmp_path / "missing.csv")


def test_find_video_in_the_vggsound_layouts(tmp_path):
    assert A.find_video(tmp_path, "abc_000001") is None
    (tmp_path / "abc_000001.mkv").write_bytes(b"x")
    assert A.find_video(tmp_path, "abc_000001") == tmp_path / "abc_000001.mkv"  # the root itself, any video suffix
    assert A.video_folder(tmp_path) == tmp_path
    (tmp_path / "video").mkdir()
    (tmp_path / "video" / "abc_000001.mp4").write_bytes(b"x")
    assert A.find_video(tmp_path, "abc_000001") == tmp_path / "video" / "abc_000001.mp4"  # the download folder first
    assert A.video_folder(tmp_path) == tmp_path / "video"
    assert A.list_videos(tmp_path) == [("abc_000001", tmp_path / "video" / "abc_000001.mp4")]
    assert A.clip_id("abc", 1.9) == "abc_000001"


def test_vggsound_csv_ytid_never_names_a_path(tmp_path):
    p = tmp_path / "vggsound.csv"
    p.write_text("ok,1,cat,train\na/b,2,dog,train\n")
    with pytest.raises(AnnotationError, match="line 2: ytid 'a/b' contains a path separator"):
        A.read_vggsound_csv(p)


def test_stat_csv_bad_count(tmp_path):
    p = tmp_path / "stat.csv"
    p.write_text("dog,12,animals\ncat,many,animals\n")
    with pytest.raises(AnnotationError, match="line 2"):
        A.read_class_stats(p)


def test_path_label_csv_with_and_without_header(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text('path,label\nclips/a.mp4,"dog, barking"\n')
    assert A.read_path_label_csv(p) == [A.LabelledFile("clips/a.mp4", "dog, barking")]
    p.write_text("b.mp4,cat\n")
    assert A.read_path_label_csv(p) == [A.LabelledFile("b.mp4", "cat")]
    p.write_text("path,label,split\n\nsub\\c.mp4,cat,test\n")  # the training datasets' third column
    (row,) = A.read_path_label_csv(p)
    assert row == A.LabelledFile("sub\\c.mp4", "cat", "test") and row.line == 3 and row.id == "c"


def test_csv_not_utf8(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes(b"a.mp4,\xff\xfe\n")
    with pytest.raises(AnnotationError, match="UTF-8"):
        A.read_path_label_csv(p)


# -- paths -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x.mp4", "a/../../x", "/etc/passwd", "C:\\x.mp4", "..\\x.mp4", "", "a\x00b"])
def test_safe_join_rejects_escapes(tmp_path, name):
    with pytest.raises(AnnotationError):
        A.safe_join(tmp_path, name)


def test_safe_join_accepts_inside_and_rejects_symlink_out(tmp_path):
    assert A.safe_join(tmp_path, "sub/x.mp4") == tmp_path / "sub" / "x.mp4"
    os.symlink("/", tmp_path / "out")
    with pytest.raises(AnnotationError, match="outside"):
        A.safe_join(tmp_path, "out/etc")


def test_read_annotations_detects_kind(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "1.xml").write_text(_flickr_xml([[(0, 0, 1, 1)]]))
    assert A.read_annotations(tmp_path / "x").kind == "flickr"
    j = _write_json(tmp_path, [{"file": "a", "bbox": [[0, 0, 1, 1]]}, {"file": "b", "bbox": []}])
    sub = A.read_annotations(j, ["b", "zz"])
    assert sub.kind == "vggss" and sub.ids == ("b",) and sub.missing == ("zz",)
    with pytest.raises(AnnotationError, match="no such"):
        A.read_annotations(tmp_path / "nope.json")


def test_flickr_corrupt_box_counted_and_annotators_stable(tmp_path):
    # annotator 0's only box is inverted after clipping (xmax = -5000 px): dropped, yet annotator 1 stays 1
    (tmp_path / "7.xml").write_text(_flickr_xml([[(10, 10, -5000, 20)], [(0, 0, 256, 300)]]))
    a = A.read_flickr(tmp_path)["7"]
    assert a.boxes == ((0.0, 0.0, 1.0, 1.0),) and a.annotators == (1,)
    assert (a.n_corrupt, a.n_dropped) == (2, 1)  # 300 px is 1.17 of the frame: corrupt, clipped


def test_subset_counts_only_its_own_corrupt_boxes(tmp_path):
    p = _write_json(tmp_path, [{"file": "a", "bbox": [[0, 0, 9, 1]]}, {"file": "b", "bbox": [[0, 0, 1, 1]]}])
    ann = A.read_vggss(p)
    assert ann.n_corrupt_boxes == 1 and ann.subset(["b"]).n_corrupt_boxes == 0
