import pytest
from PIL import Image


@pytest.fixture()
def photo_dir(tmp_path, astronaut_path, group_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "astronaut.png").write_bytes(astronaut_path.read_bytes())
    (folder / "group.jpg").write_bytes(group_path.read_bytes())
    Image.new("RGB", (120, 120), "gray").save(folder / "wall.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder
