"""Caption-dataset readers. Each turns one on-disk format into a :class:`Catalog`.

A catalog is the list of images that may go into shards plus every input that cannot (with its
reason), so that ``written + rejected == inputs`` holds for images and for sentences. Per-sample
problems become rejects; a file that cannot be parsed at all raises :class:`InputFormatError`
naming the file and line.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsa_dist.data.text import tokenize

SPLITS = ("train", "dev", "test")
# Karpathy's JSON says "val"; this project says "dev" everywhere (the split models are selected on).
_KARPATHY_SPLITS = {"train": "train", "val": "dev", "dev": "dev", "test": "test", "restval": "restval"}
# Images a dataset lists that no official split names (Flickr8k has 91) keep this split name.
UNASSIGNED = "unassigned"


class InputFormatError(ValueError):
    """An input file that cannot be read as its format at all: the build stops here."""

    def __init__(self, path: Path | str, reason: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path, self.line = str(path), line


@dataclass
class ImageEntry:
    key: str  # WebDataset sample key: unique, no dots (WebDataset splits keys at the first dot)
    image_id: str
    file_name: str
    path: Path
    split: str
    sentences: list[dict[str, Any]]  # {"raw": str, "tokens": [str], "ref": "file:line"}
    ref: str  # where the image came from, for rejects


@dataclass
class Catalog:
    format: str
    source_files: list[Path]
    entries: list[ImageEntry] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    input_images: int = 0
    input_sentences: int = 0
    repairs: list[dict[str, Any]] = field(default_factory=list)

    def reject_sentence(self, code: str, detail: str, ref: str, image: str | None, text: str | None = None) -> None:
        self.rejects.append(
            {"kind": "sentence", "reason": code, "detail": detail, "source": ref, "image": image, "text": text}
        )

    def reject_image(self, code: str, detail: str, ref: str, image: str, sentences: list[dict[str, Any]]) -> None:
        """An image goes, and its sentences with it: each is accounted for under its own reference."""
        self.rejects.append({"kind": "image", "reason": code, "detail": detail, "source": ref, "image": image})
        for sent in sentences:
            self.reject_sentence("image-rejected", f"its image was rejected ({code})", sent["ref"], image, sent["raw"])


def sample_key(file_name: str) -> str:
    stem = Path(file_name).name.rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


def _sentence(catalog: Catalog, raw: Any, tokens: Any, ref: str, image: str) -> dict[str, Any] | None:
    """A checked sentence, or None after recording why it was rejected."""
    if not isinstance(raw, str):
        catalog.reject_sentence("bad-caption", f"caption is {type(raw).__name__}, not text", ref, image)
        return None
    if tokens is None:
        tokens = tokenize(raw)
    elif not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        catalog.reject_sentence("bad-caption", "tokens are not a list of strings", ref, image, raw)
        return None
    # one string object per distinct word: a catalog holds every sentence of the data set (500k of them at COCO
    # scale), and its words repeat (benchmarks/load.py: the catalog of 100k images took 770 MiB before, MEASURED after)
    tokens = tuple(sys.intern(t.lower()) for t in tokens if t.strip())
    if not raw.strip() or not tokens:
        catalog.reject_sentence("empty-caption", "caption has no words", ref, image, raw)
        return None
    return {"raw": raw.strip(), "tokens": tokens, "ref": ref}


def _images_dir(root: Path, images_dir: str) -> Path:
    if images_dir:
        return Path(images_dir)
    return root / "images" if (root / "images").is_dir() else root


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputFormatError(path, f"{what} not found")
    return path


def _load_json(path: Path) -> Any:
    _require_file(path, "caption file")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))  # a byte-order mark is not part of the JSON
    except UnicodeDecodeError as err:
        raise InputFormatError(path, f"not UTF-8 (byte offset {err.start})") from err
    except json.JSONDecodeError as err:
        raise InputFormatError(path, f"not valid JSON: {err.msg} (column {err.colno})", line=err.lineno) from err
    except RecursionError as err:
        raise InputFormatError(path, "JSON nested too deeply to be a caption file") from err


def _text_lines(path: Path) -> list[str]:
    """A text input's lines (a leading byte-order mark dropped), or InputFormatError naming the first line that
    is not UTF-8."""
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    lines = raw.split(b"\n")
    for lineno, line in enumerate(lines, 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputFormatError(path, f"not UTF-8 (byte {err.start + 1} of the line)", lineno) from err
    return [line.decode("utf-8").rstrip("\r") for line in lines]


def _outside_root(name: str) -> str | None:
    """Why an image name from a caption file may not be read (it must stay inside the images folder), or None."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts:
        return f"image path {name!r} leaves the images folder (absolute, or with '..')"
    return None


def _finish(catalog: Catalog, images: dict[str, dict[str, Any]], images_dir: Path) -> Catalog:
    """Turn gathered images into entries; an image whose sentences were all rejected goes too."""
    catalog.input_images = len(images)
    for name, info in images.items():
        if info.get("reject"):
            code, detail = info["reject"]
            catalog.reject_image(code, detail, info["ref"], name, info["sentences"])
            continue
        if not info["sentences"]:
            reason = "no captions" if not info.get("had_captions") else "every caption was rejected"
            catalog.reject_image("no-captions", reason, info["ref"], name, [])
            continue
        rel = info.get("rel_path", name)
        if (why := _outside_root(rel)) is not None:
            catalog.reject_image("outside-root", why, info["ref"], name, info["sentences"])
            continue
        catalog.entries.append(ImageEntry(
            key=info.get("key") or sample_key(name), image_id=info.get("image_id", sample_key(name)),
            file_name=name, path=images_dir / rel, split=info["split"], sentences=info["sentences"], ref=info["ref"],
        ))
    keys = defaultdict(list)
    for entry in catalog.entries:
        keys[entry.key].append(entry)
    for key, same in keys.items():
        for dup in same[1:]:  # two file names that map to one sample key (e.g. a.jpg and a.jpeg)
            catalog.entries.remove(dup)
            catalog.reject_image("duplicate-id", f"sample key {key!r} already used by {same[0].file_name}", dup.ref,
                                 dup.file_name, dup.sentences)
    return catalog


# --------------------------------------------------------------------------------------- Flickr token
_FLICKR_REPEAT = re.compile(r"^(.+\.jpe?g)\.\d+$", re.IGNORECASE)


def read_flickr(root: Path, captions: str = "", split_files: str = "", images_dir: str = "",
                fmt: str = "flickr8k") -> Catalog:
    """Flickr8k / Flickr30k token format: ``<image>#<n>\\t<caption>`` lines plus one image list per split."""
    token_path = (
        Path(captions) if captions else root / ("Flickr8k.token.txt" if fmt == "flickr8k" else "results_20130124.token")
    )
    pattern = split_files or ("Flickr_8k.{split}Images.txt" if fmt == "flickr8k" else "Flickr_30k.{split}Images.txt")
    catalog = Catalog(format=fmt, source_files=[_require_file(token_path, "caption file")])
    images: dict[str, dict[str, Any]] = {}

    def image(name: str, ref: str) -> dict[str, Any]:
        return images.setdefault(name, {"split": UNASSIGNED, "sentences": [], "ref": ref, "had_captions": False})

    # Split lists first, so an image's reference points at the list that named it.
    split_of: dict[str, str] = {}
    for split in SPLITS:
        path = Path(pattern.format(split=split))
        path = path if path.is_absolute() or path.exists() else root / path
        if not path.is_file():
            continue
        catalog.source_files.append(path)
        for lineno, line in enumerate(_text_lines(path), 1):
            name = line.strip()
            if not name:
                continue
            info = image(name, f"{path.name}:{lineno}")
            if name in split_of and split_of[name] != split:
                # In two splits: keeping it in either would leak between train and test.
                info["reject"] = ("split-conflict", f"listed in both {split_of[name]} and {split}")
            split_of[name] = split
            info["split"] = split

    seen: dict[tuple[str, str], str] = {}
    with open(token_path, "rb") as token_file:  # line by line: a COCO-sized file is not held beside its catalog
        for lineno, raw_line in enumerate(token_file, 1):
            raw_line = raw_line.rstrip(b"\r\n")
            if lineno == 1:
                raw_line = raw_line.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is not an image name
            if not raw_line.strip():
                continue
            if b"\t" not in raw_line:
                raise InputFormatError(token_path, "expected '<image>#<n><TAB><caption>', found no tab", lineno)
            head, _, body = raw_line.partition(b"\t")
            try:
                ident = head.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                raise InputFormatError(token_path, "image name is not UTF-8", lineno) from err
            name, hash_, number = ident.rpartition("#")
            if not hash_ or not name or not number.isdigit():
                raise InputFormatError(token_path, f"expected '<image>#<n>' before the tab, found {ident!r}", lineno)
            ref = f"{token_path.name}:{lineno}"
            catalog.input_sentences += 1
            if (m := _FLICKR_REPEAT.match(name)) and m.group(1) not in split_of and name not in split_of:
                # Flickr8k's token file names one caption '2258277193_586949ec62.jpg.1#0': it belongs to
                # '…jpg', which has the other four. Folded in and recorded, so the caption is kept.
                catalog.repairs.append(
                    {"source": ref, "from": name, "to": m.group(1), "why": "image name with a repeat suffix"}
                )
                name = m.group(1)
            info = image(name, ref)
            info["had_captions"] = True
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                catalog.reject_sentence(
                    "not-utf8", "caption is not valid UTF-8", ref, name, body.decode("utf-8", "replace")
                )
                continue
            if (name, number) in seen:
                catalog.reject_sentence(
                    "duplicate-id", f"caption {name}#{number} already given at {seen[name, number]}", ref, name, text
                )
                continue
            seen[name, number] = ref
            sent = _sentence(catalog, text, None, ref, name)
            if sent is not None:
                info["sentences"].append(sent)
    return _finish(catalog, images, _images_dir(root, images_dir))


# ------------------------------------------------------------------------------------ Karpathy JSON
def _karpathy_json(root: Path, captions: str) -> Path:
    if captions:
        return Path(captions)
    found = sorted(root.glob("dataset_*.json"))
    if len(found) != 1:
        raise InputFormatError(
            root / "dataset_*.json", f"expected one Karpathy-split file, found {len(found)}: pass --captions"
        )
    return found[0]


def read_karpathy(root: Path, captions: str = "", images_dir: str = "") -> Catalog:
    """Karpathy-split JSON: ``images[]`` with filename, optional filepath, split and ``sentences[]``."""
    path = _karpathy_json(root, captions)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputFormatError(path, "expected an object with an 'images' list")
    catalog = Catalog(format="karpathy", source_files=[path])
    images: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(data["images"]):
        ref = f"{path.name}:images[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
            raise InputFormatError(path, f"images[{index}] has no 'filename' string")
        sentences = item.get("sentences", [])
        if not isinstance(sentences, list):
            raise InputFormatError(path, f"images[{index}].sentences is not a list")
        name = item["filename"]
        rel = f"{item['filepath']}/{name}" if item.get("filepath") else name
        kept = []
        for s_index, sent in enumerate(sentences):
            s_ref = f"{ref}.sentences[{s_index}]"
            catalog.input_sentences += 1
            raw, tokens = (sent.get("raw"), sent.get("tokens")) if isinstance(sent, dict) else (sent, None)
            checked = _sentence(catalog, raw, tokens, s_ref, name)
            if checked is not None:
                kept.append(checked)
        if rel in images:
            # The same image twice is an input too: counted, and rejected with a pointer to the first.
            catalog.input_images += 1
            catalog.reject_image("duplicate-id", f"{rel} already given at {images[rel]['ref']}", ref, name, kept)
            continue
        split = _KARPATHY_SPLITS.get(str(item.get("split", "")))
        info = {"split": split, "sentences": kept, "ref": ref, "had_captions": bool(sentences), "rel_path": rel,
                "key": sample_key(name), "image_id": str(item.get("cocoid", item.get("imgid", sample_key(name))))}
        if split is None:
            info["reject"] = ("unknown-split", f"split {item.get('split')!r} is not one of {sorted(_KARPATHY_SPLITS)}")
        images[rel] = info
    extra = catalog.input_images
    result = _finish(catalog, images, _images_dir(root, images_dir))
    result.input_images += extra
    return result


# --------------------------------------------------------------------------------------------- COCO
def _coco_subdir(captions_path: Path) -> str:
    m = re.search(r"(train|val|test)(\d{4})", captions_path.name)
    return f"{m.group(1)}{m.group(2)}" if m else ""


def _is_id(value: Any) -> bool:
    """COCO ids are numbers (or text in hand-made files); a list or object there is a broken file, not an id."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_coco(
    root: Path, captions: str = "", split_files: str = "", split_from: str = "", images_dir: str = ""
) -> Catalog:
    """COCO ``captions_*.json``; the split comes from a Karpathy JSON, from split lists, or the file name."""
    paths = [Path(p) for p in captions.split(",") if p] if captions else sorted(
        list(root.glob("captions_*.json")) + list(root.glob("annotations/captions_*.json")))
    if not paths:
        raise InputFormatError(root / "captions_*.json", "no COCO caption file found: pass --captions")
    catalog = Catalog(format="coco", source_files=list(paths))

    split_of: dict[str, str] = {}
    if split_from:
        karpathy = _load_json(_require_file(Path(split_from), "split file"))
        catalog.source_files.append(Path(split_from))
        for item in karpathy.get("images", []) if isinstance(karpathy, dict) else []:
            if isinstance(item, dict) and isinstance(item.get("filename"), str):
                split_of[item["filename"]] = _KARPATHY_SPLITS.get(str(item.get("split")), str(item.get("split")))
    elif split_files:
        for split in SPLITS:
            path = Path(split_files.format(split=split))
            if path.is_file():
                catalog.source_files.append(path)
                for line in _text_lines(path):
                    if line.strip():
                        split_of[line.strip()] = split

    images: dict[str, dict[str, Any]] = {}
    for path in paths:
        data = _load_json(path)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("images"), list)
            or not isinstance(data.get("annotations"), list)
        ):
            raise InputFormatError(path, "expected an object with 'images' and 'annotations' lists")
        subdir = _coco_subdir(path)
        default_split = {"train": "train", "val": "dev", "test": "test"}.get(re.sub(r"\d+", "", subdir), UNASSIGNED)
        by_id: dict[Any, str] = {}
        for index, item in enumerate(data["images"]):
            ref = f"{path.name}:images[{index}]"
            if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("file_name"), str):
                raise InputFormatError(path, f"images[{index}] needs 'id' and 'file_name'")
            if not _is_id(item["id"]):
                raise InputFormatError(path, f"images[{index}].id is {type(item['id']).__name__}, not a number or text")
            name = item["file_name"]
            if name in images or item["id"] in by_id:
                catalog.input_images += 1
                first = images.get(name, {}).get("ref") or by_id.get(item["id"])
                catalog.reject_image(
                    "duplicate-id", f"image {item['id']} / {name} already given at {first}", ref, name, []
                )
                continue
            by_id[item["id"]] = name
            split = split_of.get(name, UNASSIGNED) if (split_from or split_files) else default_split
            images[name] = {
                "split": split,
                "sentences": [],
                "ref": ref,
                "had_captions": False,
                "rel_path": f"{subdir}/{name}"
                if subdir and not (_images_dir(root, images_dir) / name).exists()
                else name,
                "image_id": str(item["id"]),
                "key": sample_key(name),
            }
        seen_ann: dict[Any, str] = {}
        for index, ann in enumerate(data["annotations"]):
            ref = f"{path.name}:annotations[{index}]"
            catalog.input_sentences += 1
            if not isinstance(ann, dict) or "image_id" not in ann:
                raise InputFormatError(path, f"annotations[{index}] needs 'image_id' and 'caption'")
            if not _is_id(ann["image_id"]) or not (ann.get("id") is None or _is_id(ann["id"])):
                catalog.reject_sentence("bad-id", "image_id or id is not a number or text", ref, None,
                                        ann.get("caption") if isinstance(ann.get("caption"), str) else None)
                continue
            name = by_id.get(ann["image_id"])
            if name is None:
                catalog.reject_sentence(
                    "unknown-image", f"image_id {ann['image_id']} is not in 'images'", ref, None, ann.get("caption")
                )
                continue
            if ann.get("id") is not None and ann["id"] in seen_ann:
                catalog.reject_sentence(
                    "duplicate-id",
                    f"annotation {ann['id']} already given at {seen_ann[ann['id']]}",
                    ref,
                    name,
                    ann.get("caption"),
                )
                continue
            seen_ann[ann.get("id", ref)] = ref
            images[name]["had_captions"] = True
            sent = _sentence(catalog, ann.get("caption"), None, ref, name)
            if sent is not None:
                images[name]["sentences"].append(sent)
    extra = catalog.input_images
    result = _finish(catalog, images, _images_dir(root, images_dir))
    result.input_images += extra
    return result


def read_source(fmt: str, root: Path, captions: str = "", split_files: str = "", split_from: str = "",
                images_dir: str = "") -> Catalog:
    if fmt in ("flickr8k", "flickr30k"):
        return read_flickr(root, captions, split_files, images_dir, fmt=fmt)
    if fmt == "karpathy":
        return read_karpathy(root, captions, images_dir)
    if fmt == "coco":
        return read_coco(root, captions, split_files, split_from, images_dir)
    raise ValueError(f"unknown format {fmt!r}")
