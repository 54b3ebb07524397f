"""Your own names (issue 20): a list of paths, per-image fields, several formats in one call,
{shard} folders, and the command's --names. Files are compared with cv2.imencode's bytes."""

from __future__ import annotations

import os
import pickle

import cv2
import numpy as np
import pytest

import shmsave
from shmsave import InvalidRequest
from shmsave._plan import Chunks
from shmsave._staging import Stager
from shmsave.request import make_request

from .test_cli import shmsave_cli

ENGINES = ["inline", "thread", "process"]


def _images(count: int, height: int = 12, width: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), np.uint8)


def _encoded(image, path, params=()) -> bytes:
    ok, data = cv2.imencode(os.path.splitext(str(path))[1], image, list(params))
    assert ok
    return data.tobytes()


def _assert_written(paths, images, params_of=lambda path: ()) -> None:
    for path, image in zip(paths, images):
        with open(path, "rb") as file:
            assert file.read() == _encoded(image, path, params_of(str(path))), f"{path} differs from cv2.imencode"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_list_of_paths_in_several_folders_and_formats(tmp_path, engine):
    images = _images(90)
    paths = [tmp_path / ("cat" if i % 2 else "dog") / f"{i}.{('png', 'jpg', 'bmp')[i % 3]}" for i in range(90)]
    with shmsave.Writer(2, engine=engine) as writer:
        report = writer.save(images, paths, quality=80)  # quality: for the .jpg files, the only ones that take it
    assert report.count == 90 and report.ok and report.engine == engine
    _assert_written(paths, images, lambda p: (cv2.IMWRITE_JPEG_QUALITY, 80) if p.endswith(".jpg") else ())


@pytest.mark.parametrize("engine", ENGINES)
def test_per_image_fields_export_a_dataset(tmp_path, engine):
    images = list(_images(60))
    labels = np.array(["cat", "dog", "bird"])[np.arange(60) % 3]  # a numpy array is one value per image too
    stems = [f"img_{i * 7:05d}" for i in range(60)]
    with shmsave.Writer(2, engine=engine) as writer:
        report = writer.save(
            images, tmp_path / "{split}/{label}/{name}.png", fields={"split": "train", "label": labels, "name": stems}
        )
    assert report.count == 60 and report.ok
    _assert_written([tmp_path / "train" / labels[i] / f"{stems[i]}.png" for i in range(60)], images)


def test_each_task_carries_the_names_of_its_own_images(tmp_path):
    """Each task carries the names of its own images, never the whole list (a task per image
    would be one message per image; the whole list per task, N x tasks)."""
    images = _images(1000, 4, 4)
    paths = [str(tmp_path / f"frame_{i:04d}.png") for i in range(1000)]
    request = make_request(images, paths)
    stager = Stager(lambda locator: None)
    try:
        tasks = [task for task in stager.tasks(request, Chunks(1000, images.nbytes, 4)) if hasattr(task, "job")]
    finally:
        stager.release()
    assert len(tasks) > 1
    for task in tasks:
        names = task.job.names
        assert names.first == task.first and len(names.paths) == task.hi - task.lo
        assert names.paths[0] == str(tmp_path / f"frame_{task.first:04d}.png")
        assert task.job.folder == str(tmp_path)  # the workers open it once per task
        assert len(pickle.dumps(task)) < (len(paths[0]) + 8) * (task.hi - task.lo) + 1500


def test_two_images_on_one_path_are_refused_naming_both(tmp_path, monkeypatch):
    images = _images(5)
    monkeypatch.chdir(tmp_path)
    cases = [
        (["a.png", "b.png", "c.png", "b.png", "d.png"], "images 1 and 3 have the same path 'b.png'"),
        (["a.png", "b.png", "./sub/../c.png", "d.png", "c.png"], "images 2 and 4 have the same path 'c.png'"),
        (["a.png", "b.png", str(tmp_path / "c.png"), "d.png", "c.png"], "images 2 and 4 have the same path 'c.png'"),
    ]
    for paths, message in cases:
        with pytest.raises(InvalidRequest, match=message.replace(".", r"\.")):
            shmsave.save(images, paths)
    with pytest.raises(InvalidRequest, match="images 0 and 2 have the same path 'x/a.png'"):
        shmsave.save(images, "x/{name}.png", fields={"name": ["a", "b", "a", "c", "d"]})
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("out/odd.foo", "image 2 goes to 'out/odd.foo': cannot write images with '.foo'"),
        ("", "the path of image 2 is empty"),
        ("out/", "the path of image 2, 'out/', is a folder"),
        ("out/a\0b.png", "NUL"),
        (b"out/bytes.png", "the path of image 2 is b'out/bytes.png'"),
    ],
    ids=["extension", "empty", "folder", "nul", "bytes"],
)
def test_a_bad_path_in_the_middle_is_refused_before_any_file_exists(tmp_path, monkeypatch, bad, message):
    monkeypatch.chdir(tmp_path)
    paths = ["out/a.png", "out/b.jpg", bad, "out/d.png"]
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(".", r"\.")):
        shmsave.save(_images(4), paths)
    assert not os.listdir(tmp_path)


def test_counts_of_paths_and_fields_must_match_the_images():
    images = _images(4)
    with pytest.raises(InvalidRequest, match="3 paths for 4 images"):
        shmsave.save(images, ["a.png", "b.png", "c.png"])
    with pytest.raises(InvalidRequest, match=r"fields\['name'\] has 3 values for 4 images"):
        shmsave.save(images, "{name}.png", fields={"name": ["a", "b", "c"]})
    with pytest.raises(InvalidRequest, match="not ordered|in the images' order"):
        shmsave.save(images, "{name}.png", fields={"name": {"a", "b", "c", "d"}})
    with pytest.raises(InvalidRequest, match="a sequence of paths is taken as it is"):
        shmsave.save(images, ["a.png", "b.png", "c.png", "d.png"], fields={"x": 1})


def test_options_of_a_call_with_several_formats(tmp_path):
    images = _images(4)
    paths = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png", tmp_path / "d.webp"]
    report = shmsave.save(images, paths, quality=70, compression=1)  # quality: .jpg and .webp; compression: .png
    assert report.count == 4
    _assert_written(paths[:3:2], images[:3:2], lambda p: (cv2.IMWRITE_PNG_COMPRESSION, 1))
    _assert_written(paths[1:2], images[1:2], lambda p: (cv2.IMWRITE_JPEG_QUALITY, 70))
    _assert_written(paths[3:], images[3:], lambda p: (cv2.IMWRITE_WEBP_QUALITY, 70))
    raw = [tmp_path / "r" / "a.png", tmp_path / "r" / "b.jpg"]
    shmsave.save(images[:2], raw, params=[cv2.IMWRITE_JPEG_QUALITY, 55])  # a JPEG flag goes to the JPEG file
    _assert_written(raw[1:], images[1:2], lambda p: (cv2.IMWRITE_JPEG_QUALITY, 55))
    _assert_written(raw[:1], images[:1])
    with pytest.raises(InvalidRequest, match="quality does not apply to PNG"):
        shmsave.save(images[:2], [tmp_path / "q.png", tmp_path / "q.bmp"], quality=70)
    with pytest.raises(InvalidRequest, match="sets the quality or compression of"):
        shmsave.save(images[:2], [tmp_path / "p.png", tmp_path / "p.jpg"], params=[cv2.IMWRITE_WEBP_QUALITY, 50])


def test_one_integer_cast_for_every_format_of_the_call(tmp_path):
    images = np.arange(2 * 8 * 8, dtype=np.int64).reshape(2, 8, 8) % 200  # fits uint8: both formats take it
    paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
    shmsave.save(images, paths)
    _assert_written(paths, images.astype(np.uint8))
    with pytest.raises(InvalidRequest, match="cannot hold"):
        shmsave.save(images.astype(np.uint16) * 300, [tmp_path / "c.png", tmp_path / "d.jpg"])


@pytest.mark.parametrize("engine", ENGINES)
def test_relative_paths_of_a_list_follow_the_callers_folder(tmp_path, monkeypatch, engine):
    images = _images(3)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    with shmsave.Writer(2, engine=engine) as writer:
        writer.save(images, ["rel/a.png", "~/b{x}.png", str(tmp_path / "abs" / "c.png")])
    _assert_written([tmp_path / "here" / "rel" / "a.png", home / "b{x}.png", tmp_path / "abs" / "c.png"], images)


def test_a_workers_split_of_each_path_into_folder_and_name_is_os_path_splits(tmp_path):
    """Images in varying folders are created relative to their folder's descriptor: the split of
    each path must find the folder ``os.path.split`` finds, the root and the caller's folder too."""
    from shmsave._files import _Folders

    (tmp_path / "a").mkdir()
    folders = _Folders(None, str(tmp_path))
    try:
        for path in [f"{tmp_path}/a/x.png", "a/x.png", "a//x.png", "x.png", "/x.png", f"{tmp_path}/new/x.png"]:
            fd, name = folders.open(path)
            head, tail = os.path.split(path)
            assert name == tail, path
            assert os.path.samestat(os.fstat(fd), os.stat(os.path.join(tmp_path, head))), path
    finally:
        folders.close()
    assert (tmp_path / "new").is_dir()  # a missing folder is made


@pytest.mark.parametrize("engine", ENGINES)
def test_shards_put_every_shard_size_images_in_a_folder(tmp_path, engine):
    images = _images(25, 4, 4)
    with shmsave.Writer(2, engine=engine) as writer:
        writer.save(images, tmp_path / "{shard:03d}" / "{index:05d}.png", shard_size=10)
        writer.save(images[:4], tmp_path / "d" / "{shard}" / "{index}.png", start=1998)  # 1,000 by default
    assert sorted(os.listdir(tmp_path)) == ["000", "001", "002", "d"]
    _assert_written([tmp_path / f"{i // 10:03d}" / f"{i:05d}.png" for i in range(25)], images)
    assert sorted(os.listdir(tmp_path / "d")) == ["1", "2"]
    assert sorted(os.listdir(tmp_path / "d" / "2")) == ["2000.png", "2001.png"]


def test_ambiguous_shards_are_refused():
    images = _images(3, 4, 4)
    with pytest.raises(InvalidRequest, match=r"computes with \{index\}.*write \{shard\}"):
        shmsave.save(images, "out/{index//1000}/{index}.png")
    with pytest.raises(InvalidRequest, match=r"no \{shard\} field"):
        shmsave.save(images, "out/{index}.png", shard_size=100)
    with pytest.raises(InvalidRequest, match=r"\{shard\} numbers folders, not files"):
        shmsave.save(images, "out/{shard}.png")
    with pytest.raises(InvalidRequest, match="shmsave's own field"):
        shmsave.save(images, "out/{shard}/{index}.png", fields={"shard": "x"})
    with pytest.raises(InvalidRequest, match="shard_size must be a positive integer"):
        shmsave.save(images, "out/{shard}/{index}.png", shard_size=0)


# -- the command -------------------------------------------------------------


def test_the_command_takes_names_from_a_file(tmp_path):
    images = _images(4)
    np.save(tmp_path / "crops.npy", images)
    paths = ["out/a.png", "out/sub/b.jpg", "out/c d.png", "elsewhere/e.bmp"]
    (tmp_path / "names.txt").write_text("\n".join(paths) + "\n")
    result = shmsave_cli("crops.npy", "--names", "names.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _assert_written([tmp_path / p for p in paths], images)
    stems = tmp_path / "stems.txt"
    stems.write_text("one\ntwo\nthree\nfour\n")
    result = shmsave_cli("crops.npy", "--names", stems, "-o", "t/{stem}/{index}_{name}.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _assert_written(
        [tmp_path / "t" / "crops" / f"{i}_{n}.png" for i, n in enumerate(["one", "two", "three", "four"])], images
    )


def test_the_command_refuses_names_that_do_not_fit(tmp_path):
    np.save(tmp_path / "a.npy", _images(4))
    np.save(tmp_path / "b.npy", _images(4))
    (tmp_path / "three.txt").write_text("x.png\ny.png\nz.png\n")
    (tmp_path / "four.txt").write_text("x.png\ny.png\nx.png\nz.png\n")
    for args, message in [
        (["a.npy", "--names", "three.txt"], "has 3 line(s) for the 4 images of a.npy"),
        (["a.npy", "b.npy", "--names", "three.txt"], "one input"),
        (["a.npy", "--names", "four.txt"], "images 0 and 2 have the same path"),
        (["a.npy", "--names", "three.txt", "-o", "{index}.png"], "has 3 line(s)"),
        (["a.npy"], "-o TEMPLATE, or --names FILE"),
    ]:
        result = shmsave_cli(*args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "b.npy", "four.txt", "three.txt"]


def test_the_command_shards(tmp_path):
    images = _images(5, 4, 4)
    np.save(tmp_path / "a.npy", images)
    result = shmsave_cli("a.npy", "-o", "s/{shard}/{index:03d}.png", "--shard-size", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _assert_written([tmp_path / "s" / str(i // 2) / f"{i:03d}.png" for i in range(5)], images)
    result = shmsave_cli("a.npy", "-o", "s/{index//2}/{index:03d}.png", cwd=tmp_path)
    assert result.returncode == 2 and "{shard}" in result.stderr
