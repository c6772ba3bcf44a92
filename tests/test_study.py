"""User study export (manifest, randomisation, escaping) and analysis against hand-computed numbers."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from linedraw.cli import main
from linedraw.eval.study import analyze_study, read_trials, script_safe_json

XSS_NAME = "<img src=x onerror=alert(1)>"


def make_study_inputs(root, names=("cat", "dog", XSS_NAME, "tree", "boat")):
    """Photos plus two methods' drawings (a black bar on white); 'b' lacks the last photo's drawing."""
    photos, a, b = root / "photos", root / "a", root / "b"
    for folder in (photos, a, b):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(photos / f"{name}.jpg")
        for folder, offset in ((a, 2), (b, 16)):
            if folder is b and i == len(names) - 1:
                continue
            drawing = np.full((24, 32), 255, dtype=np.uint8)
            drawing[:, (offset + i) % 32] = 0
            Image.fromarray(drawing).save(folder / f"{name}.png")
    return photos, a, b


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_export_writes_manifest_page_and_images(tmp_path, capsys):
    photos, a, b = make_study_inputs(tmp_path)
    study = tmp_path / "study"
    question = "Which is better? </script><script>alert(2)</script>"
    code = main(["study", "export", "--photos", str(photos), "--method", f"ours={a}", "--method", f"base={b}",
                 "-o", str(study), "--n", "3", "--attention", "2", "--question", question,
                 "--title", "<b>bold</b> & co", "--seed", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "1 photo(s) have no drawing from 'base'" in out and "boat" in out

    trials = read_csv(study / "trials.csv")
    pairs = [t for t in trials if t["kind"] == "pair"]
    checks = [t for t in trials if t["kind"].startswith("attention:")]
    assert len(pairs) == 3 and len(checks) == 2
    assert [t["trial_id"] for t in trials] == [f"t{i:04d}" for i in range(1, 6)]
    assert all({t["left_method"], t["right_method"]} == {"ours", "base"} for t in pairs)
    assert {c["kind"] for c in checks} == {"attention:blank", "attention:other-photo"}
    assert all(c["expected"] in ("left", "right") for c in checks)
    assert all(t["photo"] != "boat.jpg" for t in trials)
    for t in trials:
        assert (study / t["left_drawing"]).is_file() and (study / t["right_drawing"]).is_file()

    page = (study / "index.html").read_text()
    assert XSS_NAME not in page and "</script><script>alert(2)" not in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page and "<b>bold" not in page
    data = json.loads(page.split('id="study-data">', 1)[1].split("</script>", 1)[0])
    assert data["question"] == question
    assert "ours" not in json.dumps(data) and "expected" not in json.dumps(data)  # blind: no method names
    assert len(data["trials"]) == 5
    for trial in data["trials"]:
        assert (study / trial["photo"]).is_file()


def test_export_is_seeded_and_randomises_sides(tmp_path):
    names = [f"p{i:02d}" for i in range(30)]
    photos, a, b = make_study_inputs(tmp_path, names)

    def export(seed, out):
        assert main(["study", "export", "--photos", str(photos), "--method", f"ours={a}", "--method", f"base={b}",
                     "-o", str(tmp_path / out), "--n", "25", "--seed", str(seed), "--study-id", "s"]) == 0
        return read_csv(tmp_path / out / "trials.csv")

    first, again, other = export(0, "s1"), export(0, "s2"), export(1, "s3")
    assert first == again
    assert first != other
    lefts = [t["left_method"] for t in first if t["kind"] == "pair"]
    assert 5 <= lefts.count("ours") <= 20  # both sides occur


def test_script_safe_json_round_trips_without_markup():
    data = {"name": "</script><!-- & \u2028", "n": [1, 2]}
    text = script_safe_json(data)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == data


def write_csv(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


TRIAL_COLUMNS = ["study_id", "trial_id", "kind", "tag", "photo", "left_method", "right_method", "left_drawing",
                 "right_drawing", "expected"]
RESPONSE_COLUMNS = ["study_id", "rater_id", "trial_id", "position", "choice", "rt_ms", "answered_at"]


def trial(tid, left, right, tag="x", kind="pair", expected=""):
    return {"study_id": "s", "trial_id": tid, "kind": kind, "tag": tag, "photo": f"{tid}.jpg",
            "left_method": left, "right_method": right, "left_drawing": "l.png", "right_drawing": "r.png",
            "expected": expected}


def answer(rater, tid, choice):
    return {"study_id": "s", "rater_id": rater, "trial_id": tid, "position": 1, "choice": choice, "rt_ms": 900,
            "answered_at": "2024-01-01T00:00:00Z"}


def test_analyze_hand_computed(tmp_path):
    # 6 trials 'ours' vs 'base' tagged x, 4 tagged y, sides alternating; 2 attention checks (expected left)
    trials = [trial(f"t{i}", "ours", "base") if i % 2 else trial(f"t{i}", "base", "ours") for i in range(6)]
    trials += [trial(f"u{i}", "ours", "base", tag="y") for i in range(4)]
    trials += [trial("c1", "ours", "blank", kind="attention:blank", expected="left"),
               trial("c2", "base", "other-photo", kind="attention:other-photo", expected="left")]
    write_csv(tmp_path / "trials.csv", trials, TRIAL_COLUMNS)

    def pick(t, method):
        return "left" if t["left_method"] == method else "right"

    # rater r1: ours in 5 of 6 x-trials, 2 of 4 y-trials, checks right; answers t0 twice (last: ours)
    r1 = [answer("r1", "t0", pick(trials[0], "base"))]
    r1 += [answer("r1", t["trial_id"], pick(t, "ours" if i < 5 else "base")) for i, t in enumerate(trials[:6])]
    r1 += [answer("r1", t["trial_id"], pick(t, "ours" if i < 2 else "base")) for i, t in enumerate(trials[6:10])]
    r1 += [answer("r1", "c1", "left"), answer("r1", "c2", "left")]
    # rater r2: ours in 1 of 2, x-trials; fails a check -> excluded entirely
    r2 = [answer("r2", "t1", pick(trials[1], "ours")), answer("r2", "t2", pick(trials[2], "base")),
          answer("r2", "c1", "right")]
    # rater r3: ours in both answered y-trials; an unknown trial and an invalid choice are ignored
    r3 = [answer("r3", "u0", "left"), answer("r3", "u1", "left"), answer("r3", "zz", "left"),
          answer("r3", "u2", "maybe")]
    write_csv(tmp_path / "a.csv", r1 + r2, RESPONSE_COLUMNS)
    write_csv(tmp_path / "b.csv", r3, RESPONSE_COLUMNS)

    analysis = analyze_study([tmp_path / "a.csv", tmp_path / "b.csv"], read_trials([tmp_path / "trials.csv"]))
    assert analysis.raters == 3 and analysis.raters_excluded == 1 and analysis.excluded_raters == ["s/r2"]
    assert analysis.duplicate_answers == 1 and analysis.unknown_trials == 1 and analysis.invalid_answers == 1
    assert analysis.answers_used == 12
    rows = {p.tag: p for p in analysis.preferences}
    assert set(rows) == {"", "x", "y"}
    overall = rows[""]
    # pairs are named in sorted order: A = base, B = ours; base won 1 + 2 of 6 + 4 + 2 = 12
    assert (overall.method_a, overall.method_b, overall.wins_a, overall.n) == ("base", "ours", 3, 12)
    assert overall.rate_a == pytest.approx(0.25)
    # two-sided exact p for 3 of 12: 2 * (1 + 12 + 66 + 220) / 4096
    assert overall.p_value == pytest.approx(2 * 299 / 4096)
    z = 1.959963984540054
    centre = (0.25 + z * z / 24) / (1 + z * z / 12)
    half = z * (0.25 * 0.75 / 12 + z * z / 576) ** 0.5 / (1 + z * z / 12)
    assert overall.ci_low == pytest.approx(centre - half) and overall.ci_high == pytest.approx(centre + half)
    assert (rows["x"].wins_a, rows["x"].n) == (1, 6)
    assert (rows["y"].wins_a, rows["y"].n) == (2, 6)


def test_analyze_cli_prints_markdown_and_json(tmp_path, capsys):
    trials = [trial(f"t{i}", "ours", "base", tag="") for i in range(10)]
    write_csv(tmp_path / "trials.csv", trials, TRIAL_COLUMNS)
    write_csv(tmp_path / "r.csv", [answer("r", f"t{i}", "left" if i < 7 else "right") for i in range(10)],
              RESPONSE_COLUMNS)
    code = main(["study", "analyze", str(tmp_path / "r.csv"), "--trials", str(tmp_path / "trials.csv"),
                 "--json", str(tmp_path / "out.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| all | base | ours | 10 | 0.300 | [0.108, 0.603] | 0.344 |" in out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["preferences"][0]["p_value"] == pytest.approx(352 / 1024)


def test_analyze_names_a_file_without_the_columns(tmp_path, capsys):
    (tmp_path / "trials.csv").write_text("a,b\n1,2\n")
    code = main(["study", "analyze", str(tmp_path / "trials.csv"), "--trials", str(tmp_path / "trials.csv")])
    assert code == 2
    assert f"{tmp_path / 'trials.csv'}: missing column(s)" in capsys.readouterr().err
