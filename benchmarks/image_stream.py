"""The data path of ``vsa train-align --encoder full`` at training speed: images/s of the whole path against the
CNN-only bound, in one run, and what JPEG draft decoding saves.

    python benchmarks/image_stream.py --features runs/flickr8k/features            # 40 steps of 32 images each way
    python benchmarks/image_stream.py --features runs/flickr8k/features --steps 10 --threads 2

Three measurements on the image shards the feature folder was made from, in this one process:

- ``decode``: one core decoding and augmenting the train JPEGs as the stream's read tasks do
  (``data.images.model_input``: random resized crop, mirror), with JPEG draft mode and without, on the images as
  stored and on the same images re-encoded at 640 pixels (COCO's size; Flickr8k's here are 224), images/s.
- ``bound``: the CNN-only bound, the alignment model's train step (the preset's settings, ``encoder=full``: the whole
  CNN forward and backward, bf16 where native) on batches already in memory, images/s.
- ``whole``: the same steps fed by the real train stream (``training.train_dataset``: Ray Data read tasks decoding and
  augmenting, ``iter_torch_batches`` with the stage's prefetch), images/s and the share of the time spent waiting
  for a batch. The ratio whole / bound is the data path's cost: 1.0 means the trainer never waits.

One machine, one run: compare the lines with each other. Writes WORK/image_stream.json (default runs/bench/).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from PIL.JpegImagePlugin import JpegImageFile  # noqa: E402

from vsa_dist import config as cfglib  # noqa: E402
from vsa_dist.data.images import model_input  # noqa: E402
from vsa_dist.data.manifests import image_shards, load_features_manifest  # noqa: E402
from vsa_dist.data.shards import read_samples, shard_paths  # noqa: E402
from vsa_dist.paths import runs_root  # noqa: E402
from vsa_dist.ray_env import ensure_ray  # noqa: E402
from vsa_dist.recipes.align import AlignConfig, AlignTask  # noqa: E402
from vsa_dist.training.session import RunSpec  # noqa: E402
from vsa_dist.training.streams import DataClock, train_dataset  # noqa: E402


def decode_rate(jpegs: list[bytes], size: int, crop_min_area: float, draft: bool) -> float:
    """Images/s of one core decoding and augmenting ``jpegs`` as the train stream does (``draft``: in draft mode)."""
    rng = np.random.default_rng(0)
    torch.set_num_threads(1)
    with mock.patch.object(JpegImageFile, "draft", JpegImageFile.draft if draft else lambda self, mode, size: None):
        start = time.perf_counter()
        for data in jpegs:
            model_input(data, size, crop_min_area=crop_min_area, flip=True, rng=rng)
    return len(jpegs) / (time.perf_counter() - start)


def enlarged(data: bytes, side: int) -> bytes:
    """The image re-encoded with its long side at ``side`` pixels (quality 90), as a larger photo would arrive."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = side / max(image.size)
    buffer = io.BytesIO()
    image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC).save(buffer, "JPEG",
                                                                                                  quality=90)
    return buffer.getvalue()


def steps_rate(task: AlignTask, model: torch.nn.Module, batches, steps: int) -> tuple[float, float]:
    """Images/s of ``steps`` train steps over ``batches`` (after one warm-up step), and the share spent waiting."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    clock, done, images, start = DataClock(batches), 0, 0, 0.0
    for batch in clock:
        if done == 1:  # the first step (and its stream's start-up) is warm-up
            clock.wait, start, images = 0.0, time.perf_counter(), 0
        optimizer.zero_grad(set_to_none=True)
        loss, _ = task.step(model, model, batch)
        loss.backward()
        optimizer.step()
        images += len(batch["image"])
        done += 1
        if done > steps:
            break
    seconds = time.perf_counter() - start
    return images / seconds, clock.wait / seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default=str(runs_root() / "flickr8k" / "features"))
    parser.add_argument("--preset", default="train_align_cached", help="the train-align preset (encoder set to full)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the train steps")
    parser.add_argument("--crop-min-area", type=float, default=0.5)
    parser.add_argument("--decode-images", type=int, default=300)
    parser.add_argument("--work", default=str(runs_root() / "bench"))
    args = parser.parse_args(argv)

    cfg = cfglib.ready(AlignConfig, args.preset, {"features": args.features, "encoder": "full",
                                                  "crop_min_area": args.crop_min_area, "batch_size": args.batch})
    manifest = load_features_manifest(cfg.features)
    size = manifest["settings"]["input_size"]
    jpegs = []
    for sample in read_samples(shard_paths(image_shards(cfg.features), ["train"])):
        jpegs.append(sample["jpg"])
        if len(jpegs) == args.decode_images:
            break
    large = [enlarged(data, 640) for data in jpegs]
    result: dict = {"features": cfg.features, "batch": args.batch, "threads": args.threads, "decode": {}}
    for name, images in (("as stored", jpegs), ("at 640 px", large)):
        rates = {mode: round(decode_rate(images, size, cfg.crop_min_area, mode == "draft"), 1)
                 for mode in ("full decode", "draft")}
        result["decode"][name] = rates
        print(f"decode {name}: {rates['full decode']:.0f} img/s, draft {rates['draft']:.0f} img/s (one core)")

    vocab = manifest["vocab"]["words"]
    settings = {**manifest["settings"], "input": "pixels"}
    task = AlignTask(RunSpec(cfg, vocab, settings["feature_dim"], settings, "", ""))
    torch.manual_seed(0)
    model = task.build_model()
    task.initialise(model)
    model.train()
    task.prepare(rank=1, world=1)  # no dev split: this measures steps only
    torch.set_num_threads(args.threads)

    ensure_ray(False)
    stream = train_dataset(cfg.features, vocab, AlignTask.stream(cfg), cfg.seed)
    in_memory = list(stream.limit(args.batch * 4).iter_torch_batches(batch_size=args.batch, drop_last=True))
    bound, _ = steps_rate(task, model, (in_memory[i % len(in_memory)] for i in range(args.steps + 1)), args.steps)
    print(f"bound: {bound:.1f} img/s (the train step on batches in memory, {args.threads} threads)")
    whole, waiting = steps_rate(task, model, stream.iter_torch_batches(
        batch_size=args.batch, local_shuffle_buffer_size=cfg.shuffle_buffer, prefetch_batches=cfg.prefetch_batches,
        drop_last=True), args.steps)
    print(f"whole path: {whole:.1f} img/s, {100 * waiting:.1f} % of it waiting for images; whole / bound "
          f"{whole / bound:.2f}")
    result.update(bound_images_per_s=round(bound, 2), whole_images_per_s=round(whole, 2),
                  whole_over_bound=round(whole / bound, 3), data_wait_share=round(waiting, 4))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "image_stream.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
