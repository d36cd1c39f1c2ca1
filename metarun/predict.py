"""metarun-predict: classify one's own images with a trained run, few-shot.

    metarun-predict run=outputs/2026-11-22/10-00-00 support=my_support/ query=my_queries/

The support folder holds one folder of K images per class (the class names). The run's model adapts to it exactly
as in evaluation (inner steps for gradient-based methods, prototypes or heads for the others)
and classifies every query image; the predictions are printed and written to a CSV file of
`file,predicted_class,confidence` (confidence: the method's probability of that class).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metarun import checkpoints
from metarun.errors import MetarunError

USAGE = "usage: metarun-predict run=<run folder> support=<folder of class folders> query=<folder or file[,file...]> [out=<csv>] [device=cpu|cuda]"


@dataclass
class Prediction:
    file: str
    predicted_class: str
    confidence: float


EXAMPLES = """examples:
  metarun-predict run=outputs/protonet_omniglot_5w1s/2026-11-22_10-00-00 support=my_support/ query=my_queries/
  metarun-predict run=<run folder> support=<folder of class folders> query=a.png,b.png out=predictions.csv device=cuda"""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print(f"{__doc__.strip()}\n\n{USAGE}\n\n{EXAMPLES}")
        return
    try:
        options = parse_options(args)
        predictions = predict(Path(options["run"]), Path(options["support"]), query_files(options["query"]),
                              options.get("device", "cpu"))
        out = Path(options.get("out", Path(options["run"]) / "predictions.csv"))
        write_csv(predictions, out)
    except MetarunError as error:
        print(f"metarun-predict: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for p in predictions:
        print(f"{p.file}\t{p.predicted_class}\t{p.confidence:.3f}")
    print(f"predictions written to {out}", file=sys.stderr)


def parse_options(args: list[str]) -> dict[str, str]:
    options = dict(arg.split("=", 1) for arg in args if "=" in arg)
    unknown = [arg for arg in args if "=" not in arg] + sorted(set(options) - {"run", "support", "query", "out", "device"})
    missing = [key for key in ("run", "support", "query") if key not in options]
    if unknown or missing:
        raise MetarunError(f"{'unknown argument ' + unknown[0] if unknown else 'missing ' + missing[0] + '=...'}; {USAGE}")
    return options


def predict(run: Path, support: Path, queries: list[Path], device: str = "cpu") -> list[Prediction]:
    """Adapt the run's best model to the support classes and classify every query file."""
    from metarun.build import build_algorithm, resolve_device
    from metarun.episodes import EpisodeBatch
    from metarun.tasks import Classification

    metadata, weights = checkpoints.read_run(run)
    image_format = metadata.get("input")
    if not image_format:
        raise MetarunError(f"the run in {run} was trained on {metadata.get('data')}, which has no images to classify")
    class_names, support_files, support_labels = read_support(support)
    warning = mismatch(support_files + queries, image_format, metadata.get("data"))
    if warning:
        print(f"metarun-predict: warning: {warning}", file=sys.stderr)
    cfg = OmegaConf.create(metadata["config"])
    cfg.backbone.weights = None  # the checkpoint holds the trained weights
    head_ways = cfg.algo.get("ways")
    if head_ways is not None and len(class_names) > head_ways:
        raise MetarunError(f"this {metadata['algorithm']} run has a head of {head_ways} ways; the support folder has {len(class_names)} classes")
    target = resolve_device(device)
    algorithm = build_algorithm(cfg, tuple(image_format["shape"]), Classification(classes=metadata.get("classes")), target,
                                {"algo": metadata["algorithm"]})
    algorithm.load_state_dict(weights)
    algorithm.eval()
    support_x = torch.stack([to_input(f, image_format) for f in support_files])
    query_x = torch.stack([to_input(f, image_format) for f in queries])
    batch = EpisodeBatch(
        support_x=support_x[None].to(target),
        support_y=torch.tensor(support_labels)[None].to(target),
        query_x=query_x[None].to(target),
        query_y=torch.zeros(1, len(queries), dtype=torch.long, device=target),  # unknown; only the scores are read
        classes=torch.arange(len(class_names))[None].to(target),
    )
    with torch.no_grad():
        scores = algorithm.step(batch, train=False).predictions
    probabilities = scores[max(scores)][0, :, : len(class_names)].float().softmax(-1).cpu()  # [M, N]
    confidence, chosen = probabilities.max(-1)
    return [Prediction(str(f), class_names[c], float(p)) for f, c, p in zip(queries, chosen.tolist(), confidence.tolist())]


def read_support(folder: Path) -> tuple[list[str], list[Path], list[int]]:
    """Class names, and every support image with its class index, class by class.

    Classes may have different numbers of images (said on stderr): each method then uses each
    class's own images (prototypes average them, Relation Networks sum them, as in training)."""
    from metarun.data.decoded import image_files

    if not folder.is_dir():
        raise MetarunError(f"support={folder} is not a folder; it must hold one folder of images per class")
    classes = {child.name: image_files(child) for child in sorted(folder.iterdir()) if child.is_dir()}
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise MetarunError(f"the support class folder {folder / empty[0]} has no images (.jpg, .png, ...)")
    if len(classes) < 2:
        raise MetarunError(f"support={folder} must hold at least two class folders of images, found {len(classes)}")
    if len({len(files) for files in classes.values()}) > 1:
        counts = ", ".join(f"{name} {len(files)}" for name, files in classes.items())
        print(f"metarun-predict: note: the support classes have different numbers of images ({counts}); "
              "the run was trained with the same number per class", file=sys.stderr)
    files = [f for class_files in classes.values() for f in class_files]
    labels = [label for label, class_files in enumerate(classes.values()) for _ in class_files]
    return list(classes), files, labels


def mismatch(files: list[Path], image_format: dict, data: str | None) -> str | None:
    """How the user's images differ from the run's training images (colour, or far smaller), in
    one line: predictions then fall toward chance without anything failing."""
    channels, height, width = image_format["shape"]
    grey = colour = small = 0
    for file in files:
        try:
            with Image.open(file) as image:
                small += image.width < width / 2 or image.height < height / 2
                pixels = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.int16)
        except (OSError, UnidentifiedImageError):
            continue  # to_input names the file that cannot be decoded
        is_grey = int(np.abs(pixels - pixels.mean(axis=-1, keepdims=True)).max()) <= 8
        grey, colour = grey + is_grey, colour + (not is_grey)
    trained = f"the run was trained on {data}'s {width}x{height} {'grey' if channels == 1 else 'colour'} images"
    if channels == 1 and colour:
        return f"{colour} of {len(files)} images are in colour; {trained} (colour is dropped, predictions may be near chance)"
    if channels == 3 and grey == len(files):
        return f"the images are grey; {trained} (predictions may be near chance)"
    if small:
        return f"{small} of {len(files)} images are smaller than half of {width}x{height}; {trained}"
    return None


def query_files(query: str) -> list[Path]:
    """A folder's images, or a comma-separated list of image files."""
    from metarun.data.decoded import image_files

    path = Path(query)
    files = image_files(path) if path.is_dir() else [Path(part) for part in query.split(",")]
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        raise MetarunError(f"query={query}: {'no such file ' + str(missing[0]) if missing else 'no images in the folder'}")
    return files


def to_input(file: Path, image_format: dict) -> Tensor:
    """An image file as the run's input: its channels and size, ink inverted where the data was, normalised."""
    channels, height, width = image_format["shape"]
    try:
        image = Image.open(file).convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise MetarunError(f"image {file} cannot be decoded ({type(error).__name__})") from None
    resample = Image.LANCZOS if image_format["ink"] else Image.BILINEAR  # as each data set was decoded
    pixels = np.asarray(image.resize((width, height), resample), dtype=np.uint8)
    if image_format["ink"]:
        pixels = 255 - pixels
    x = torch.from_numpy(pixels.copy()).float().div_(255).view(height, width, -1).permute(2, 0, 1)
    mean = torch.tensor(image_format["mean"]).view(-1, 1, 1)
    std = torch.tensor(image_format["std"]).view(-1, 1, 1)
    return (x - mean) / std


def write_csv(predictions: list[Prediction], out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "predicted_class", "confidence"])
            writer.writerows((p.file, p.predicted_class, f"{p.confidence:.6f}") for p in predictions)
    except OSError as error:
        raise MetarunError(f"cannot write {out} ({error.strerror}); choose another with out=...") from None


if __name__ == "__main__":
    main()
