"""``vsa search``: a sentence's best images in your folders (or shards), or an image's best sentences, by the
alignment model's image–sentence score.

    vsa search "a dog runs on the beach" ~/photos --model models:/vsa-align@champion
    vsa search "two children play in the snow" runs/flickr8k/shards --top 5 --format jsonl --html hits.html
    vsa search --image photo.jpg runs/flickr8k/shards --splits test          # image → sentences

The first run embeds every image of a corpus (the CNN's features of the whole image and its regions, through the
model's region projection) and keeps them in an index, one file per model: under ``runs/search-index/`` (a folder
per corpus, named by it), or where ``--index-dir`` says; never inside the corpus (a pipeline's shards stay as the
pipeline wrote them) unless ``--index-dir`` names it. A later query reads the index and embeds only the
sentence, and a changed folder re-embeds only its new or changed images. Image → sentences ranks the sentences of
shard corpora (an image folder has none). Output: ``rank<TAB>score<TAB>image`` (or sentence) per hit, or JSON lines;
``--html PAGE``: the hits as a page of thumbnails.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from tqdm import tqdm

from vsa_dist import config as cfglib
from vsa_dist import console
from vsa_dist.checkpoints import load_alignment
from vsa_dist.configs import SearchConfig, is_shards
from vsa_dist.data.images import DEFAULT_MAX_PIXELS, find_images
from vsa_dist.data.manifests import MANIFEST
from vsa_dist.data.pairs import encode_tokens, word_index
from vsa_dist.data.shards import jpegs_by_id, read_samples, shard_paths
from vsa_dist.data.text import tokenize
from vsa_dist.features.extract import checked_extractor, image_features
from vsa_dist.io import atomic_write_bytes, atomic_write_json, sha256_file
from vsa_dist.models.tokens import PAD, UNK
from vsa_dist.pages import thumbnail
from vsa_dist.paths import runs_root
from vsa_dist.registry import model_artifacts, resolve_model
from vsa_dist.stages import run_stage
from vsa_dist.tracking import tracking_uri

INDEX_ROOT = "search-index"  # under the runs folder
INDEX_VERSION = 3  # 3: the listing proves its vectors (checksum, rows, model, encoder)


@dataclass
class Searcher:
    """An alignment model ready to embed images and sentences (``load_searcher``)."""

    model: Any
    index: dict[str, int]
    max_words: int
    feature_settings: dict[str, Any]
    model_key: str      # the checkpoint's sha256: an index is only valid for the model that embedded it
    label: str = ""     # the model as people name it: vsa-align/3 (@champion, flickr8k), or its file
    weights: str = ""
    max_pixels: int = DEFAULT_MAX_PIXELS
    _extractor: Any = None

    @property
    def extractor(self):
        """The CNN, loaded when an image is first embedded: a query against a built index never needs it."""
        if self._extractor is None:
            self._extractor = checked_extractor(self.feature_settings, self.weights, self.max_pixels)
        return self._extractor

    def embed_images(self, jpegs: list[bytes], names: list[str]):
        """[G, rows, h] region vectors of the images that decode (float16) and an error per image ('' if none)."""
        features, _, errors = image_features(self.extractor, jpegs, names)
        if not len(features):
            return features[:, :1, :1], errors
        with torch.no_grad():
            regions = self.model.embed_scored_regions(torch.from_numpy(features).float())
        return regions.half().numpy(), errors

    def embed_sentences(self, sentences: list[str]):
        ids = [encode_tokens(tokenize(s), self.index, self.max_words) or [UNK] for s in sentences]
        tokens = torch.full((len(ids), self.max_words), PAD)
        for row, sentence in enumerate(ids):
            tokens[row, :len(sentence)] = torch.tensor(sentence)
        with torch.no_grad():
            return self.model.embed_words(tokens)

    def image_scores(self, vectors, sentence: str, chunk: int = 4096):
        """S of every image [N] (its region vectors [N, rows, h]) with one sentence, a chunk of images at a time."""
        words, mask = self.embed_sentences([sentence])
        vectors = torch.from_numpy(vectors)
        with torch.no_grad():
            return torch.cat([self.model.score(vectors[i:i + chunk].float(), words, mask)[:, 0]
                              for i in range(0, len(vectors), chunk)]).numpy()

    def sentence_scores(self, regions, sentences: list[str], chunk: int = 2048):
        """S of one image (its region vectors [1, rows, h]) with every sentence [S], a chunk of sentences at a
        time (40,000 sentences' word vectors at once would be gigabytes)."""
        regions = torch.from_numpy(regions).float()
        out = []
        for i in range(0, len(sentences), chunk):
            words, mask = self.embed_sentences(sentences[i:i + chunk])
            with torch.no_grad():
                out.append(self.model.score(regions, words, mask)[0])
        return torch.cat(out).numpy()


def load_searcher(uri: str, weights: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> Searcher:
    """The alignment model at ``uri`` (a ``best.pt``, a model folder or an MLflow URI), its checkpoint loaded with
    weights only; its feature extractor (made as its training features were, the backbone's weights checked) is
    loaded when first needed."""
    if Path(uri).is_file():
        checkpoint, label = Path(uri), uri
    else:
        mlflow.set_tracking_uri(tracking_uri())
        try:
            resolved = resolve_model(uri)
            checkpoint, label = Path(model_artifacts(resolved.folder, ("checkpoint",))["checkpoint"]), resolved.label()
        except mlflow.exceptions.MlflowException as err:
            raise cfglib.ConfigError(f"model {uri}: {err.message} (tracking store {tracking_uri()})") from err
    try:
        model, state = load_alignment(checkpoint)
    except (KeyError, ValueError, RuntimeError) as err:
        raise cfglib.ConfigError(f"model {uri}: not an alignment checkpoint ({type(err).__name__}: {err})") from err
    return Searcher(model, word_index(state["vocab"]), state["config"]["max_words"], state["feature_settings"],
                    sha256_file(checkpoint)[:16], label, weights, max_pixels)


def corpus_items(folder: Path, splits: list[str]):
    """(name, stamp, bytes loader, sentences) of each image of a corpus: a shard folder's images by image id (their
    sentences with them), an image folder's image files (``find_images``: its subfolders too, not hidden ones such as
    the index's) by relative path; the stamp changes when the image does."""
    if is_shards(folder):
        for sample in read_samples(shard_paths(str(folder), splits or None)):
            meta = json.loads(sample["json"])
            data = sample.get("jpg", b"")
            said = [sentence["raw"] if isinstance(sentence, dict) else str(sentence)
                    for sentence in meta.get("sentences", [])]
            yield str(meta["image_id"]), "", lambda d=data: d, said
        return
    for path in find_images([folder]):
        stat = path.stat()
        yield str(path.relative_to(folder)), f"{stat.st_size}:{stat.st_mtime_ns}", path.read_bytes, []


@dataclass
class Index:
    """One corpus embedded by one model: image names, their region vectors [N, rows, h] (float16), each image's
    sentences (shard corpora) and the images that could not be embedded, with why."""

    names: list[str]
    vectors: Any
    sentences: list[list[str]]
    skipped: list[tuple[str, str]]


def corpus_stamp(folder: Path, splits: list[str]) -> str:
    """What a shard folder's index is valid for: its manifest (rewritten whenever the shards are) and the splits
    read. An image folder is checked image by image instead."""
    return f"{sha256_file(folder / MANIFEST)}:{','.join(sorted(splits))}" if is_shards(folder) else ""


def encoder_of(searcher: Searcher) -> dict[str, Any]:
    """The CNN whose features the vectors were made from (with the model: its checkpoint's sha256 is model_key)."""
    return {key: searcher.feature_settings.get(key) for key in ("backbone", "weights_sha256", "region_mode")}


def read_index(listing_path: Path, vectors_path: Path, searcher: Searcher) -> tuple[dict[str, Any], Any, str]:
    """A stored index, if it proves itself: its listing well formed, made by this model and encoder, its vectors the
    bytes it recorded (sha256), one finite row per image. Returns (listing, vectors, '') when it holds; ({}, None,
    why) when it is damaged; ({}, None, '') when there is none, or one of an older version (rebuilt unsaid)."""
    if not listing_path.is_file() and not vectors_path.is_file():
        return {}, None, ""
    try:
        listing = json.loads(listing_path.read_text())
    except (OSError, ValueError) as err:
        return {}, None, f"the listing cannot be read ({type(err).__name__})"
    if not isinstance(listing, dict) or listing.get("version") != INDEX_VERSION:
        return {}, None, "" if isinstance(listing, dict) else "the listing is not a JSON object"
    images, skipped = listing.get("images"), listing.get("skipped")
    well_formed = isinstance(images, list) and isinstance(skipped, list) and all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("stamp"), str)
        and isinstance(e.get("sentences"), list) for e in images) and all(
        isinstance(e, dict) and {"name", "stamp", "error"} <= set(e) for e in skipped)
    if not well_formed:
        return {}, None, "the listing's images or skipped entries are not what an index writes"
    if listing.get("model_key") != searcher.model_key or listing.get("encoder") != encoder_of(searcher):
        return {}, None, "made by another model or CNN"
    try:
        data = vectors_path.read_bytes()
    except OSError as err:
        return {}, None, f"its vectors cannot be read ({err.strerror})"
    if hashlib.sha256(data).hexdigest() != listing.get("vectors_sha256"):
        return {}, None, "its vectors are not the bytes it recorded (sha256)"
    try:
        vectors = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        return {}, None, f"its vectors are not an array ({type(err).__name__})"
    if vectors.ndim != 3 or vectors.dtype != np.float16 or len(vectors) != len(images) or \
            not np.isfinite(vectors).all():
        return {}, None, f"its vectors {vectors.shape} do not hold one finite row per image of its {len(images)}"
    return listing, vectors, ""


def index_folder(corpus: Path, index_dir: str = "") -> Path:
    """Where a corpus's index lives: a folder per corpus (its name and a digest of its absolute path) under
    ``index_dir``, by default the runs folder's ``search-index``."""
    digest = hashlib.sha256(str(corpus.resolve()).encode()).hexdigest()[:12]
    return Path(index_dir or runs_root() / INDEX_ROOT) / f"{corpus.resolve().name}-{digest}"


def build_index(searcher: Searcher, folder: Path, splits: list[str], batch_size: int, progress: bool = True,
                index_dir: str = "") -> Index:
    """The corpus's image vectors: from its index where the images are unchanged, embedded where not (the index then
    rewritten, atomically). A shard folder whose manifest is unchanged is not read at all."""
    where, stamp = index_folder(folder, index_dir), corpus_stamp(folder, splits)
    stem = f"{searcher.model_key}-{'-'.join(sorted(splits)) or 'all'}" if stamp else searcher.model_key
    listing_path, vectors_path = where / f"{stem}.json", where / f"{stem}.npy"
    listing, stored, damaged = read_index(listing_path, vectors_path, searcher)
    if damaged:  # never trusted: rebuilt from the corpus, and said
        print(f"vsa search: {listing_path.with_suffix('')}.*: {damaged}; rebuilding the index", file=console.err(),
              flush=True)
    old = {}
    if listing:
        if stamp and listing.get("corpus") == stamp:
            return Index([e["name"] for e in listing["images"]], stored, [e["sentences"] for e in listing["images"]],
                         [])
        old = {entry["name"]: (entry["stamp"], stored[row]) for row, entry in enumerate(listing["images"])}
    # images that could not be embedded are remembered too: tried again only once their file changes
    refused = {entry["name"]: (entry["stamp"], entry["error"]) for entry in listing.get("skipped", [])}
    index, kept, pending, refused_stamps = Index([], [], [], []), [], [], []

    def keep(name: str, item_stamp: str, vector, said: list[str]) -> None:
        index.names.append(name)
        index.vectors.append(vector)
        index.sentences.append(said)
        kept.append(item_stamp)

    def refuse(name: str, item_stamp: str, why: str) -> None:
        index.skipped.append((name, why))
        refused_stamps.append(item_stamp)

    def flush() -> None:
        embedded, errors = searcher.embed_images([load() for _, _, load, _ in pending], [n for n, _, _, _ in pending])
        good = iter(embedded)
        for (name, item_stamp, _, said), error in zip(pending, errors):
            if error:
                refuse(name, item_stamp, error)
            else:
                keep(name, item_stamp, next(good), said)
        pending.clear()

    def known(name: str, item_stamp: str) -> bool:
        return not stamp and (old.get(name, (None,))[0] == item_stamp or refused.get(name, (None,))[0] == item_stamp)

    if stamp:  # a shard folder, read once as a stream (its images are not all held in memory); its count from
        #        the manifest
        counts = json.loads((folder / MANIFEST).read_text())["splits"]
        items, fresh = corpus_items(folder, splits), sum(info["images"] for split, info in counts.items()
                                                         if not splits or split in splits)
    else:      # an image folder: its files' names and stamps, their bytes read only when embedded
        items = list(corpus_items(folder, splits))
        fresh = sum(1 for name, item_stamp, _, _ in items if not known(name, item_stamp))
    bar = None
    if fresh:  # minutes for a large corpus the first time: said, whether or not a bar can be drawn
        console.say(f"vsa search: embedding {fresh} image(s) of {folder} into its index {where} (once per model; "
                    "later searches read it)")
    if fresh and progress:
        bar = tqdm(total=fresh, desc=f"vsa search: embedding {folder}", unit="image", file=console.err(), disable=None)
    for name, item_stamp, load, said in items:
        if known(name, item_stamp):
            if name in old and old[name][0] == item_stamp:
                keep(name, item_stamp, old[name][1], said)
            else:
                refuse(name, item_stamp, refused[name][1])
            continue
        pending.append((name, item_stamp, load, said))
        if len(pending) == batch_size:
            flush()
            bar and bar.update(batch_size)
    if pending:
        count = len(pending)
        flush()
        bar and bar.update(count)
    bar and bar.close()
    index.vectors = np.stack(index.vectors) if index.vectors else np.zeros((0, 1, 1), np.float16)
    if fresh or len(old) != len(index.names) or len(refused) != len(index.skipped):
        where.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, index.vectors, allow_pickle=False)
        atomic_write_bytes(vectors_path, buffer.getvalue())
        atomic_write_json(listing_path, {
            "version": INDEX_VERSION, "model_key": searcher.model_key, "encoder": encoder_of(searcher),
            "vectors_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(), "corpus": stamp,
            "images": [{"name": n, "stamp": s, "sentences": said}
                       for n, s, said in zip(index.names, kept, index.sentences)],
            "skipped": [{"name": n, "stamp": s, "error": why}
                        for (n, why), s in zip(index.skipped, refused_stamps)]})
    return index


def check_query_words(searcher: Searcher, query: str) -> None:
    """A sentence the model can read: refused when none of its words is in the model's vocabulary (every image would
    score alike, and the ranking would be the folder's order); the words it does not know are named."""
    words = tokenize(query)
    unknown = [word for word in words if word not in searcher.index]
    if len(unknown) == len(words):
        raise cfglib.ConfigError(f"“{query}”: none of its words is in the model's vocabulary of "
                                 f"{len(searcher.index)} words; nothing to rank the images by")
    if unknown:
        print(f"vsa search: not in the model's vocabulary, left out: {', '.join(unknown)}", file=console.err(),
              flush=True)


def run(cfg: SearchConfig) -> list[dict[str, Any]]:
    searcher = load_searcher(cfg.model, cfg.weights, cfg.max_pixels)
    console.say(f"vsa search: model {searcher.label}")
    if cfg.image:  # the query first: a bomb or a broken file is refused before minutes of indexing
        regions, errors = searcher.embed_images([Path(cfg.image).read_bytes()], [cfg.image])
        if errors[0]:
            raise cfglib.ConfigError(f"{cfg.image}: {errors[0]}")
    else:
        check_query_words(searcher, cfg.query)
    corpora = []
    for corpus in map(Path, cfg.corpora):
        index = build_index(searcher, corpus, cfg.splits, cfg.batch_size, index_dir=cfg.index_dir)
        for name, why in index.skipped:
            print(f"{corpus / name}: skipped: {why}", file=console.err(), flush=True)
        corpora.append((corpus, index))
    if cfg.image:
        found = [(corpus, name, sentence) for corpus, index in corpora
                 for name, said in zip(index.names, index.sentences) for sentence in said]
        if not found:
            raise cfglib.ConfigError(f"no sentence to search in {', '.join(cfg.corpora)}")
        scores = searcher.sentence_scores(regions, [sentence for _, _, sentence in found])
        order = np.argsort(-scores, kind="stable")[:cfg.top]
        hits = [{"rank": r + 1, "score": round(float(scores[i]), 4), "sentence": found[i][2],
                 "image": str(found[i][0] / found[i][1])} for r, i in enumerate(order)]
    else:
        rows = [(corpus, name) for corpus, index in corpora for name in index.names]
        if not rows:
            raise cfglib.ConfigError(f"no image to search in {', '.join(cfg.corpora)}")
        vectors = np.concatenate([index.vectors for _, index in corpora if len(index.names)])
        scores = searcher.image_scores(vectors, cfg.query)
        order = np.argsort(-scores, kind="stable")[:cfg.top]
        hits = [{"rank": r + 1, "score": round(float(scores[i]), 4), "image": str(rows[i][0] / rows[i][1])}
                for r, i in enumerate(order)]
    for hit in hits:
        if cfg.format == "jsonl":
            print(json.dumps(hit, ensure_ascii=False), flush=True)
        else:
            print(f"{hit['rank']}\t{hit['score']:.4f}\t{hit.get('sentence', hit['image'])}", flush=True)
    if cfg.html:
        write_page(Path(cfg.html), cfg, hits, corpora, searcher.label)
        print(f"vsa search: page {cfg.html}", file=console.err(), flush=True)
    return hits


def hit_images(hits: list[dict[str, Any]], corpora) -> dict[str, bytes]:
    """Each hit's image bytes: its file, or its JPEG from the shards it came from (each shard folder read once)."""
    found = {hit["image"]: Path(hit["image"]).read_bytes() for hit in hits if Path(hit["image"]).is_file()}
    for corpus, _ in corpora:
        wanted = {Path(hit["image"]).name for hit in hits
                  if hit["image"] not in found and Path(hit["image"]).parent == corpus}
        if wanted and is_shards(corpus):
            found.update({str(corpus / image_id): jpeg for image_id, jpeg in jpegs_by_id(corpus, None, wanted).items()})
    return found


def write_page(page: Path, cfg: SearchConfig, hits: list[dict[str, Any]], corpora, label: str) -> None:
    """The hits as one HTML page (thumbnails inline, so the page stands alone)."""
    asked = f"sentences for {cfg.image}" if cfg.image else f"images for “{cfg.query}”"
    cards, images = [], hit_images(hits, corpora)
    for hit in hits:
        data = images.get(hit["image"], b"")
        picture = f'<img src="{thumbnail(data, 256)}" alt="">' if data else ""
        said = f"<p>{html.escape(hit['sentence'])}</p>" if "sentence" in hit else ""
        cards.append(f'<figure>{picture}<figcaption><b>{hit["rank"]}</b> · {hit["score"]:.3f}{said}'
                     f"<br><small>{html.escape(hit['image'])}</small></figcaption></figure>")
    if cfg.image:
        query = f'<img src="{thumbnail(Path(cfg.image).read_bytes(), 256)}" alt="the query image">'
    else:
        query = ""
    body = "\n".join(cards)
    atomic_write_bytes(page, f"""<!doctype html><meta charset="utf-8"><title>vsa search: {html.escape(asked)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} main{{display:flex;flex-wrap:wrap;gap:12px}}
figure{{margin:0;width:256px}} img{{max-width:256px;height:auto}} figcaption{{font-size:14px}}</style>
<h1>{html.escape(asked)}</h1>{query}<p>model {html.escape(label)}</p><main>{body}</main>
""".encode())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    return run_stage(SearchConfig, run, argv, prog="vsa search", preset=None, input_errors=(ValueError,))
