import json

import pytest
from PIL import Image

from faceprompt.cli import main
from faceprompt.identity import Identity


@pytest.fixture()
def photo_dir(tmp_path, astronaut_path, group_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "astronaut.png").write_bytes(astronaut_path.read_bytes())
    (folder / "group.jpg").write_bytes(group_path.read_bytes())
    Image.new("RGB", (120, 120), "gray").save(folder / "wall.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def test_analyze_json_processes_every_file_and_exits_2_on_unreadable(photo_dir, capsys):
    code = main(["analyze", str(photo_dir), "--backend", "dlib", "--json"])
    out, err = capsys.readouterr()
    records = {json.loads(line)["file"].split("/")[-1]: json.loads(line) for line in out.splitlines()}
    assert code == 2
    assert sorted(records) == ["astronaut.png", "group.jpg", "wall.png"]
    assert len(records["group.jpg"]["faces"]) == 6
    assert records["wall.png"]["faces"] == []
    face = records["astronaut.png"]["faces"][0]
    assert set(face) >= {"bbox", "score", "kps", "size", "blur"} and len(face["kps"]) == 5
    assert "broken.jpg" in err and "truncated or corrupt" in err
    assert "face backend: dlib" in err
    assert "Traceback" not in err


def test_analyze_table_and_crops(photo_dir, tmp_path, capsys):
    crops = tmp_path / "crops"
    code = main(["analyze", str(photo_dir / "astronaut.png"), "--backend", "dlib", "--save-crops", str(crops), "--segment"])
    out, _ = capsys.readouterr()
    assert code == 0 and "astronaut.png" in out
    saved = crops / "astronaut_face0.png"
    assert Image.open(saved).size == (224, 224)
    assert json.loads(Image.open(saved).text["face"])["index"] == 0
    main(["analyze", str(photo_dir / "astronaut.png"), "--backend", "dlib", "--save-crops", str(crops)])
    assert (crops / "astronaut_face0-1.png").exists()  # never overwritten


def test_identity_create_and_show(photo_dir, tmp_path, capsys):
    output = tmp_path / "id.safetensors"
    code = main(["identity", "create", str(photo_dir / "group.jpg"), "-o", str(output), "--backend", "dlib",
                 "--select", "index:1", "--name", "friend"])
    _, err = capsys.readouterr()
    assert code == 0
    assert "group.jpg: face 1 (index:1)" in err
    identity = Identity.load(output)
    assert identity.name == "friend" and identity.sources[0]["face_index"] == 1
    assert main(["identity", "show", str(output), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["count"] == 1 and shown["face_model"] == "dlib/resnet_v1"
    assert main(["identity", "show", str(output)]) == 0
    assert "friend" in capsys.readouterr().out


def test_identity_create_errors(photo_dir, tmp_path, capsys):
    output = tmp_path / "id.safetensors"
    code = main(["identity", "create", str(photo_dir / "wall.png"), "-o", str(output), "--backend", "dlib"])
    err = capsys.readouterr().err
    assert code == 2 and "wall.png: no face found" in err and not output.exists()
    output.write_bytes(b"keep me")
    code = main(["identity", "create", str(photo_dir / "astronaut.png"), "-o", str(output), "--backend", "dlib"])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert output.read_bytes() == b"keep me"
    code = main(["identity", "create", str(photo_dir / "group.jpg"), "-o", str(tmp_path / "x.safetensors"),
                 "--backend", "dlib", "--select", "index:7"])
    assert code == 2 and "only 6 face(s)" in capsys.readouterr().err
    assert main(["identity", "show", str(photo_dir / "wall.png")]) == 2
    assert "not a readable .safetensors file" in capsys.readouterr().err


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
    assert main(["demo", "--out", str(out), "--backend", "dlib"]) == 0  # safe to re-run
    assert len(list((out / "generated").glob("*.png"))) == 4


def test_console_script_is_installed():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "faceprompt"
    assert script.exists() or shutil.which("faceprompt")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("faceprompt ")
