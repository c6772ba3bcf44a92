import shutil

import pytest
import torch

from linedraw.config import DataConfig, DrawingSource, PhotoSource
from linedraw.data.unpaired import EpochSampler, UnpairedDataset, collect_sources
from tests.synthetic import make_unpaired_folders


@pytest.fixture()
def folders(tmp_path):
    return make_unpaired_folders(tmp_path)


def _cfg(root, **kw):
    return DataConfig(root=str(root), photos=[PhotoSource("photos", masks="masks", targets="targets")],
                      drawings=[DrawingSource("drawings")], size=32, load_size=40, **kw)


def test_sources_match_masks_and_targets_by_stem_and_hold_out_ids(folders):
    (folders / "test.txt").write_text("d00\nd03\n")
    cfg = _cfg(folders)
    cfg.drawings = [DrawingSource("drawings", exclude="test.txt")]
    photos, drawings = collect_sources(cfg)
    assert len(photos) == 6 and all(p.mask.stem == p.path.stem == p.target.stem for p in photos)
    assert sorted(d.stem for d in drawings) == ["d01_1", "d02_0", "d04_0"]


@pytest.mark.parametrize("folder, first, second", [("targets", "p01.npy", "p01.png"),
                                                     ("masks", "p01.PNG", "p01.png")])
def test_two_maps_for_one_photo_are_an_error_naming_both(folders, folder, first, second):
    """Training matches masks and targets by stem as TargetDirectory does: a second file for a stem is refused,
    not silently preferred over the first."""
    import numpy as np

    from linedraw.errors import LinedrawError

    if first.endswith(".npy"):
        np.save(folders / folder / first, np.zeros((72, 80), np.float32))
    else:
        shutil.copy(folders / folder / second, folders / folder / first)
    with pytest.raises(LinedrawError, match=rf"data.photos\[0\].{folder} files for the stem 'p01' \({first}, {second}\)"):
        collect_sources(_cfg(folders))


def test_missing_folder_names_it(folders):
    cfg = _cfg(folders)
    cfg.photos = [PhotoSource("nope")]
    with pytest.raises(FileNotFoundError, match="nope"):
        collect_sources(cfg)


def test_sample_shapes_ranges_and_aligned_crops(folders):
    ds = UnpairedDataset.from_config(_cfg(folders))
    for seed in range(5):
        s = ds[(1, 2, seed)]
        assert s["photo"].shape == (3, 32, 32) and s["drawing"].shape == (1, 32, 32)
        assert s["mask"].shape == (32, 32) and s["mask"].dtype == torch.long and s["has_mask"]
        assert s["target"].shape == (1, 32, 32) and s["has_target"]
        assert 0 <= float(s["photo"].min()) and float(s["photo"].max()) <= 1
        # The mask marks the rectangle painted on the photo: after the shared crop/flip, masked pixels have the
        # rectangle's colour and the others the background's, so colour variance inside each region is small.
        photo, inside = s["photo"], s["mask"] > 0
        if 10 < int(inside.sum()) < 32 * 32 - 10:
            core = torch.nn.functional.max_pool2d((~inside).float()[None, None], 5, 1, 2)[0, 0] == 0
            if int(core.sum()) > 4:
                assert float(photo[:, core].std(dim=1).max()) < 0.05


def test_same_key_same_sample_and_bad_file_skipped(folders, caplog):
    ds = UnpairedDataset.from_config(_cfg(folders))
    a, b = ds[(0, 0, 7)], ds[(0, 0, 7)]
    assert torch.equal(a["photo"], b["photo"]) and torch.equal(a["drawing"], b["drawing"])
    (folders / "photos" / "p00.jpg").write_bytes(b"not a jpeg")
    s = ds[(0, 0, 7)]
    assert s["photo_path"].endswith("p01.jpg")
    assert "p00.jpg" in caplog.text


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    s = EpochSampler(10, 4, seed=3)
    s.set_epoch(2)
    first = list(s)
    s.set_epoch(2)
    assert list(s) == first
    assert sorted(p for p, _, _ in first) == list(range(10))
    assert all(0 <= d < 4 for _, d, _ in first)
    s.set_epoch(3)
    assert list(s) != first
    assert list(EpochSampler(10, 4, seed=4)) != list(EpochSampler(10, 4, seed=3))


def test_missing_data_folders_are_user_errors_naming_folder_and_key(folders):
    from linedraw.errors import LinedrawError

    cfg = _cfg(folders)
    cfg.photos = [PhotoSource("photos", masks="nomasks")]
    with pytest.raises(LinedrawError, match=r"nomasks.*data\.photos\[0\]\.masks"):
        collect_sources(cfg)
    cfg = _cfg(folders)
    cfg.drawings = [DrawingSource("drawings", exclude="missing.txt")]
    with pytest.raises(LinedrawError, match=r"missing\.txt.*data\.drawings\[0\]\.exclude"):
        collect_sources(cfg)
