"""`linedraw study export|analyze`: a two-alternative user study as a static web page, and its statistics."""
from __future__ import annotations

import argparse

from linedraw.commands.options import add_json, add_output, emit


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw study` with `export` and `analyze`."""
    parser = subparsers.add_parser("study", help="two-alternative user study: export a web page, analyze answers")
    study_sub = parser.add_subparsers(dest="study_command", metavar="STUDY_COMMAND", required=True)

    export = study_sub.add_parser(
        "export", help="write STUDY/index.html (self-contained), STUDY/images/ and the manifest STUDY/trials.csv",
        description="Pick photos that have a drawing from every method (seeded), make one trial per photo and "
                    "method pair with left/right randomised, add attention checks, and write a static page that "
                    "shows one trial at a time, times each answer and lets the participant download a CSV.")
    export.add_argument("--photos", required=True, help="folder of photos")
    export.add_argument("--method", action="append", required=True, metavar="NAME=DIR",
                        help="a method's drawings, named by the photos' relative paths or stems (repeat; >= 2)")
    add_output(export, "output folder", metavar="STUDY", old_out=True)
    export.add_argument("--n", type=int, default=50, help="number of photos (default: 50)")
    export.add_argument("--seed", type=int, default=0,
                        help="seed of the photo choice and left/right order (default: 0)")
    export.add_argument("--question", default=None, help="the question asked (default: the seed paper's)")
    export.add_argument("--attention", type=int, default=4, help="attention-check trials (default: 4)")
    export.add_argument("--tag", default="", help="dataset tag stored with every trial (analyzed separately)")
    export.add_argument("--study-id", default=None, help="identifier in answers (default: the folder name)")
    export.add_argument("--title", default="Line drawing study", help="page title (default: %(default)r)")
    export.set_defaults(func=run_export)

    analyze = study_sub.add_parser(
        "analyze", help="preference per method pair with 95%% Wilson intervals and two-sided binomial tests",
        description="Join answer CSVs downloaded from study pages with their manifests; raters who fail more "
                    "attention checks than allowed are excluded and counted.")
    analyze.add_argument("responses", nargs="+", metavar="RESPONSES.csv")
    analyze.add_argument("--trials", action="append", required=True, metavar="STUDY/trials.csv",
                         help="manifest(s) of the studies answered (repeat for several studies)")
    analyze.add_argument("--max-attention-errors", type=int, default=0,
                         help="wrong attention checks a rater may have and still count (default: 0)")
    add_json(analyze, "the analysis")
    analyze.set_defaults(func=run_analyze)


def parse_methods(items: list[str]) -> dict[str, str]:
    """`NAME=DIR` strings -> {name: dir}, in order; names must be unique and non-empty."""
    from linedraw.errors import UsageError

    methods: dict[str, str] = {}
    for item in items:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise UsageError(f"--method {item!r}: expected NAME=DIR")
        if name in methods:
            raise UsageError(f"--method {name!r} given twice")
        methods[name] = directory
    return methods


def run_export(args: argparse.Namespace) -> int:
    from linedraw.eval.study import DEFAULT_QUESTION, export_study

    result = export_study(args.photos, parse_methods(args.method), args.output, n=args.n, seed=args.seed,
                          question=args.question or DEFAULT_QUESTION, attention=args.attention, tag=args.tag,
                          study_id=args.study_id, title=args.title)
    checks = sum(t.kind != "pair" for t in result.trials)
    print(f"{result.out_dir / 'index.html'}: {len(result.trials)} trials ({result.photos} photos, "
          f"{checks} attention checks); manifest {result.out_dir / 'trials.csv'}")
    for method, keys in result.missing.items():
        print(f"{len(keys)} photo(s) have no drawing from {method!r} and were not used: {', '.join(keys[:10])}"
              + (" ..." if len(keys) > 10 else ""))
    for error in result.errors:
        print(f"error: {error}")
    return 1 if result.errors else 0


def run_analyze(args: argparse.Namespace) -> int:
    from linedraw.eval.study import analyze_study, format_analysis, read_trials

    analysis = analyze_study(args.responses, read_trials(args.trials), args.max_attention_errors)
    emit(args.json, analysis.to_dict(), [format_analysis(analysis)])
    return 0 if analysis.preferences else 1
