"""`faceprompt demo`."""

import json

from PIL import Image

from faceprompt.cli import main
from faceprompt.identity import Identity


def test_demo_writes_crops_identity_and_contact_sheet(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--backend", "dlib"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {name: len(photo["faces"]) for name, photo in summary["photos"].items()} == {
        "group": 6, "tom_hanks": 1, "astronaut": 1}
    assert Identity.load(out / "identity.safetensors").face_model == "dlib/resnet_v1"
    assert Image.open(out / "contact_sheet.png").width > 1000
    assert len(list((out / "crops").glob("*_segmented.png"))) == 8
    assert "contact_sheet.png" in (out / "index.html").read_text()
    assert len(summary["generated"]) == 4 and "noise by design" in summary["generated_notice"]
    from faceprompt.pipelines.outputs import read_metadata

    record = read_metadata(summary["generated"][0])
    assert record["seed"] == 2023 and record["notice"].startswith("tiny randomly initialised")
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert summary["evaluation"] == evaluation["summary"]
    assert evaluation["summary"]["images"] == 4 and evaluation["summary"]["face_detection_rate"] == 0.0  # noise
    assert [row["prompt"] for row in evaluation["images"]][::2] == ["a photo of the astronaut on the moon",
                                                                    "an oil painting of the astronaut"]
    (out / "notes.txt").write_text("mine")  # a user's files in the demo's folder are kept on a re-run
    (out / "generated" / "keep.jpg").write_bytes(b"mine too")
    assert main(["demo", "--out", str(out), "--backend", "dlib"]) == 0  # safe to re-run
    assert len(list((out / "generated").glob("*.png"))) == 4
    assert (out / "notes.txt").read_text() == "mine" and (out / "generated" / "keep.jpg").read_bytes() == b"mine too"
    marker = json.loads((out / ".faceprompt-demo.json").read_text())
    assert "index.html" in marker["files"] and "notes.txt" not in marker["files"]


def test_demo_never_writes_or_deletes_through_a_linked_folder(tmp_path, capsys):
    out, outside = tmp_path / "demo", tmp_path / "outside"
    assert main(["demo", "--out", str(out), "--backend", "dlib"]) == 0
    outside.mkdir()
    (outside / "demo-0.json").write_text("precious")
    for path in (out / "generated").iterdir():
        path.unlink()
    (out / "generated").rmdir()
    (out / "generated").symlink_to(outside)
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--backend", "dlib"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert sorted(path.name for path in outside.iterdir()) == ["demo-0.json"]
    assert (outside / "demo-0.json").read_text() == "precious"
