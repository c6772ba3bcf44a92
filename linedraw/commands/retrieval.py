"""`linedraw retrieval train` (a sketch-aware embedder) and `linedraw retrieval protocol` (its zero-shot table)."""
from __future__ import annotations

import argparse
import sys


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("embedder training")
    group.add_argument("--base", default="efficientnet-lite0",
                       help="base image encoder: efficientnet-lite0 (offline), openclip:MODEL:PRETRAINED, "
                            "timm:MODEL[:WEIGHTS] (default: %(default)s)")
    group.add_argument("--unfreeze", action="append", default=[], metavar="PATTERN",
                       help="also train base parameters matching this fnmatch pattern (repeatable), e.g. "
                            "'model.blocks.6.*' for EfficientNet-Lite0 or 'model.visual.transformer.resblocks.11.*' "
                            "for an open_clip ViT; default: only the projection head trains (fast on a CPU)")
    group.add_argument("--loss", choices=("supcon", "triplet"), default="supcon",
                       help="supcon: supervised InfoNCE over classes across domains; triplet: batch-hard triplet "
                            "(default: %(default)s)")
    group.add_argument("--instance-weight", type=float, default=0.5,
                       help="weight of the same loss over instance pairs (sketch <photo-id>-N vs its photo)")
    group.add_argument("--temperature", type=float, default=0.1,
                       help="softmax temperature of the supcon loss (default: %(default)s)")
    group.add_argument("--margin", type=float, default=0.2, help="triplet margin (cosine distance)")
    group.add_argument("--steps", type=int, default=500, help="optimizer steps in all (default: %(default)s)")
    group.add_argument("--classes-per-batch", type=int, default=16, help="P of the P x K batches")
    group.add_argument("--samples-per-class", type=int, default=4, help="K of the P x K batches")
    group.add_argument("--lr", type=float, default=1e-3,
                       help="peak AdamW learning rate, after the warm-up (default: %(default)s)")
    group.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: %(default)s)")
    group.add_argument("--embed-dim", type=int, default=512,
                       help="size of the embedding the head outputs (default: %(default)s)")
    group.add_argument("--hidden-dim", type=int, default=1024,
                       help="hidden width of the projection head (default: %(default)s)")
    group.add_argument("--views", type=int, default=4,
                       help="augmented views per image in the cached feature bank (head-only training)")
    group.add_argument("--no-augment", action="store_true", help="train on clean images only")
    group.add_argument("--batch-size", type=int, default=32, help="images per forward pass when embedding")
    group.add_argument("--save-every", type=int, default=500, help="steps between resume points")
    group.add_argument("--seed", type=int, default=0,
                       help="seed of the head's initial weights, the batches and the augmentations (default: 0)")


def _train_config(args: argparse.Namespace, **paths):
    from linedraw.retrieval.train_embedder import EmbedderTrainConfig

    return EmbedderTrainConfig(
        base=args.base, unfreeze=args.unfreeze, loss=args.loss, instance_weight=args.instance_weight,
        temperature=args.temperature, margin=args.margin, steps=args.steps,
        classes_per_batch=args.classes_per_batch, samples_per_class=args.samples_per_class, lr=args.lr,
        weight_decay=args.weight_decay, embed_dim=args.embed_dim, hidden_dim=args.hidden_dim, views=args.views,
        augment=not args.no_augment, batch_size=args.batch_size, save_every=args.save_every, seed=args.seed,
        **paths,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `linedraw retrieval {train,protocol}`."""
    from linedraw.commands.options import add_device, add_output, share

    parser = subparsers.add_parser("retrieval", help="train and test a sketch-aware embedder for retrieval")
    sub = parser.add_subparsers(dest="retrieval_command", metavar="RETRIEVAL_COMMAND", required=True)

    train = sub.add_parser(
        "train", help="fine-tune an embedder so sketches land near drawings (or photos) of their class",
        description="Train a projection head (and optionally the last base layers) with sketches as queries and "
                    "generated drawings of photos (or the raw photos, --raw) as the gallery. Both trees hold "
                    "class folders; a sketch <photo-id>-N.png pairs with photo <photo-id>.*. The output dir "
                    "is an embedder for `--embedder` in index build / search / eval retrieval; rerunning the "
                    "same command resumes.",
    )
    train.add_argument("--sketches", required=True, help="sketch tree: SKETCHES/<class>/<photo-id>-N.png")
    train.add_argument("--photos", required=True, help="photo tree: PHOTOS/<class>/<photo-id>.jpg")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--drawings", help="precomputed drawings mirroring the photo tree (<class>/<photo-id>.png)")
    source.add_argument("--checkpoint",
                        help="drawing checkpoint to convert the photos with (cached in OUTPUT/drawings)")
    source.add_argument("--raw", action="store_true", help="train against the raw photos instead of drawings")
    train.add_argument("-o", "--output", required=True, help="output dir: the embedder, feature cache, resume state")
    train.add_argument("--classes", help="train on these classes only: a protocol split.json ('train') or a text "
                                         "file with one class per line")
    train.add_argument("--device", default="auto", help="for converting photos (training follows accelerate)")
    train.add_argument("--draw-size", type=int, default=256,
                       help="px the photos are drawn at with --checkpoint (default: %(default)s)")
    _add_training_options(train)
    train.set_defaults(func=_run_train)

    protocol = sub.add_parser(
        "protocol", help="zero-shot table: base vs trained embedder, raw photos vs drawings, on unseen classes",
        description="Split the classes of a Sketchy-style tree (DATA/photo/<class>, DATA/sketch/<class>) with a "
                    "seed, train one embedder on drawings and one on raw photos of the training classes, and "
                    "report on the unseen classes (sketches as queries) mAP@all, P@25 (category level, "
                    "non-interpolated, as in the ZS-SBIR literature) and acc@1/acc@10 (instance level: the "
                    "sketch's own photo). Writes split.json, results.json, results.md; rerunning resumes.",
    )
    protocol.add_argument("--data", required=True, help="dataset root with photo/ and sketch/")
    source = protocol.add_mutually_exclusive_group(required=True)
    source.add_argument("--drawings", help="precomputed drawings mirroring DATA/photo")
    source.add_argument("--checkpoint", help="drawing checkpoint to convert DATA/photo with (cached in OUTPUT)")
    add_output(protocol, "folder for split.json, the drawings, both embedders, results.md and results.json "
                         "(a rerun resumes there)", metavar="DIR")
    protocol.add_argument("--unseen", type=int, default=10, help="number of held-out classes (default: %(default)s)")
    add_device(protocol)
    protocol.add_argument("--draw-size", type=int, default=256,
                          help="px the photos are drawn at with --checkpoint (default: %(default)s)")
    protocol.add_argument("--fuse-weight", type=share, metavar="W",
                          help="the drawing's weight in the fused rows, W * cos(drawing) + (1 - W) * cos(photo), "
                               "as a two-view index ranks (default: 0.6, the index default)")
    _add_training_options(protocol)
    protocol.set_defaults(func=_run_protocol)


def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from linedraw.retrieval.protocol import convert_tree, read_class_list
    from linedraw.retrieval.train_embedder import train_embedder

    classes = read_class_list(args.classes) if args.classes else None
    errors: list[str] = []
    if args.raw:
        gallery, kind = args.photos, "photos"
    elif args.drawings:
        gallery, kind = args.drawings, "drawings"
    else:
        root, errors = convert_tree(Path(args.photos), Path(args.output) / "drawings", args.checkpoint,
                                    classes, device=args.device, size=args.draw_size)
        gallery, kind = str(root), "drawings"
    config = _train_config(args, sketches=args.sketches, gallery=gallery, gallery_kind=kind,
                           output_dir=args.output, classes=classes)
    _, bad = train_embedder(config)
    errors += bad
    print(f"embedder written to {args.output} (use it as --embedder {args.output})")
    if errors:
        print(f"{len(errors)} file(s) could not be read and were left out", file=sys.stderr)
    return 1 if errors else 0


def _run_protocol(args: argparse.Namespace) -> int:
    from linedraw.retrieval.protocol import ProtocolConfig, format_table, run_protocol

    config = ProtocolConfig(
        data=args.data, output_dir=args.output, drawings=args.drawings, checkpoint=args.checkpoint,
        unseen=args.unseen, seed=args.seed, device=args.device, draw_size=args.draw_size,
        train=_train_config(args, sketches="", gallery="", output_dir=""),
        **({} if args.fuse_weight is None else {"fuse_weight": args.fuse_weight}),
    )
    results, errors = run_protocol(config)
    print(format_table(results["rows"]))
    print(f"(unseen classes: {len(results['split']['unseen'])}, chance mAP ~{results['chance_mAP']:.3f}; "
          f"drawings from {results['drawings']}; written to {args.output}/results.md)")
    return 1 if errors else 0
