"""The ceiling of the segmentation scores on the procedural facades: ``asapnet evaluate`` with the
real held-out photos in place of the generated images.

Writes the held-out procedural photos (split "test", ``--size`` x ``--size``) and their label maps
as PNG files, as a user's folders would hold them, and runs the folders mode of ``asapnet
evaluate`` on them with the segmenter (by default the shipped one): its mean IoU and pixel
accuracy on real photos are what a generator's images can reach under that segmenter.

Writes bench/results/<machine>/evaluate/procedural_real_heldout.json (the report, with the
command and the machine).

    OMP_NUM_THREADS=1 python bench/evaluate_real.py [--size 256 --held-out 40 --segmenter FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--segmenter", default=None, help="segmenter file (default: the shipped one)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from asapnet_triton.data import build_dataset
    from asapnet_triton.evaluation.evaluate import evaluate, json_safe, summary
    from asapnet_triton.evaluation.segmenter import SHIPPED_SEGMENTER
    from asapnet_triton.fileio import image_to_uint8

    torch.set_num_threads(1)
    segmenter = args.segmenter or SHIPPED_SEGMENTER
    data = build_dataset("procedural", split="test", crop_size=args.size, num_samples=args.held_out, augment=False)
    with tempfile.TemporaryDirectory() as folder:
        photos, labels = Path(folder) / "photos", Path(folder) / "labels"
        photos.mkdir()
        labels.mkdir()
        for index in range(len(data)):
            item = data[index]
            Image.fromarray(image_to_uint8(item["image"])).save(photos / f"{index:05d}.png")
            Image.fromarray(item["label"].numpy().astype(np.uint8), mode="L").save(labels / f"{index:05d}.png")
        started = time.perf_counter()
        report = evaluate(
            real=photos, generated=photos, labels_dir=labels, dataset="procedural", segmenter=segmenter, progress=True
        )
        seconds = time.perf_counter() - started
    report["inputs"] |= {
        "real": f"procedural test photos 0..{args.held_out - 1} at {args.size}x{args.size} (PNG)",
        "generated": "the same real photos (the ceiling)",
        "labels": "their label maps (PNG)",
    }
    print(summary(report))
    path = write_json(
        "evaluate/procedural_real_heldout.json",
        {
            "command": "OMP_NUM_THREADS=1 python bench/evaluate_real.py " + " ".join(sys.argv[1:]),
            "threads": torch.get_num_threads(),
            "seconds": round(seconds, 1),
            "report": json_safe(report),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
