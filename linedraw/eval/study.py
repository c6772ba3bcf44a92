"""Two-alternative user study: export a self-contained web page of trials, and analyze the answers.

`export_study` picks photos (seeded), makes one trial per photo and method pair with left/right randomised and
recorded, adds attention checks, copies the images beside a static `index.html` (inline JS/CSS, no server or
network), and writes the manifest `trials.csv`. `analyze_study` joins answer CSVs downloaded from the page with
the manifest, drops raters who fail attention checks, and reports the preference per method pair with a 95%
Wilson interval and a two-sided exact binomial test.
"""
from __future__ import annotations

import csv
import html
import io
import itertools
import json
import os
import random
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from linedraw.errors import InvalidFileError, UsageError
from linedraw.eval.stats import binomial_test, wilson_interval
from linedraw.images import write_text_atomic

DEFAULT_QUESTION = "Which line drawing represents the original photo in more detail and more realistically?"
TRIAL_COLUMNS = ["study_id", "trial_id", "kind", "tag", "photo", "left_method", "right_method", "left_drawing",
                 "right_drawing", "expected"]
RESPONSE_COLUMNS = ["study_id", "rater_id", "trial_id", "position", "choice", "rt_ms", "answered_at"]
#: Attention checks put a drawing of the photo against a blank page or against the same method's drawing of
#: another photo; the drawing of the photo is the expected answer.
ATTENTION_KINDS = ("blank", "other-photo")


@dataclass
class Trial:
    """One row of `trials.csv`; `kind` is "pair" or "attention:<check>", `expected` is set for attention checks."""

    study_id: str
    trial_id: str
    kind: str
    tag: str
    photo: str
    left_method: str
    right_method: str
    left_drawing: str
    right_drawing: str
    expected: str = ""


@dataclass
class StudyExport:
    """What `export_study` wrote and what it could not use."""

    out_dir: Path
    trials: list[Trial]
    photos: int
    missing: dict[str, list[str]] = field(default_factory=dict)  # method -> photo keys without its drawing
    errors: list[str] = field(default_factory=list)


def export_study(photos: str | os.PathLike, methods: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike,
                 n: int = 50, seed: int = 0, question: str = DEFAULT_QUESTION, attention: int = 4, tag: str = "",
                 study_id: str | None = None, title: str = "Line drawing study") -> StudyExport:
    """Write `out_dir/index.html`, `out_dir/trials.csv` and `out_dir/images/` for a two-alternative study.

    Photos that have a drawing from every method (matched by relative path, then unique stem) are eligible;
    `n` of them are drawn with `seed`, and each gets one trial per method pair."""
    from linedraw.eval.pairs import index_images, pair_images
    from linedraw.images import ImageError, display_path, open_image, save_image

    if len(methods) < 2:
        raise UsageError("a two-alternative study needs at least two methods")
    out = Path(out_dir)
    study_id = study_id or out.resolve().name
    photo_index = index_images(photos)
    drawings: dict[str, dict[str, Path]] = {}
    missing: dict[str, list[str]] = {}
    for method, directory in methods.items():
        pairing = pair_images(photo_index, index_images(directory))
        drawings[method] = {key: drawing for key, _, drawing in pairing.pairs}
        missing[method] = sorted(key for key in photo_index if key not in drawings[method])
    eligible = sorted(key for key in photo_index if all(key in d for d in drawings.values()))
    if not eligible:
        raise UsageError(f"no photo in {photos} has a drawing from every method")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(eligible, min(n, len(eligible))))

    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    files: dict[tuple[str, str], str] = {}  # (method or "photo", key) -> file name under images/
    sizes: dict[str, tuple[int, int]] = {}

    def copy(source: Path, role: str, key: str, mode: str) -> str | None:
        if (role, key) in files:
            return files[(role, key)]
        name = f"{'p' if role == 'photo' else 'd'}{len(files) + 1:05d}.{'jpg' if mode == 'RGB' else 'png'}"
        try:
            image = open_image(source, mode)
        except ImageError as exc:
            errors.append(str(exc))
            return None
        save_image(image, images_dir / name, **({"quality": 92} if mode == "RGB" else {}))
        sizes[name] = image.size
        files[(role, key)] = name
        return name

    trials: list[Trial] = []
    usable: list[str] = []
    photo_files: dict[str, str] = {}  # photo name shown on the page -> file under images/
    for key in chosen:
        photo_file = copy(photo_index[key][0], "photo", key, "RGB")
        drawing_files = {m: copy(drawings[m][key], m, key, "L") for m in methods}
        if photo_file is None or None in drawing_files.values():
            continue
        usable.append(key)
        for a, b in itertools.combinations(methods, 2):
            left, right = (a, b) if rng.random() < 0.5 else (b, a)
            trials.append(Trial(study_id, "", "pair", tag, display_path(photo_index[key][1]), left, right,
                                f"images/{drawing_files[left]}", f"images/{drawing_files[right]}"))
        photo_files[display_path(photo_index[key][1])] = photo_file

    for i in range(attention if usable else 0):
        check = ATTENTION_KINDS[i % len(ATTENTION_KINDS)]
        key = rng.choice(usable)
        method = rng.choice(list(methods))
        real = files[(method, key)]
        others = [k for k in usable if k != key]
        if check == "blank" or not others:
            check, decoy_method = "blank", "blank"
            decoy = _blank(images_dir, sizes[real])
        else:
            decoy_method, decoy = "other-photo", files[(method, rng.choice(others))]
        left_is_real = rng.random() < 0.5
        left, right = (real, decoy) if left_is_real else (decoy, real)
        trials.append(Trial(study_id, "", f"attention:{check}", tag, display_path(photo_index[key][1]),
                            method if left_is_real else decoy_method, decoy_method if left_is_real else method,
                            f"images/{left}", f"images/{right}", "left" if left_is_real else "right"))

    rng.shuffle(trials)
    for number, trial in enumerate(trials, 1):
        trial.trial_id = f"t{number:04d}"
    write_text_atomic(out / "trials.csv", _trials_csv(trials))
    write_text_atomic(out / "index.html", render_page(trials, photo_files, study_id, question, title))
    return StudyExport(out_dir=out, trials=trials, photos=len(usable),
                       missing={m: keys for m, keys in missing.items() if keys}, errors=errors)


def render_page(trials: Sequence[Trial], photo_files: Mapping[str, str], study_id: str, question: str,
                title: str) -> str:
    """The study page: the template with escaped text and the trials as JSON that cannot end its <script>.

    The page gets no method names or expected answers, only image files and the photo's name."""
    data = {
        "study_id": study_id,
        "question": question,
        "trials": [{"id": t.trial_id, "photo_name": t.photo, "photo": f"images/{photo_files[t.photo]}",
                    "left": t.left_drawing, "right": t.right_drawing} for t in trials],
    }
    template = resources.files("linedraw.eval").joinpath("study_template.html").read_text(encoding="utf-8")
    return (template.replace("{{TITLE}}", html.escape(title))
            .replace("{{COUNT}}", str(len(trials)))
            .replace("{{DATA}}", script_safe_json(data)))


def script_safe_json(data: object) -> str:
    """JSON safe inside a <script> element: `<`, `>` and `&` become \\u escapes (so no `</script>` or `<!--`),
    as do U+2028/U+2029."""
    text = json.dumps(data, ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _blank(images_dir: Path, size: tuple[int, int]) -> str:
    from PIL import Image

    from linedraw.images import save_image

    name = f"blank-{size[0]}x{size[1]}.png"
    if not (images_dir / name).exists():
        save_image(Image.new("L", size, 255), images_dir / name)
    return name


def _trials_csv(trials: Iterable[Trial]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRIAL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for trial in trials:
        writer.writerow(asdict(trial))
    return buffer.getvalue()



# ---- analysis -------------------------------------------------------------------------------------------


def read_trials(paths: Iterable[str | os.PathLike]) -> dict[tuple[str, str], Trial]:
    """Manifests (`trials.csv`) by (study_id, trial_id)."""
    trials: dict[tuple[str, str], Trial] = {}
    for path in paths:
        for row in _read_csv(path, TRIAL_COLUMNS):
            trial = Trial(**{column: row[column] for column in TRIAL_COLUMNS})
            trials[(trial.study_id, trial.trial_id)] = trial
    return trials


@dataclass
class PairPreference:
    """How often `method_a` was preferred over `method_b` (in `tag`, "" = all trials)."""

    tag: str
    method_a: str
    method_b: str
    wins_a: int
    n: int
    rate_a: float
    ci_low: float
    ci_high: float
    p_value: float


@dataclass
class StudyAnalysis:
    """Preferences plus who and what was left out, and why."""

    raters: int
    raters_excluded: int
    excluded_raters: list[str]
    answers_used: int
    duplicate_answers: int
    unknown_trials: int
    invalid_answers: int
    preferences: list[PairPreference]

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def analyze_study(response_paths: Iterable[str | os.PathLike], trials: Mapping[tuple[str, str], Trial],
                  max_attention_errors: int = 0) -> StudyAnalysis:
    """Preference per method pair (and per tag when trials carry tags) from answer CSVs.

    A rater (study_id, rater_id) with more than `max_attention_errors` wrong attention checks is excluded
    entirely. A trial answered twice by the same rater counts once (the last answer)."""
    answers: dict[tuple[str, str], dict[str, str]] = {}  # (study, rater) -> trial_id -> choice
    duplicates = unknown = invalid = 0
    for path in response_paths:
        for row in _read_csv(path, ["study_id", "rater_id", "trial_id", "choice"]):
            if (row["study_id"], row["trial_id"]) not in trials:
                unknown += 1
                continue
            if row["choice"] not in ("left", "right"):
                invalid += 1
                continue
            rater = answers.setdefault((row["study_id"], row["rater_id"]), {})
            duplicates += row["trial_id"] in rater
            rater[row["trial_id"]] = row["choice"]

    excluded: list[str] = []
    wins: dict[tuple[str, str, str], list[int]] = {}
    used = 0
    for (study_id, rater_id), choices in sorted(answers.items()):
        rater_trials = [(trials[(study_id, t)], choice) for t, choice in choices.items()]
        errors = sum(1 for trial, choice in rater_trials if trial.expected and choice != trial.expected)
        if errors > max_attention_errors:
            excluded.append(f"{study_id}/{rater_id}")
            continue
        for trial, choice in rater_trials:
            if trial.kind != "pair":
                continue
            used += 1
            chosen = trial.left_method if choice == "left" else trial.right_method
            a, b = sorted((trial.left_method, trial.right_method))
            for tag in {"", trial.tag}:
                counts = wins.setdefault((tag, a, b), [0, 0])
                counts[0] += chosen == a
                counts[1] += 1

    if len({tag for tag, _, _ in wins}) <= 2:  # one tag (or none): its rows would repeat the overall ones
        wins = {key: value for key, value in wins.items() if key[0] == ""}
    preferences = []
    for (tag, a, b), (wins_a, n) in sorted(wins.items()):
        low, high = wilson_interval(wins_a, n)
        preferences.append(PairPreference(tag, a, b, wins_a, n, wins_a / n, low, high, binomial_test(wins_a, n)))
    return StudyAnalysis(raters=len(answers), raters_excluded=len(excluded), excluded_raters=excluded,
                         answers_used=used, duplicate_answers=duplicates, unknown_trials=unknown,
                         invalid_answers=invalid, preferences=preferences)


def format_analysis(analysis: StudyAnalysis) -> str:
    """A Markdown table of preferences with a summary of exclusions."""
    lines = [f"raters: {analysis.raters} ({analysis.raters_excluded} excluded for failing attention checks), "
             f"answers used: {analysis.answers_used}"]
    for count, what in ((analysis.duplicate_answers, "repeated answers (last one kept)"),
                        (analysis.unknown_trials, "answers to trials not in the manifest (ignored)"),
                        (analysis.invalid_answers, "answers that are not left/right (ignored)")):
        if count:
            lines.append(f"{count} {what}")
    lines += ["", "| tag | A | B | n | A preferred | 95% CI (Wilson) | p (two-sided binomial) |",
              "|---|---|---|---|---|---|---|"]
    for p in analysis.preferences:
        lines.append(f"| {p.tag or 'all'} | {p.method_a} | {p.method_b} | {p.n} | {p.rate_a:.3f} | "
                     f"[{p.ci_low:.3f}, {p.ci_high:.3f}] | {p.p_value:.3g} |")
    return "\n".join(lines)


def _read_csv(path: str | os.PathLike, required: Sequence[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise InvalidFileError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)
