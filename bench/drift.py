"""Which drift verdicts a domain classifier gives on inboxes of 300 images: how often it flags a
shifted inbox (power) and an in-distribution one (false alarms), at several AUC thresholds.

It reads the digits champion (``models/champion/classifier``, after ``dvc repro``) and the drift
reference its card records (``reference.npz``: the backbone's output for 1,000 training scans).
Each inbox is 300 images made from the bundled digit scans, embedded by the same backbone:

- in-distribution, ``--clean`` inboxes of each kind: ``like_inbox``, new scans as the sample's
  inbox makes them (ink lighter by 5 to 20 %, shifted 1 to 3 px), and ``untouched`` scans;
- shifted, ``--shifted`` inboxes of each: ``rot90``, ``invert``, ``blur`` (Gaussian, radius 1.5),
  ``unseen_class`` (capital letters, which training never saw) and ``other_domain`` (crops of the
  bundled photographs at the same size).

The test is :func:`spark_jobs.ml.drift.domain_classifier` (5-fold cross-validated ROC AUC of a logistic
regression telling the inbox from the reference); an inbox is flagged when the AUC exceeds the
threshold.

    python bench/drift.py [--clean 40] [--shifted 20] [--sizes 300 200 100]

Each inbox is also tested on its first 200 and 100 images (``--sizes``): where ``drift.min_rows``
may be set.

Writes ``bench/results/drift.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
from ingest_throughput import write_result  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter, ImageFont  # noqa: E402

from spark_jobs.ml import cards, drift, models  # noqa: E402
from spark_jobs.sample import SampleConfig, digit_images  # noqa: E402

CHAMPION = REPO / "models" / "champion" / "classifier"
SIZE = 32
THRESHOLDS = (0.55, 0.9, 0.95, 0.97, 0.99)
CLEAN = ("like_inbox", "untouched")
SHIFTED = ("rot90", "invert", "blur", "unseen_class", "other_domain")


def scans() -> list[np.ndarray]:
    return [np.asarray(image) for _label, _index, image in digit_images(SampleConfig(image_size=SIZE))]


def like_inbox(scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new scan as the sample's inbox makes them: lighter ink, moved right by 1 to 3 px."""
    lighter = 255.0 - (255.0 - scan.astype(np.float32)) * rng.uniform(0.8, 0.95)
    shift = int(rng.integers(1, 4))
    moved = np.full_like(lighter, 255.0)
    moved[:, shift:] = lighter[:, :-shift]
    return moved.round().astype(np.uint8)


def letter(rng: np.random.Generator) -> np.ndarray:
    """A capital letter, dark on white, at a random place, scanned at 8 x 8 as the digits were: a
    class the digits model never saw."""
    canvas = Image.new("L", (SIZE, SIZE), 255)
    font = ImageFont.load_default(size=int(rng.integers(34, 40)))
    char = chr(ord("A") + int(rng.integers(26)))
    at = (int(rng.integers(2, 6)), int(rng.integers(-6, -2)))
    ImageDraw.Draw(canvas).text(at, char, fill=0, font=font, stroke_width=2, stroke_fill=0)
    # through 8 x 8, as the digit scans were: the same blur, another shape
    return np.asarray(canvas.resize((8, 8), Image.BOX).resize((SIZE, SIZE), Image.BICUBIC))


def photo_crop(photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    pixels = photos[int(rng.integers(len(photos)))]
    h, w = pixels.shape
    side = int(rng.integers(SIZE, min(h, w)))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return np.asarray(Image.fromarray(pixels[y : y + side, x : x + side]).resize((SIZE, SIZE), Image.BICUBIC))


INBOX = 300  # images an inbox holds; smaller sizes are its first images


def inbox(kind: str, rng: np.random.Generator, digits: list[np.ndarray], photos: list[np.ndarray]) -> np.ndarray:
    """:data:`INBOX` grey images of ``kind``."""
    out = []
    for _ in range(INBOX):
        scan = digits[int(rng.integers(len(digits)))]
        if kind == "untouched":
            image = scan
        elif kind == "unseen_class":
            image = letter(rng)
        elif kind == "other_domain":
            image = photo_crop(photos, rng)
        else:
            image = like_inbox(scan, rng)
            if kind == "rot90":
                image = np.rot90(image).copy()
            elif kind == "invert":
                image = 255 - image
            elif kind == "blur":
                image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.5)))
        out.append(image)
    return np.stack(out)


def measure(net, card, reference, counts: dict[str, int], sizes: list[int]) -> dict[int, dict[str, list[float]]]:
    """The domain classifier's AUC for every inbox of every kind, on its first ``size`` images for
    each of ``sizes`` (the same inboxes, cut shorter)."""
    import torch

    from tests.near_duplicate_corpus import photographs

    digits = scans()
    photos = [np.asarray(p.convert("L")) for _name, p in photographs()]
    rows: dict[int, dict[str, list[float]]] = {n: {} for n in sizes}
    for kind in (*CLEAN, *SHIFTED):
        for k in range(counts[kind]):
            rng = np.random.default_rng(10_000 * (1 + (*CLEAN, *SHIFTED).index(kind)) + k)
            grey = inbox(kind, rng, digits, photos)
            with torch.inference_mode():
                x = models.to_tensor(grey[..., None].repeat(3, -1))
                vectors = models.embedded(net, card.architecture, x).embedding.numpy()
            for n in sizes:
                auc = drift.domain_classifier(reference, vectors[:n], seed=k).auc
                rows[n].setdefault(kind, []).append(round(auc, 4))
        print(kind, {n: rows[n][kind] for n in sizes}, flush=True)
    return rows


def summary(rows: dict[str, list[float]]) -> dict:
    flagged = {
        str(t): {kind: round(float(np.mean(np.asarray(v) > t)), 3) for kind, v in rows.items()} for t in THRESHOLDS
    }
    return {
        "auc": {kind: {"min": min(v), "median": float(np.median(v)), "max": max(v)} for kind, v in rows.items()},
        "flagged_share_by_threshold": flagged,
        "auc_by_inbox": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", type=int, default=40)
    parser.add_argument("--shifted", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 200, 100])
    args = parser.parse_args()
    card = cards.read_card(CHAMPION)
    reference, _ = drift.read_reference(CHAMPION, card.reference)
    net = models.load_weights(
        models.build(card.architecture, card.arch), (CHAMPION / cards.WEIGHTS).read_bytes(), "champion"
    )
    counts = {kind: args.clean if kind in CLEAN else args.shifted for kind in (*CLEAN, *SHIFTED)}
    sizes = sorted(set(args.sizes), reverse=True)
    if max(sizes) > INBOX:
        parser.error(f"--sizes: at most {INBOX} images an inbox")
    started = time.perf_counter()
    rows = measure(net, card, reference, counts, sizes)
    write_result(
        "drift.json",
        {
            "command": "python bench/drift.py " + " ".join(sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "model": card.version,
            "reference": {"rows": card.reference.rows, "layer": card.reference.layer},
            "inbox_images": INBOX,
            "test": "domain classifier: 5-fold cross-validated ROC AUC of a logistic regression",
            "seconds": round(time.perf_counter() - started, 1),
            **summary(rows[INBOX] if INBOX in rows else rows[sizes[0]]),
            "by_inbox_size": {str(n): summary(rows[n]) for n in sizes},
        },
    )


if __name__ == "__main__":
    main()
