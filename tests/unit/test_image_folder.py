"""image.json: the one reader (its problems and messages, and how each caller words
them) and the one writer."""

import json

import pytest

from vmbinder import errors
from vmbinder.images import folder as img
from vmbinder.images import upload
from vmbinder.providers.base import Snapshot
from vmbinder.providers.local import snapshot as local_snapshot


@pytest.mark.parametrize("content, problem, reason", [
    (None, img.ImageFileError.MISSING, "No such file or directory"),
    ("{not json", img.ImageFileError.UNREADABLE, "Expecting property name"),
    ("[1]", img.ImageFileError.NOT_AN_OBJECT, "not a JSON object"),
])
def test_the_reader_names_the_file_and_the_problem(tmp_path, content, problem, reason):
    if content is not None:
        (tmp_path / "image.json").write_text(content)
    with pytest.raises(img.ImageFileError) as info:
        img.read_image_file(tmp_path)
    assert isinstance(info.value, errors.ConfigError) and info.value.exit_code == 3
    assert info.value.problem == problem and reason in info.value.reason
    assert info.value.path == tmp_path / "image.json"
    assert info.value.message == f"cannot read {tmp_path / 'image.json'}: {info.value.reason}"


def test_the_writer_replaces_the_file_whole(tmp_path):
    (tmp_path / "image.json").write_text("old")
    img.write_image_file(tmp_path, {"name": "n", "baked": True})
    assert (tmp_path / "image.json").read_text() == '{\n  "name": "n",\n  "baked": true\n}\n'
    assert img.read_image_file(tmp_path) == {"name": "n", "baked": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.json"]


def test_each_caller_keeps_its_own_words(tmp_path):
    (tmp_path / "image.json").write_text(json.dumps(["not", "an", "image"]))
    with pytest.raises(errors.ConfigError, match="^cannot read .*: not a JSON object$") as booted:
        img.load_image(tmp_path)
    assert booted.value.hint.startswith("build the image again")
    with pytest.raises(errors.BadRequest, match="image.json is not a JSON object$"):
        upload.read_folder(tmp_path)
    # A JSON document that is not an image's is not a snapshot either: it is left alone.
    with pytest.raises(errors.BadRequest, match="is an image, not a snapshot"):
        local_snapshot.delete(Snapshot(id=str(tmp_path), name="x", properties={}))
    assert local_snapshot.find(tmp_path.parent, {}) == []
    assert (tmp_path / "image.json").exists()
