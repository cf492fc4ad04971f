"""`faceprompt identity create | show`."""

import json

from faceprompt.cli import main
from faceprompt.identity import Identity


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
