"""Index hardening: `index build -o` never deletes what a folder held, writers lock the index (and readers do not
need to), corrupt or missing index files are one clear line, and arguments are checked up front."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from linedraw.cli import main
from linedraw.errors import BusyError, LinedrawError, UsageError
from linedraw.retrieval.index import GalleryIndex, merge_indexes, writer_lock
from tests.test_retrieval_cli import EMBEDDER, _build, _photo, data  # noqa: F401  (data is a fixture)

ADD = ("--device", "cpu", "--quiet")


def _one_error_line(err: str) -> str:
    """The stderr of a refused command: exactly one line, `error: ...`, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _copy_gallery(data: Path, target: Path) -> Path:
    shutil.copytree(data / "gallery", target)
    return target


# ----------------------------------------------------------------------------------------------- 1: never delete


def test_build_refuses_a_folder_that_is_not_an_index(data, tmp_path, capsys):
    out = tmp_path / "notes"
    (out / "sub").mkdir(parents=True)
    (out / "todo.txt").write_text("keep me")
    (out / "sub" / "draft.md").write_text("and me")
    before = _tree(out)
    assert _build(data, out) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line and "not a linedraw index" in line
    assert _tree(out) == before
    assert sorted(os.listdir(tmp_path)) == ["notes"]  # no work area or temporary copy left behind


def test_build_never_clears_a_work_folder_it_did_not_make(data, tmp_path, capsys):
    work = tmp_path / "index.work"  # the name of the resumable work area of `-o index`
    work.mkdir()
    (work / "mine.txt").write_text("keep me")
    assert _build(data, tmp_path / "index") == 2
    assert "not a linedraw work area" in _one_error_line(capsys.readouterr().err)
    assert (work / "mine.txt").read_text() == "keep me" and not (tmp_path / "index").exists()


def test_build_refuses_an_output_in_or_equal_to_a_photo_folder(data, tmp_path, capsys):
    gallery = _copy_gallery(data, tmp_path / "photos")
    before = _tree(gallery)
    for out in (gallery, gallery / "index", gallery / "cat" / "index"):
        assert _build(data, out, gallery=str(gallery)) == 2
        assert "inside the input folder" in _one_error_line(capsys.readouterr().err)
    assert _tree(gallery) == before


def test_rebuild_over_an_index_or_an_empty_folder_works(data, tmp_path):
    out = tmp_path / "index"
    out.mkdir()  # an empty folder holds nothing to lose
    assert _build(data, out) == 0
    assert _build(data, out, "--raw") == 0
    with GalleryIndex.open(out) as index:
        assert index.count == 6 and index.manifest["checkpoint"] is None


def test_merge_refuses_a_folder_that_is_not_an_index(data, tmp_path, capsys):
    assert _build(data, tmp_path / "shard") == 0
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(LinedrawError, match="not a linedraw index"):
        merge_indexes(out, [tmp_path / "shard"])
    with pytest.raises(LinedrawError, match="inside the input folder"):
        merge_indexes(tmp_path / "shard" / "merged", [tmp_path / "shard"])
    assert (out / "keep.txt").read_text() == "x" and sorted(os.listdir(out)) == ["keep.txt"]


# ----------------------------------------------------------------------------------------------- 2: one writer


def _add(index: Path, photo: Path, wait: str, swap: str = "exchange") -> None:
    if swap == "two renames":  # where the kernel cannot exchange two folders atomically
        from linedraw.retrieval import index as index_module

        index_module._exchange = lambda first, second: False
    sys.exit(main(["index", "add", str(index), str(photo), "--wait", wait, *ADD]))


def _hold_lock(index: Path, ready) -> None:
    with writer_lock(index):
        ready.set()
        signal.pause()


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_concurrent_adds_all_land_and_readers_keep_reading(data, tmp_path, swap):
    index = tmp_path / "index"
    assert _build(data, index, gallery=str(data / "gallery" / "cat")) == 0
    photos = [tmp_path / "new" / f"p{i}.jpg" for i in range(6)]
    for i, photo in enumerate(photos):
        _photo(photo, "dog", seed=100 + i)
    # Spawned, not forked: a fork of a process whose torch thread pool is running deadlocks at the child's first
    # forward pass. The six writers take turns; the wait only bounds a hung test, generous for a loaded machine.
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_add, args=(index, photo, "900", swap), daemon=True) for photo in photos]
    for worker in workers:
        worker.start()
    opened = 0
    try:
        while any(w.is_alive() for w in workers):  # readers take no lock and always see one complete index
            with GalleryIndex.open(index) as reader:
                assert 3 <= reader.count <= 9 and reader.manifest["count"] == reader.count
                opened += 1
            time.sleep(0.002)  # keep reading throughout, without starving the writers of the two cores
    finally:
        for worker in workers:
            worker.join(timeout=None if worker.exitcode is not None else 0)
            if worker.is_alive():
                worker.kill()
    assert [w.exitcode for w in workers] == [0] * 6
    with GalleryIndex.open(index) as final:
        assert final.count == 9
        assert {str(p) for p in photos} <= {i.path for i in final.all_items()}
    assert opened and sorted(p for p in os.listdir(tmp_path) if p.startswith(".index")) == []


def test_a_busy_index_fails_at_once_and_a_killed_writer_frees_it(data, tmp_path, capsys):
    index = tmp_path / "index"
    assert _build(data, index, gallery=str(data / "gallery" / "cat")) == 0
    photo = tmp_path / "new.jpg"
    _photo(photo, "dog", seed=7)
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    holder = fork.Process(target=_hold_lock, args=(index, ready))
    holder.start()
    try:
        assert ready.wait(60)
        capsys.readouterr()
        for command in (["index", "add", str(index), str(photo), *ADD], ["index", "remove", str(index), str(photo)],
                        ["index", "build", str(photo), "-o", str(index), "--embedder", EMBEDDER, "--raw", *ADD]):
            assert main(command) == 2
            line = _one_error_line(capsys.readouterr().err)
            assert str(index) in line and "another writer" in line and "wait" in line
        with pytest.raises(BusyError):
            with writer_lock(index, wait=0.3):
                pass
        assert main(["index", "info", str(index)]) == 0  # reading needs no lock
        assert main(["search", str(index), str(data / "queries" / "cat" / "cat0-1.png"), "--device", "cpu"]) == 0
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a writer that dies holding the lock
        holder.join()
    assert main(["index", "add", str(index), str(photo), *ADD]) == 0
    with GalleryIndex.open(index) as final:
        assert final.count == 4


# ----------------------------------------------------------------------------------------------- 3: corrupt files

DAMAGES = [("index.faiss", "truncated"), ("index.faiss", "garbage"), ("index.faiss", "missing"),
           ("meta.sqlite", "truncated"), ("meta.sqlite", "garbage"), ("meta.sqlite", "missing"),
           ("manifest.json", "truncated"), ("manifest.json", "garbage"), ("manifest.json", "missing")]


@pytest.fixture(scope="module")
def good_index(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "index"
    assert _build(data, out) == 0
    return out


@pytest.mark.parametrize("name,damage", DAMAGES)
def test_corrupt_index_files_are_one_line_before_any_embedding(data, good_index, tmp_path, capsys, monkeypatch,
                                                               name, damage):
    index = tmp_path / "index"
    shutil.copytree(good_index, index)
    path = index / name
    content = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(content[: len(content) // 2])
    else:
        path.write_bytes(bytes((b * 7 + 13) % 256 for b in content))

    def no_embedding(*args, **kwargs):
        raise AssertionError("the index should be checked before anything is embedded")

    from linedraw.retrieval import gallery

    monkeypatch.setattr(gallery, "PhotoEncoder", no_embedding)
    query = str(data / "queries" / "cat" / "cat0-1.png")
    commands = [["search", str(index), query, "--device", "cpu"],
                ["eval", "retrieval", "--index", str(index), "--queries", str(data / "queries"), *ADD],
                ["index", "info", str(index)],
                ["index", "add", str(index), str(data / "gallery" / "cat"), *ADD],
                ["index", "remove", str(index), str(data / "gallery" / "cat")],
                ["index", "merge", str(index), "-o", str(tmp_path / "merged")]]
    capsys.readouterr()
    for command in commands:
        assert main(command) == 2, command
        line = _one_error_line(capsys.readouterr().err)
        assert name in line, (command, line)
    assert not (tmp_path / "merged").exists()


def test_missing_index_folder_is_one_line(tmp_path, capsys):
    for command in (["index", "info", str(tmp_path / "nope")], ["index", "remove", str(tmp_path / "nope"), "x.jpg"],
                    ["index", "add", str(tmp_path / "nope"), "x.jpg"]):
        assert main(command) == 2
        assert "nope" in _one_error_line(capsys.readouterr().err)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------- 4: offline CLIP


def test_openclip_embedder_without_weights_offline_is_one_line(data, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    out = tmp_path / "index"
    code = main(["index", "build", str(data / "gallery"), "-o", str(out), "--embedder", "openclip:ViT-B-32:openai",
                 "--raw", *ADD])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "openclip:ViT-B-32:openai" in line and "weights" in line
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- 5: small things


def test_index_folders_get_the_users_permissions(data, tmp_path):
    old = os.umask(0o022)
    try:
        assert _build(data, tmp_path / "index", "--raw") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "index").stat().st_mode & 0o777 == 0o755
    for name in ("manifest.json", "index.faiss", "meta.sqlite"):
        assert (tmp_path / "index" / name).stat().st_mode & 0o777 == 0o644, name


def test_a_failed_photo_is_reported_once(data, tmp_path, capsys):
    gallery = _copy_gallery(data, tmp_path / "gallery")
    (gallery / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    assert _build(data, tmp_path / "index", gallery=str(gallery)) == 1
    captured = capsys.readouterr()
    assert (captured.err + captured.out).count("broken.jpg") == 1


def test_remove_accepts_globs_for_photos_present_or_gone(data, tmp_path, capsys):
    gallery = _copy_gallery(data, tmp_path / "gallery")
    index = tmp_path / "index"
    assert _build(data, index, "--raw", gallery=str(gallery)) == 0
    capsys.readouterr()
    assert main(["index", "remove", str(index), str(gallery / "cat" / "*.jpg")]) == 0
    assert "3 items removed" in capsys.readouterr().out
    (gallery / "dog" / "dog0.jpg").unlink()  # gone from disk, still indexed
    assert main(["index", "remove", str(index), str(gallery / "dog" / "dog[0-1].jpg")]) == 0
    assert "2 items removed" in capsys.readouterr().out
    assert main(["index", "remove", str(index), str(gallery / "**" / "*.png")]) == 1
    with GalleryIndex.open(index) as final:
        assert [Path(i.path).name for i in final.all_items()] == ["dog2.jpg"]


@pytest.mark.parametrize("command,flag", [
    (["search", "IDX", "q.png", "-k", "0"], "-k"),
    (["search", "IDX", "q.png", "-k", "-1"], "-k"),
    (["search", "IDX", "q.png", "--nprobe", "-3"], "--nprobe"),
    (["index", "build", "g", "-o", "IDX", "--chunk-size", "0"], "--chunk-size"),
    (["index", "add", "IDX", "g", "--batch-size", "0"], "--batch-size"),
    (["index", "add", "IDX", "g", "--wait", "-1"], "--wait"),
    (["eval", "retrieval", "--index", "IDX", "--queries", "q", "--batch-size", "-2"], "--batch-size"),
])
def test_counts_are_checked_up_front(tmp_path, capsys, command, flag):
    command = [str(tmp_path / "index") if part == "IDX" else part for part in command]
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_library_search_refuses_k_below_one(data, good_index):
    with GalleryIndex.open(good_index) as index, pytest.raises(UsageError, match="k must be"):
        index.search(index.index.reconstruct_n(0, 1), 0)


def test_index_help_shows_defaults(capsys):
    for command, expected in ((["index", "build", "--help"], "(default: auto)"),
                              (["index", "remove", "--help"], "glob"),
                              (["index", "info", "--help"], "index directory"),
                              (["index", "add", "--help"], "(default: 0")):
        with pytest.raises(SystemExit):
            main(command)
        assert expected in " ".join(capsys.readouterr().out.split())


def test_an_index_reached_through_a_symlink_is_changed_where_it_is(data, tmp_path, capsys):
    """Writers through a link lock, copy and swap the real folder: the link stays a link, nothing is left over."""
    real = tmp_path / "idx-2024"
    assert _build(data, real) == 0
    link = tmp_path / "current"
    link.symlink_to(real.name)
    assert main(["index", "remove", str(link), str(data / "gallery" / "cat")]) == 0
    assert link.is_symlink() and os.readlink(link) == real.name
    with GalleryIndex.open(real) as opened:
        assert opened.count == 3
    assert sorted(os.listdir(tmp_path)) == ["current", "idx-2024"]
    errors = []

    def other_writer() -> None:
        try:
            with writer_lock(real, wait=0.0):
                pass
        except BusyError as exc:
            errors.append(exc)

    with writer_lock(link):  # the real folder's lock: a writer naming the folder itself must wait
        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join(30)
    assert len(errors) == 1
