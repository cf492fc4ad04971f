"""Bad input at every command (generate has its own tests): exit code 2 and exactly one stderr line
``error: ...`` naming the value or path and the rule, printed before any model loads, never a traceback."""

import json

import pytest
from PIL import Image

from faceprompt.cli import main


def assert_one_error_line(code: int, capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(fragment in lines[0] for fragment in fragments), err
    return lines[0]


@pytest.fixture()
def photo(tmp_path, astronaut_path):
    path = tmp_path / "me.png"
    path.write_bytes(astronaut_path.read_bytes())
    return path


NUMBERS = [
    (["analyze", "PHOTO", "--min-face-size", "nan"], "argument --min-face-size: must be a finite number >= 0, got 'nan'"),
    (["analyze", "PHOTO", "--min-face-size", "-1"], "argument --min-face-size: must be a finite number >= 0, got '-1'"),
    (["analyze", "PHOTO", "--max-faces", "0"], "argument --max-faces: must be a whole number >= 1, got '0'"),
    (["analyze", "PHOTO", "--workers", "0"], "argument --workers: must be 'auto' or a whole number >= 1, got '0'"),
    (["analyze", "PHOTO", "--workers", "-2"], "argument --workers: must be 'auto' or a whole number >= 1, got '-2'"),
    (["analyze", "PHOTO", "--workers", "many"], "argument --workers: must be 'auto' or a whole number >= 1"),
    (["identity", "create", "PHOTO", "-o", "OUT/id.safetensors", "--min-face-size", "inf"],
     "argument --min-face-size: must be a finite number >= 0, got 'inf'"),
    (["eval", "PHOTO", "--clip", "none", "--reference", "PHOTO", "--workers", "0"], "argument --workers"),
    (["eval", "PHOTO", "--clip", "none", "--reference", "PHOTO", "--min-face-size=-inf"],
     "argument --min-face-size: must be a finite number >= 0"),
    (["eval-run", "--person", "a", "PHOTO", "--out", "OUT/run", "--seeds", "-1"], "argument --seeds"),
    (["eval-run", "--person", "a", "PHOTO", "--out", "OUT/run", "--batch-size", "0"], "argument --batch-size"),
    (["eval-run", "--person", "a", "PHOTO", "--out", "OUT/run", "--model", "tiny", "--size", "0x64"],
     "width=0: input should be greater than 0"),
    (["eval-run", "--person", "a", "PHOTO", "--out", "OUT/run", "--max-faces", "nan"], "argument --max-faces"),
    (["prepare", "PHOTO", "--out", "OUT/data", "--min-face-size", "nan"], "argument --min-face-size"),
    (["prepare", "PHOTO", "--out", "OUT/data", "--blur-threshold", "inf"], "argument --blur-threshold"),
    (["prepare", "PHOTO", "--out", "OUT/data", "--shard-size", "0"], "argument --shard-size"),
    (["prepare", "PHOTO", "--out", "OUT/data", "--workers", "0"], "argument --workers"),
    (["train", "--config", "x.yaml", "--max-steps", "0"], "argument --max-steps: must be a whole number >= 1"),
    (["analyze", "PHOTO", "--face-device", "cuda:7"], "device='cuda:7'"),
    (["analyze", "PHOTO", "--face-device", "nowhere"], "device='nowhere': not a device name; use cpu, cuda"),
    (["analyze", "PHOTO", "--face-device", "cuda", "--dlib-descriptor", "dlib"], "dlib's own descriptor runs on the CPU"),
    (["analyze", "PHOTO", "--no-such-option"], "unrecognized arguments: --no-such-option (see `faceprompt --help`)"),
    (["identity"], "faceprompt identity: the following arguments are required"),
]


@pytest.mark.parametrize("arguments, message", NUMBERS)
def test_numbers_and_options_that_cannot_work(arguments, message, photo, tmp_path, capsys):
    arguments = [str(photo) if item == "PHOTO" else item.replace("OUT", str(tmp_path)) for item in arguments]
    assert_one_error_line(main(arguments), capsys, message)
    assert list(tmp_path.iterdir()) == [photo]  # nothing written


def _output_commands(photo, target):
    """Each command that writes, with ``target`` as its output (a folder, or a file for the file outputs)."""
    return {
        "analyze --save-crops": ["analyze", str(photo), "--backend", "dlib", "--save-crops", str(target)],
        "prepare --out": ["prepare", str(photo), "--out", str(target), "--backend", "dlib"],
        "eval-run --out": ["eval-run", "--person", "a", str(photo), "--out", str(target), "--model", "tiny",
                           "--clip", "none", "--backend", "dlib"],
        "demo --out": ["demo", "--out", str(target), "--backend", "dlib"],
    }


FOLDER_COMMANDS = ["analyze --save-crops", "prepare --out", "eval-run --out", "demo --out"]


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_output_folder_that_is_a_file(command, photo, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    code = main(_output_commands(photo, taken)[command])
    assert_one_error_line(code, capsys, str(taken), "is a file")
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_output_folder_under_a_file(command, photo, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    code = main(_output_commands(photo, taken / "sub")[command])
    assert_one_error_line(code, capsys, str(taken), "file")


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_output_folder_that_is_a_dangling_symlink(command, photo, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "outside" / "nowhere")
    code = main(_output_commands(photo, link)[command])
    assert_one_error_line(code, capsys, str(link), "symbolic link")
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_output_folder_that_is_a_symlink_pointing_out(command, photo, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = tmp_path / "link"
    link.symlink_to(outside)
    code = main(_output_commands(photo, link)[command])
    assert_one_error_line(code, capsys, str(link), "symbolic link")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("command", ["analyze --save-crops", "prepare --out", "eval-run --out"])
def test_output_folder_inside_the_inputs(command, photo, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "me.png").write_bytes(photo.read_bytes())
    arguments = [str(photos) if item == str(photo) else item
                 for item in _output_commands(photo, photos / "out")[command]]
    assert_one_error_line(main(arguments), capsys, "lies inside the input folder", str(photos))
    assert sorted(path.name for path in photos.iterdir()) == ["me.png"]


def _file_commands(photo, target):
    return {
        "identity create -o": ["identity", "create", str(photo), "-o", str(target), "--backend", "dlib"],
        "convert OUT": ["convert", str(photo), str(target)],
        "eval --out": ["eval", str(photo), "--reference", str(photo), "--clip", "none", "--out", str(target)],
        "train export --out": ["train", "export", str(photo), "--out", str(target)],
    }


FILE_COMMANDS = ["identity create -o", "convert OUT", "eval --out", "train export --out"]
SUFFIX = {"identity create -o": ".safetensors", "convert OUT": ".safetensors", "eval --out": ".json",
          "train export --out": ".safetensors"}


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_output_file_that_exists_is_kept(command, photo, tmp_path, capsys):
    target = tmp_path / f"existing{SUFFIX[command]}"
    target.write_bytes(b"keep me")
    assert_one_error_line(main(_file_commands(photo, target)[command]), capsys, str(target), "exists")
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_output_file_through_a_dangling_symlink(command, photo, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = tmp_path / f"link{SUFFIX[command]}"
    link.symlink_to(outside / f"planted{SUFFIX[command]}")
    assert_one_error_line(main(_file_commands(photo, link)[command]), capsys, str(link), "symbolic link")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_output_file_under_a_file_or_a_folder(command, photo, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    target = taken / f"x{SUFFIX[command]}"
    assert_one_error_line(main(_file_commands(photo, target)[command]), capsys, str(taken), "file")
    folder = tmp_path / f"folder{SUFFIX[command]}"
    folder.mkdir()
    assert_one_error_line(main(_file_commands(photo, folder)[command]), capsys, str(folder), "is a folder")


def test_analyze_crops_never_go_through_a_planted_link(photo, tmp_path, capsys):
    crops = tmp_path / "crops"
    crops.mkdir()
    outside = tmp_path / "outside.png"
    (crops / "me_face0.png").symlink_to(outside)
    assert main(["analyze", str(photo), "--backend", "dlib", "--save-crops", str(crops)]) == 0
    assert not outside.exists()
    assert Image.open(crops / "me_face0-1.png").size == (224, 224)


def test_eval_checks_every_input_before_loading_a_model(photo, tmp_path, capsys):
    # the default CLIP model would be fetched from the Hub: each error must come first
    missing = tmp_path / "missing.png"
    cases = [
        (["eval", str(missing)], f"{missing}: no such file or folder"),
        (["eval", str(photo), "--reference", str(missing)], f"{missing}: no such file or folder"),
        (["eval", str(photo), "--prompt", "a", "--prompt", "b"], "got 2 prompts for 1 images"),
        (["eval", str(photo), "--clip", "none"], "nothing to score"),
        (["eval", str(photo), "--reference", str(photo), "--baseline", str(photo), "--clip", "none"],
         "baseline images are compared with CLIP"),
        (["eval", str(photo)], "no prompt recorded in the image"),
        (["eval", str(photo), "--prompt", "x", "--device", "gpu9"], "--device gpu9: not a device name"),
    ]
    for arguments, message in cases:
        assert_one_error_line(main(arguments), capsys, message)


def test_eval_run_prompts_file_that_is_not_utf8(photo, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("a caf\u00e9 portrait\n".encode("latin-1"))
    code = main(["eval-run", "--person", "a", str(photo), "--out", str(tmp_path / "run"), "--prompts", str(prompts),
                 "--model", "tiny", "--clip", "none", "--backend", "dlib"])
    assert_one_error_line(code, capsys, f"--prompts {prompts}: not UTF-8 text", "save the file as UTF-8")


def test_demo_refuses_a_folder_of_user_files_and_reruns_over_its_own(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"precious")
    assert_one_error_line(main(["demo", "--out", str(out), "--backend", "dlib"]), capsys,
                          "holds files the demo did not write")
    assert [path.name for path in out.iterdir()] == ["holiday.png"]


FILE_MARKUP = "[bold]odd [red]name"  # a file name cannot hold "/", so no closing tag here
MARKUP = "[/]odd [bold]name"


def test_rich_markup_in_file_names_and_identity_names_prints_verbatim(photo, tmp_path, capsys):
    odd = tmp_path / f"{FILE_MARKUP}.png"
    odd.write_bytes(photo.read_bytes())
    assert main(["analyze", str(odd), "--backend", "dlib"]) == 0
    table = capsys.readouterr().out
    assert "[bold]odd" in table and "[red]name.png" in table  # verbatim (the table may wrap the cell)
    identity = tmp_path / f"{FILE_MARKUP}.safetensors"
    assert main(["identity", "create", str(odd), "-o", str(identity), "--backend", "dlib", "--name", MARKUP]) == 0
    captured = capsys.readouterr()
    assert str(identity) in captured.out and f"{odd.name}: face 0" in captured.err
    assert main(["identity", "show", str(identity)]) == 0
    assert MARKUP in capsys.readouterr().out
    broken = tmp_path / f"{FILE_MARKUP}.jpg"
    broken.write_bytes(b"not a jpeg")
    assert main(["analyze", str(broken), "--backend", "dlib", "--json"]) == 2
    assert str(broken) in capsys.readouterr().err
    assert_one_error_line(main(["identity", "show", str(broken)]), capsys, str(broken))


def test_analyze_says_how_many_workers_it_uses(photo, capsys):
    assert main(["analyze", str(photo), "--backend", "dlib", "--json"]) == 0
    from faceprompt.faces.workers import usable_cores

    count = usable_cores()
    assert f"workers: {count} process{'es' if count > 1 else ''} (auto for dlib)" in capsys.readouterr().err
    assert main(["analyze", str(photo), "--backend", "dlib", "--json", "--workers", "1"]) == 0
    assert "workers: 1 process (as given)" in capsys.readouterr().err


def test_an_os_error_while_writing_is_one_line_naming_the_path(photo, tmp_path, capsys, monkeypatch):
    import faceprompt.files

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(faceprompt.files.os, "open", refuse)
    report = tmp_path / "report.json"
    code = main(["eval", str(photo), "--reference", str(photo), "--clip", "none", "--out", str(report),
                 "--backend", "dlib"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: cannot write {report}: Permission denied" in err and "Traceback" not in err
    assert not report.exists()
    json.dumps(err)  # printable
