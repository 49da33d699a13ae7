"""A worker's train batches: the Ray Data train set, epoch after epoch, with read-ahead and the data-wait clock."""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ray.data
import torch
from ray.data import FileShuffleConfig

from vsa_dist.data.manifests import as_pixel_input, check_same_settings, load_features_manifest, load_manifest
from vsa_dist.data.pairs import feature_sample_to_row, image_sample_to_row, snippet_rows_to_arrays, word_index
from vsa_dist.data.shards import shard_paths


class DataClock:
    """Wraps an epoch's batch iterator and times what the step loop spends waiting on it: in all, and for the
    first batch alone (the stream's start-up each epoch, which a steady shortfall of the reader does not explain)."""

    def __init__(self, batches: Iterable[Any]):
        self.batches, self.wait, self.first_wait, self.start = batches, 0.0, 0.0, time.time()

    def __iter__(self) -> Iterator[Any]:
        asked, first = time.time(), True
        for batch in self.batches:
            waited = time.time() - asked
            self.wait += waited
            if first:
                self.first_wait, first = waited, False
            yield batch
            asked = time.time()

    def metrics(self) -> dict[str, float]:
        seconds = time.time() - self.start
        return {"seconds": seconds, "data_wait_share": self.wait / seconds, "first_batch_wait_s": self.first_wait}


class EpochStreams:
    """A worker's batches, epoch after epoch; with ``read_ahead``, each epoch's stream starts before the previous
    epoch's dev evaluation.

    Ray Data begins an epoch's execution only when every worker asks for its first batch, and its first shards'
    read took 4-15 s per epoch on full Flickr8k (docs/alignment.md) while the steps stood still. With
    ``read_ahead``, ``start_next`` asks for the next epoch's first batches from a thread as soon as an epoch's steps
    end, so that read runs while rank 0 scores dev and the ranks meet at the report. On CPUs the read then competes
    with the evaluation for the cores, at about 6 s of a core per epoch: less than the wait it hides. ``make`` builds
    one epoch's iterable."""

    def __init__(self, make: Callable[[], Iterable[Any]], depth: int, read_ahead: bool = True):
        self.make, self.depth, self.read_ahead, self.upcoming = make, max(1, depth), read_ahead, None

    def start_next(self) -> None:
        """Start the next epoch's stream now (nothing without ``read_ahead``: it starts at ``take``)."""
        if self.read_ahead and self.upcoming is None:
            self.upcoming = _ReadAhead(self.make(), self.depth)

    def take(self) -> Iterable[Any]:
        """This epoch's batches: the stream started early, or one started now."""
        stream, self.upcoming = self.upcoming, None
        return stream if stream is not None else self.make()


class _ReadAhead:
    """Iterates ``batches`` in a daemon thread from the moment it is made, up to ``depth`` items ahead."""

    _END = object()

    def __init__(self, batches: Iterable[Any], depth: int):
        self.items: queue.Queue = queue.Queue(maxsize=depth)
        threading.Thread(target=self._fill, args=(batches,), daemon=True, name="vsa-read-ahead").start()

    def _fill(self, batches: Iterable[Any]) -> None:
        try:
            for batch in batches:
                self.items.put(batch)
            self.items.put(self._END)
        except BaseException as error:  # re-raised in the training thread, which would otherwise wait forever
            self.items.put(error)

    def __iter__(self) -> Iterator[Any]:
        while (item := self.items.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item


def epoch_streams(shard: Any, cfg: Any, batch_size: int, device: torch.device, start: bool) -> EpochStreams:
    """A train worker's ``EpochStreams`` over its Ray dataset shard, with the config's shuffle buffer, prefetch and
    read-ahead (``auto``: with GPUs only). ``start``: with read-ahead, begin the first epoch's stream now, so its
    first shards are read while rank 0 loads dev."""
    read_ahead = cfg.read_ahead == "true" or (cfg.read_ahead == "auto" and cfg.use_gpu)
    streams = EpochStreams(lambda: shard.iter_torch_batches(
        batch_size=batch_size, local_shuffle_buffer_size=cfg.shuffle_buffer, prefetch_batches=cfg.prefetch_batches,
        drop_last=True, device=device), depth=cfg.prefetch_batches, read_ahead=read_ahead)
    if start:
        streams.start_next()
    return streams


@dataclass(frozen=True)
class TrainStream:
    """What a recipe's train stream carries (its task's ``stream(cfg)``): the stage and ``vsa tune`` read exactly this.
    ``whole_image_only``: each image's whole-image row alone (a twentieth of the bytes), for a model that reads no
    region; ``snippets``: a snippet folder's images and regions with their snippets (cut to phrases with
    ``snippet_phrases``) instead of the feature folder; ``augment``: more feature folders of the same images (e.g.
    mirrored), whose train shards join the stream; ``images``: the image shards the feature folder was made from,
    decoded into the CNN's input (``image_size`` pixels square, cropped and mirrored at random, by ``decoders`` Ray
    Data tasks at once) instead of the feature folder's rows: a model that trains its whole CNN (``encoder=full``)."""

    max_words: int
    whole_image_only: bool = False
    snippets: str = ""
    snippet_phrases: bool = True
    augment: tuple[str, ...] = ()
    images: str = ""
    image_size: int = 0
    crop_min_area: float = 1.0
    flip: bool = False
    max_pixels: int = 0
    decoders: int = 2


def stream_settings(features: str, stream: TrainStream) -> tuple[dict[str, Any], dict[str, Any]]:
    """The feature folder's manifest, and the feature settings it shares with the snippet folder the stream reads
    (features made differently never meet in one run)."""
    manifest = load_features_manifest(features)
    snippets = {stream.snippets: load_manifest(stream.snippets)} if stream.snippets else {}
    settings = check_same_settings({features: manifest, **snippets})
    return manifest, as_pixel_input(settings, bool(stream.images))


def train_dataset(features: str, vocab: list[str], stream: TrainStream, seed: int = 0) -> ray.data.Dataset:
    """The train split of a feature folder (or of a snippet folder: full images and regions with their
    snippets) as a streaming Ray Dataset of fixed-shape arrays, its shard order shuffled anew every epoch."""
    kwargs: dict[str, Any] = {"index": word_index(vocab), "max_words": stream.max_words}
    # The shard order is shuffled anew each execution (each epoch), and each worker's local shuffle buffer
    # mixes images within the stream. That is coarser than Ray Data's randomize_block_order (a shard is several
    # blocks), but that is an all-to-all step: it holds back the first batch of every epoch until the whole split
    # has been read into the object store (the data wait, and memory that grows with the split).
    # Reading and unpacking float16 arrays is light work: it takes no CPU slot, so that training workers
    # holding every CPU (2 workers on 2 cores) cannot starve their own input. Only the members a row needs are
    # read (not boxes or proposals).
    read = functools.partial(ray.data.read_webdataset, num_cpus=0, concurrency=2,
                             fileselect=["*.feat.npy", "*.json"],
                             shuffle=FileShuffleConfig(seed=seed, reseed_after_execution=True))
    if stream.images:  # JPEG decoding, cropping and mirroring, inside the read as its decoder (see below)
        return read(shard_paths(stream.images, ["train"]), fileselect=["*.jpg", "*.json"],
                    concurrency=stream.decoders, decoder=functools.partial(
                        image_sample_to_row, size=stream.image_size, max_pixels=stream.max_pixels,
                        crop_min_area=stream.crop_min_area, flip=stream.flip, **kwargs))
    if stream.snippets:  # one image gives several rows (the image, then its regions): a map of its own
        return read(shard_paths(stream.snippets, ["train"]), decoder=None).map_batches(
            snippet_rows_to_arrays, batch_size=64, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=2),
            fn_kwargs={**kwargs, "phrases": stream.snippet_phrases})
    # Rows made inside the read, as its decoder, not by a map_batches after it: the two did not fuse into one
    # operator, and the second one's tasks, their worker processes and the blocks passed between them doubled
    # the CPU an epoch's stream costs (benchmarks/data_wait.py --reads map,decoder; docs/alignment.md).
    return read([path for folder in [features, *stream.augment] for path in shard_paths(folder, ["train"])],
                decoder=functools.partial(feature_sample_to_row, whole_image_only=stream.whole_image_only, **kwargs))
