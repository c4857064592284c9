"""Fine-tuning a pretrained backbone vs training from scratch, on data the backbone never saw.

The backbone stage trains on the same labelled digits the cnn is evaluated on, so a comparison
there is decided in advance. Here the classes are split instead:

1. **pretrain** the project's cnn (``small_cnn`` + a head) on digits 0-4 (their train split, the
   best val epoch kept) and keep its backbone's state dict, as ``train.cnn.init`` reads one;
2. on digits 5-9, with only ``--fraction`` (10 %) of their train split (and as many val images),
   train the same cnn twice with the same epochs, seed and optimiser: **from scratch**, and
   **fine-tuned** from that backbone (a new head; ``--freeze-epochs`` head-only epochs; the
   backbone at ``--backbone-lr``);
3. report each one's accuracy on the **whole test split of 5-9** and its training time.

Every run is the project's one training loop (:func:`spark_jobs.ml.training.fit`, one rank, in
this process: the loop ``train`` hands to TorchDistributor), on the ingested digits of the default
pipeline (``make run`` first: ``data/ingest``). ``--seeds`` pairs (scratch and fine-tuned share
each seed) give medians; times are medians too, this machine's absolute times vary.

    python bench/finetune.py [--seeds 5] [--fraction 0.1] [--epochs 30] [--label _variant]

The defaults (30 epochs, the backbone at the head's learning rate, no frozen epoch) were chosen on
the val split of 5-9 (``best_val``) among four settings of 3 seeds each; the test split was not
looked at to choose them (bench/README.md lists the others).

Writes ``bench/results/finetune_digits_0-4_to_5-9.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from ingest_throughput import write_result  # noqa: E402

from spark_jobs.core.tables import published  # noqa: E402
from spark_jobs.ml import models, training  # noqa: E402
from spark_jobs.ml.cards import InitRecord  # noqa: E402

PRETRAIN = [str(d) for d in range(5)]
TARGET = [str(d) for d in range(5, 10)]


@dataclass(frozen=True)
class Run:
    """One training run of the benchmark: its spec and the folder of its checkpoints and weights."""

    spec: training.TrainSpec
    work: Path

    @property
    def weights(self) -> Path:
        return self.work / "model.pt"


def spec(images: str, classes: list[str], hp: dict[str, Any], seed: int, work: Path, **extra: Any) -> Run:
    """A run of the training loop for the cnn on ``classes`` (the other digits left out)."""
    return Run(
        training.TrainSpec(
            kind="cnn",
            model=training.ModelSpec(
                architecture="small_cnn_classifier",
                args={"width": hp["width"], "classes": len(classes), "dropout": hp["dropout"]},
            ),
            hp=training.Hyper.model_validate({k: v for k, v in hp.items() if k in training.Hyper.model_fields}),
            classes=classes,
            exclude_classes=[str(d) for d in range(10) if str(d) not in classes],
            table=images,
            seed=seed,
            threads=2,
            data="bench",
            **extra,
        ),
        work,
    )


def test_accuracy(run: Run) -> float:
    """The trained model's accuracy on the whole test split of its classes."""
    import torch

    s = run.spec
    ids = training.shard_ids(s.table, "test", 0, 1, s.exclude_classes, pad=False)
    pixels, labels = training.read_rows(s.table, ids)
    net = models.build(s.model.architecture, s.model.args)
    net.load_state_dict(models.load_tensors(run.weights))
    with torch.inference_mode():
        predicted = net.eval()(models.to_tensor(pixels)).argmax(1)
    index = {c: i for i, c in enumerate(s.classes)}
    return float((predicted == torch.tensor([index[v] for v in labels])).float().mean())


def fit(run: Run) -> dict[str, Any]:
    start = time.perf_counter()
    result = training.fit(run.spec, str(run.work / "ckpt"), str(run.weights))
    return {
        "test_accuracy": round(test_accuracy(run), 4),
        "best_val": round(result["best_val"], 4) if result["best_val"] is not None else None,
        "best_epoch": result["best_epoch"],
        "train_rows": result["train_rows"],
        "seconds": round(time.perf_counter() - start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO / "data"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=0.1, help="share of 5-9's train split to fine-tune on")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of both the scratch and fine-tuned runs")
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--freeze-epochs", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=0.003)
    parser.add_argument("--backbone-lr", type=float, default=0.003)
    parser.add_argument("--label", default="", help="suffix of the result file (a variant)")
    args = parser.parse_args()
    import torch

    images = str((published(args.data_root, "ingest") / "images.parquet").absolute())
    hp = {
        "width": args.width,
        "dropout": 0.2,
        "batch_size": 32,
        "learning_rate": args.learning_rate,
        "weight_decay": 0.0001,
        "augment_shift": 2,
    }
    target_train = len(training.shard_ids(images, "train", 0, 1, PRETRAIN, pad=False))
    limit = max(1, round(args.fraction * target_train))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pre = spec(images, PRETRAIN, hp | {"epochs": args.pretrain_epochs}, 0, work / "pre")
        pretrained = fit(pre)
        net = models.build(pre.spec.model.architecture, pre.spec.model.args)
        net.load_state_dict(models.load_tensors(pre.weights))
        backbone = work / "backbone.pt"
        torch.save(net[0].state_dict(), backbone)  # what train.cnn.init reads
        init = InitRecord(
            uri=backbone.as_uri(),
            sha256=hashlib.sha256(backbone.read_bytes()).hexdigest(),
            architecture="small_cnn",
            width=args.width,
        )
        pairs = []
        for seed in range(args.seeds):
            small = hp | {"epochs": args.epochs}
            scratch = fit(spec(images, TARGET, small, seed, work / f"s{seed}", max_rows=limit))
            tuned_hp = small | {"freeze_epochs": args.freeze_epochs, "backbone_learning_rate": args.backbone_lr}
            tuned = fit(spec(images, TARGET, tuned_hp, seed, work / f"f{seed}", max_rows=limit, init=init))
            pairs.append({"seed": seed, "scratch": scratch, "fine_tuned": tuned})
            print(f"seed {seed}: val: scratch {scratch['best_val']}, fine-tuned {tuned['best_val']}", flush=True)

    def median(which: str, key: str) -> float:
        return round(statistics.median(p[which][key] for p in pairs), 4)

    test_rows = len(training.shard_ids(images, "test", 0, 1, PRETRAIN, pad=False))
    better = sum(p["fine_tuned"]["test_accuracy"] > p["scratch"]["test_accuracy"] for p in pairs)
    write_result(
        f"finetune_digits_0-4_to_5-9{args.label}.json",
        {
            "what": "cnn on digits 5-9 from scratch vs fine-tuned from a backbone pretrained on digits 0-4",
            "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
            "settings": vars(args) | {"hp": hp, "fine_tune_train_images": limit, "target_train_images": target_train},
            "pretrain": pretrained | {"classes": PRETRAIN},
            "test_images": test_rows,
            "median": {
                "scratch_best_val": median("scratch", "best_val"),
                "fine_tuned_best_val": median("fine_tuned", "best_val"),
                "scratch_test_accuracy": median("scratch", "test_accuracy"),
                "fine_tuned_test_accuracy": median("fine_tuned", "test_accuracy"),
                "scratch_seconds": median("scratch", "seconds"),
                "fine_tuned_seconds": median("fine_tuned", "seconds"),
            },
            "fine_tuned_better_in": better,
            "runs": pairs,
        },
    )


if __name__ == "__main__":
    main()
