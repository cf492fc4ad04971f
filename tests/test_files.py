"""faceprompt.files: the output-path rules every command shares, one test per class of bad path."""

import os

import pytest

from faceprompt.errors import OutputExistsError, OutputPathError, OutputWriteError
from faceprompt.files import (
    check_output_file,
    check_output_folder,
    create_output_folder,
    free_file_name,
    write_file,
    write_text_file,
)


def test_a_new_or_existing_folder_is_accepted(tmp_path):
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert create_output_folder(tmp_path / "new" / "deeper").is_dir()
    assert check_output_folder(tmp_path) == tmp_path


def test_folder_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(OutputPathError, match=r"--out .*taken is a file, not a folder"):
        check_output_folder(tmp_path / "taken")


def test_folder_under_a_file(tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(OutputPathError, match=r"--save-crops .*taken/sub/dir lies below .*taken, which is a file"):
        check_output_folder(tmp_path / "taken" / "sub" / "dir", option="--save-crops")
    with pytest.raises(OutputPathError, match="which is a file"):
        check_output_file(tmp_path / "taken" / "report.json")


def test_folder_that_is_a_dangling_symlink(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputPathError, match=r"is a symbolic link \(to .*nowhere, which does not exist\)"):
        check_output_folder(tmp_path / "link")
    with pytest.raises(OutputPathError, match="a symbolic link to .*nowhere, which does not exist"):
        check_output_folder(tmp_path / "link" / "below")


def test_folder_that_is_a_symlink_pointing_elsewhere(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere)
    with pytest.raises(OutputPathError, match="outputs are never written through links"):
        create_output_folder(tmp_path / "out")
    assert list(elsewhere.iterdir()) == []


def test_folder_inside_the_inputs(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    with pytest.raises(OutputPathError, match=r"lies inside the input folder .*photos"):
        check_output_folder(photos / "crops", inputs=[photos])
    with pytest.raises(OutputPathError, match="lies inside the input folder"):
        check_output_folder(photos, inputs=[str(photos)])
    (photos / "a.png").write_bytes(b"")
    assert check_output_folder(tmp_path / "crops", inputs=[photos, photos / "a.png"]) == tmp_path / "crops"


def test_existing_file_is_never_replaced_without_overwrite(tmp_path):
    path = tmp_path / "id.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="-o .*id.safetensors already exists; .*--force"):
        check_output_file(path, option="-o")
    assert check_output_file(path, overwrite=True) == path
    with pytest.raises(OutputExistsError):
        write_text_file(path, "new")
    assert path.read_bytes() == b"keep me"
    write_text_file(path, "new", overwrite=True)
    assert path.read_text() == "new"


def test_file_that_is_a_folder_or_a_symlink(tmp_path):
    with pytest.raises(OutputPathError, match="is a folder; give the name of a file"):
        check_output_file(tmp_path)
    outside = tmp_path / "outside.json"
    (tmp_path / "report.json").symlink_to(outside)
    with pytest.raises(OutputPathError, match="is a symbolic link"):
        check_output_file(tmp_path / "report.json", overwrite=True)


def test_writes_never_go_through_a_dangling_symlink(tmp_path):
    outside = tmp_path / "outside.png"
    link = tmp_path / "out" / "face.png"
    link.parent.mkdir()
    link.symlink_to(outside)
    assert free_file_name(link) == tmp_path / "out" / "face-1.png"  # a link counts as taken
    with pytest.raises(OutputExistsError):
        write_text_file(link, "data")
    assert not outside.exists() and link.is_symlink()
    write_text_file(link, "data", overwrite=True)  # replaces the link itself, never writes through it
    assert not outside.exists() and not link.is_symlink() and link.read_text() == "data"


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def broken(temporary):
        temporary.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputWriteError, match=r"cannot write .*report.json: No space left on device"):
        write_file(tmp_path / "report.json", broken)
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_name_keeps_the_suffix_and_the_file_its_permissions(tmp_path):
    seen = []
    path = write_file(tmp_path / "sub" / "adapter.safetensors", lambda temporary: seen.append(temporary.suffix))
    assert seen == [".safetensors"] and path.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
