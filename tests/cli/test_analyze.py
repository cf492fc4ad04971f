"""`faceprompt analyze`."""

import json

from PIL import Image

from faceprompt.cli import main


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


def test_a_folder_without_images_is_an_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no photos here")
    assert main(["analyze", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no image files in") and ".jpg" in err[0]
