"""Peak memory of scoring a video against scoring an image batch, in the Python worker that does it.

Each case runs in a fresh ``python`` (what a Spark executor's Python worker is): it builds the
scan's head for a trained cnn (``--model``, default ``models/cnn`` of ``dvc repro``), notes its
peak RSS, then runs :func:`spark_jobs.scoring.scan.scan_batch` once on

- ``images``: one slice of ``--images`` 1280x720 JPEGs (``spark.arrow_max_records_per_batch``
  files: the most a task's slice holds), the same pictures as the video's frames;
- ``video``: one ``--frames``-frame 1280x720 MPEG-4 video at ``score.video.every_nth: 1``;
- ``video_full_frames``: the same video the way the scan decoded it before issue 32, every sampled
  frame held at full size until the video ended, then each resized (for comparison).

The figure is the growth of the process's peak RSS during the scan (``VmHWM``, reset through
``/proc/self/clear_refs`` just before it, minus the RSS then), in MiB; the target (issue 32) is
video within ~200 MiB of the image batch.

    python bench/video_memory.py [--frames 300] [--images 256] [--model models/cnn]

Writes ``bench/results/video_memory.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "video_memory.json"
WIDTH, HEIGHT = 1280, 720


def pictures(count: int) -> list[Any]:
    """``count`` 720p RGB pictures: a moving gradient with noise (compresses like camera footage)."""
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    out = []
    for i in range(count):
        base = ((x + 4 * i) % 256).astype(np.uint8)
        frame = np.stack([base, ((y + 2 * i) % 256).astype(np.uint8), np.full_like(base, (7 * i) % 256)], axis=-1)
        noise = rng.integers(0, 24, (HEIGHT, WIDTH, 1), dtype=np.uint8)
        out.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return out


def write_inputs(folder: Path, frames: int, images: int) -> None:
    import av
    from PIL import Image

    video = folder / "clip.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = 8_000_000
        for array in pictures(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        out.mux(stream.encode())
    for i, array in enumerate(pictures(images)):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=90)
        (folder / f"img_{i:04d}.jpg").write_bytes(buffer.getvalue())


CASE = r"""
import json, sys
from pathlib import Path
from spark_jobs.params import load
from spark_jobs.imaging import images, video
from spark_jobs.scoring import scan
from spark_jobs.scoring.model import scorer

case, folder, model, root = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
cfg = load("params.yaml", [f"score.model={model}", f"data.root={root}", "score.video.every_nth=1"])
model = scorer(cfg)
head, ingest = model.head(cfg), model.card.ingest_settings
head.predictor.model.load() if hasattr(head, "predictor") else None
def status(field):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024

Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the RSS now
before = status("VmRSS")
peak = lambda: status("VmHWM")
if case == "images":
    entries = [(p.as_uri(), None) for p in sorted(folder.glob("img_*.jpg"))]
    batch = scan.scan_batch(entries, ingest, scan.IdSet([]), head, cfg.score.video)
elif case == "video":
    batch = scan.scan_batch([((folder / "clip.mp4").as_uri(), None)], ingest, scan.IdSet([]), head, cfg.score.video)
else:  # as before issue 32: every sampled frame kept at full size, then decoded
    data = (folder / "clip.mp4").read_bytes()
    frames = video.sampled_frames(data, cfg.score.video, ingest.max_image_pixels)
    decoded = [images.decode_frame(f.image, ingest) for f in frames]
    batch = scan.head_outputs(head, [{"pixels": d.pixels, "height": d.height, "width": d.width} for d in decoded])
    batch = {"num_rows": len(decoded)}
rows = batch["num_rows"] if isinstance(batch, dict) else batch.num_rows
print(json.dumps({"case": case, "rows": rows, "rss_before_mib": round(before, 1), "peak_after_mib": round(peak(), 1)}))
"""


def run_case(case: str, folder: Path, model: str, root: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CASE, case, str(folder), model, root],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["growth_mib"] = round(result["peak_after_mib"] - result["rss_before_mib"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default="models/cnn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_inputs(folder, args.frames, args.images)
        video_mib = (folder / "clip.mp4").stat().st_size / 2**20
        cases = {
            c: run_case(c, folder, args.model, str(folder / "data")) for c in ("images", "video", "video_full_frames")
        }
    over = round(cases["video"]["growth_mib"] - cases["images"]["growth_mib"], 1)
    result = {
        "machine": {"cores": 2, "python": platform.python_version()},
        "inputs": {
            "frames": args.frames,
            "images": args.images,
            "size": f"{WIDTH}x{HEIGHT}",
            "video_mib": round(video_mib, 2),
        },
        "model": args.model,
        "cases": cases,
        "video_over_image_batch_mib": over,
        "target": {"bound_mib": 200, "met": over <= 200},
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
