"""Caption-dataset readers. Each turns one on-disk format into a :class:`Catalog`.

A catalog is the list of images that may go into shards plus every input that cannot (with its
reason), so that ``written + rejected == inputs`` holds for images and for sentences. Per-sample
problems become rejects; a file that cannot be parsed at all raises :class:`InputFormatError`
naming the file and line.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ijson

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


def sentence_reject(code: str, detail: str, ref: str, image: str | None, text: str | None = None) -> dict[str, Any]:
    return {"kind": "sentence", "reason": code, "detail": detail, "source": ref, "image": image, "text": text}


def image_rejects(code: str, detail: str, ref: str, image: str,
                  sentences: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An image goes, and its sentences with it: each is accounted for under its own reference."""
    return [{"kind": "image", "reason": code, "detail": detail, "source": ref, "image": image},
            *(sentence_reject("image-rejected", f"its image was rejected ({code})", sent["ref"], image, sent["raw"])
              for sent in sentences)]


_SCHEMA = """
CREATE TABLE images (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, split TEXT NOT NULL, ref TEXT NOT NULL,
                     had_captions INTEGER NOT NULL DEFAULT 0, reject_code TEXT, reject_detail TEXT, rel_path TEXT,
                     key TEXT, image_id TEXT);
CREATE TABLE sentences (image INTEGER NOT NULL, raw TEXT NOT NULL, tokens TEXT NOT NULL, ref TEXT NOT NULL);
CREATE INDEX sentences_image ON sentences (image);
CREATE TABLE kept (id INTEGER PRIMARY KEY, split TEXT NOT NULL, key TEXT NOT NULL);
CREATE INDEX kept_order ON kept (split, key);
CREATE INDEX kept_key ON kept (key);
CREATE TABLE rejects (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE seen (scope TEXT NOT NULL, ident TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (scope, ident))
    WITHOUT ROWID;
"""


class Catalog:
    """Every image that may go into shards, with its sentences, and every input that cannot (with its reason).

    Held in a scratch SQLite file (unlinked: it goes when the process does), not in memory: a driver's memory must not
    grow with the data set (COCO has 616k sentences; users bring millions), while split conflicts, duplicates and the
    vocabulary are still decided on the whole set. Entries come back ordered by (split, key), a shard's worth at a
    time. Close it (or use ``with``).
    """

    def __init__(self, format: str, source_files: list[Path], scratch: Path | None = None):
        self.format, self.source_files = format, source_files
        self.input_images = self.input_sentences = 0
        self.repairs: list[dict[str, Any]] = []
        # beside the output where it can be (the system's temp folder may be memory, a tmpfs); unlinked once open, so
        # that a killed build leaves nothing behind (one connection and no journal: nothing reopens it by name)
        folder = tempfile.mkdtemp(prefix=".vsa-catalog-", dir=scratch if scratch and scratch.is_dir() else None)
        try:
            self.db = sqlite3.connect(Path(folder) / "catalog.sqlite", isolation_level=None)
            # a scratch file rebuilt on every run: no journal, no fsync; a 16 MiB page cache; sorts in memory
            self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16384; "
                                  "PRAGMA temp_store=MEMORY;" + _SCHEMA + "BEGIN;")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------------- rejects
    def reject_sentence(self, code: str, detail: str, ref: str, image: str | None, text: str | None = None) -> None:
        self._reject(sentence_reject(code, detail, ref, image, text))

    def reject_image(self, code: str, detail: str, ref: str, image: str, sentences: list[dict[str, Any]]) -> None:
        for reject in image_rejects(code, detail, ref, image, sentences):
            self._reject(reject)

    def _reject(self, reject: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO rejects (kind, body) VALUES (?, ?)",
                        (reject["kind"], json.dumps(reject, ensure_ascii=False)))

    def rejects(self) -> Iterator[dict[str, Any]]:
        for (body,) in self.db.execute("SELECT body FROM rejects ORDER BY seq"):
            yield json.loads(body)

    # ------------------------------------------------------------------------------- while reading
    def image(self, name: str, split: str, ref: str, **columns: Any) -> tuple[int, bool]:
        """The row id of image ``name``, added with these values if new; and whether it was new."""
        found = self.db.execute("SELECT id FROM images WHERE name = ?", (name,)).fetchone()
        if found:
            return found[0], False
        names = ["name", "split", "ref", *columns]
        cursor = self.db.execute(f"INSERT INTO images ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                 (name, split, ref, *columns.values()))
        return cursor.lastrowid, True

    def lookup(self, name: str, column: str) -> Any:
        found = self.db.execute(f"SELECT {column} FROM images WHERE name = ?", (name,)).fetchone()
        return found[0] if found else None

    def update(self, row: int, **columns: Any) -> None:
        self.db.execute(f"UPDATE images SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
                        (*columns.values(), row))

    def add_sentence(self, row: int, sentence: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO sentences VALUES (?, ?, ?, ?)",
                        (row, sentence["raw"], json.dumps(sentence["tokens"]), sentence["ref"]))

    def first_seen(self, scope: str, ident: str, value: str) -> str | None:
        """None the first time ``ident`` is seen in ``scope`` (and ``value`` is kept); after that the first value."""
        if self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", (scope, ident, value)).rowcount:
            return None
        return self.db.execute("SELECT value FROM seen WHERE scope = ? AND ident = ?", (scope, ident)).fetchone()[0]

    def _sentences(self, rows: list[int]) -> dict[int, list[dict[str, Any]]]:
        found: dict[int, list[dict[str, Any]]] = {row: [] for row in rows}
        for start in range(0, len(rows), 500):  # well under SQLite's limit on bound parameters
            part = rows[start:start + 500]
            for row, raw, tokens, ref in self.db.execute(
                    f"SELECT image, raw, tokens, ref FROM sentences WHERE image IN ({', '.join('?' * len(part))}) "
                    "ORDER BY rowid", part):
                found[row].append({"raw": raw, "tokens": json.loads(tokens), "ref": ref})
        return found

    # ------------------------------------------------------------------------------- once read
    def finish(self, images_dir: Path) -> Catalog:
        """Decide each image: kept, or rejected (an image whose sentences were all rejected goes too)."""
        self.input_images += self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        counted = ("SELECT i.id, i.name, i.ref, i.reject_code, i.reject_detail, i.had_captions, i.rel_path, i.split, "
                   "i.key, (SELECT COUNT(*) FROM sentences s WHERE s.image = i.id) FROM images i ORDER BY i.id")
        for row, name, ref, code, detail, had_captions, rel, split, key, count in self._cursor(counted):
            if code is None and not count:
                code, detail = "no-captions", "every caption was rejected" if had_captions else "no captions"
            if code is None and (why := _outside_root(rel or name)) is not None:
                code, detail = "outside-root", why
            if code is not None:
                self.reject_image(code, detail, ref, name, self._sentences([row])[row])
                continue
            self.db.execute("INSERT INTO kept VALUES (?, ?, ?)", (row, split, key or sample_key(name)))
        self.images_dir = images_dir
        # two file names that map to one sample key (e.g. a.jpg and a.jpeg): the first keeps it
        clashes = ("SELECT k.id, k.key, i.name, i.ref FROM kept k JOIN images i ON i.id = k.id WHERE k.key IN "
                   "(SELECT key FROM kept GROUP BY key HAVING COUNT(*) > 1) ORDER BY k.key, k.id")
        first: dict[str, str] = {}
        dropped = []
        for row, key, name, ref in self._cursor(clashes):
            if key not in first:
                first[key] = name
            else:
                dropped.append((row, key, name, ref))
        for row, key, name, ref in dropped:  # after the read: rows are not deleted under an open cursor
            self.db.execute("DELETE FROM kept WHERE id = ?", (row,))
            self.reject_image("duplicate-id", f"sample key {key!r} already used by {first[key]}", ref, name,
                              self._sentences([row])[row])
        self.db.execute("COMMIT")
        return self

    def _cursor(self, query: str, *args: Any) -> Iterator[tuple]:
        """Rows of ``query`` read a batch at a time on a cursor of their own (the loop may write other tables)."""
        cursor = self.db.cursor()
        cursor.execute(query, args)
        while batch := cursor.fetchmany(1000):
            yield from batch

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM kept").fetchone()[0]

    def split_sizes(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT split, COUNT(*) FROM kept GROUP BY split ORDER BY split"))

    def entries(self, split: str, size: int) -> Iterator[list[ImageEntry]]:
        """The kept images of ``split`` in key order, ``size`` at a time, each with its sentences."""
        query = ("SELECT k.id, k.key, i.image_id, i.name, i.rel_path, i.ref FROM kept k JOIN images i ON i.id = k.id "
                 "WHERE k.split = ? ORDER BY k.key")
        rows = self._cursor(query, split)
        while chunk := list(itertools.islice(rows, size)):
            sentences = self._sentences([row[0] for row in chunk])
            yield [ImageEntry(key=key, image_id=image_id or sample_key(name), file_name=name,
                              path=self.images_dir / (rel or name), split=split, sentences=sentences[row], ref=ref)
                   for row, key, image_id, name, rel, ref in chunk]

    def tokens(self, splits: tuple[str, ...]) -> Iterator[tuple[str, list[str]]]:
        """(image name, tokens) of every kept sentence in ``splits``."""
        query = ("SELECT i.name, s.tokens FROM sentences s JOIN kept k ON k.id = s.image JOIN images i ON i.id = k.id "
                 f"WHERE k.split IN ({', '.join('?' * len(splits))})")
        for name, tokens in self._cursor(query, *splits):
            yield name, json.loads(tokens)


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
    tokens = [t.lower() for t in tokens if t.strip()]
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
    """A whole JSON file, parsed in memory: only for diagnosing one that does not stream (its line and column)."""
    _require_file(path, "caption file")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))  # a byte-order mark is not part of the JSON
    except UnicodeDecodeError as err:
        raise InputFormatError(path, f"not UTF-8 (byte offset {err.start})") from err
    except json.JSONDecodeError as err:
        raise InputFormatError(path, f"not valid JSON: {err.msg} (column {err.colno})", line=err.lineno) from err
    except RecursionError as err:
        raise InputFormatError(path, _TOO_DEEP) from err


_TOO_DEEP = "JSON nested too deeply to be a caption file"
_MAX_DEPTH = 64  # a caption file nests five deep; far deeper is not one (and would recurse in a parser)


@contextmanager
def _json_file(path: Path) -> Iterator[BinaryIO]:
    """The file open for streaming, past a byte-order mark; a parse error becomes one line naming the file (its line
    and column found by parsing it again in full, which only a broken file pays for)."""
    _require_file(path, "caption file")
    with open(path, "rb") as fh:
        if fh.read(3) != b"\xef\xbb\xbf":
            fh.seek(0)
        try:
            yield fh
        except (ijson.JSONError, UnicodeDecodeError) as err:
            _load_json(path)
            raise InputFormatError(path, f"not valid JSON: {err}") from err


def _json_shape(path: Path) -> dict[str, str]:
    """The type of each top-level member of a JSON object file ("array", "map", "string", …), read as a stream; a
    file whose top level is not an object, or that nests too deeply, is an InputFormatError."""
    shape: dict[str, str] = {}
    depth = 0
    with _json_file(path) as fh:
        for prefix, event, _ in ijson.parse(fh):
            if event in ("start_map", "start_array"):
                depth += 1
                if depth > _MAX_DEPTH:
                    raise InputFormatError(path, _TOO_DEEP)
                if depth == 1 and event == "start_array":
                    raise InputFormatError(path, "expected a JSON object at the top, found a list")
            elif event in ("end_map", "end_array"):
                depth -= 1
            if depth == 0 and event not in ("end_map", "start_map"):
                raise InputFormatError(path, f"expected a JSON object at the top, found {event}")
            if prefix and "." not in prefix and event != "map_key" and prefix not in shape:
                shape[prefix] = event.removeprefix("start_").replace("end_", "")
    return shape


def _json_items(path: Path, member: str) -> Iterator[Any]:
    """Each element of the top-level list ``member``, one at a time."""
    with _json_file(path) as fh:
        yield from ijson.items(fh, f"{member}.item", use_float=True)


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


# --------------------------------------------------------------------------------------- Flickr token
_FLICKR_REPEAT = re.compile(r"^(.+\.jpe?g)\.\d+$", re.IGNORECASE)


def read_flickr(root: Path, captions: str = "", split_files: str = "", images_dir: str = "",
                fmt: str = "flickr8k", scratch: Path | None = None) -> Catalog:
    """Flickr8k / Flickr30k token format: ``<image>#<n>\\t<caption>`` lines plus one image list per split."""
    token_path = (
        Path(captions) if captions else root / ("Flickr8k.token.txt" if fmt == "flickr8k" else "results_20130124.token")
    )
    pattern = split_files or ("Flickr_8k.{split}Images.txt" if fmt == "flickr8k" else "Flickr_30k.{split}Images.txt")
    catalog = Catalog(format=fmt, source_files=[_require_file(token_path, "caption file")], scratch=scratch)
    try:
        _read_split_lists(catalog, root, pattern)
        _read_token_file(catalog, token_path)
        return catalog.finish(_images_dir(root, images_dir))
    except BaseException:
        catalog.close()
        raise


def _read_split_lists(catalog: Catalog, root: Path, pattern: str) -> None:
    """Split lists first, so an image's reference points at the list that named it."""
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
            row, new = catalog.image(name, split, f"{path.name}:{lineno}")
            if not new and (earlier := catalog.lookup(name, "split")) != split:
                # In two splits: keeping it in either would leak between train and test.
                catalog.update(row, split=split, reject_code="split-conflict",
                               reject_detail=f"listed in both {earlier} and {split}")


def _read_token_file(catalog: Catalog, token_path: Path) -> None:
    last: tuple[str, int] | None = None  # an image's captions are on consecutive lines: look it up once
    with open(token_path, "rb") as token_file:  # line by line: a COCO-sized file is never held whole
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
            if (m := _FLICKR_REPEAT.match(name)) and catalog.lookup(name, "id") is None and \
                    catalog.lookup(m.group(1), "split") in (None, UNASSIGNED):
                # Flickr8k's token file names one caption '2258277193_586949ec62.jpg.1#0': it belongs to
                # '…jpg', which has the other four. Folded in and recorded, so the caption is kept.
                catalog.repairs.append(
                    {"source": ref, "from": name, "to": m.group(1), "why": "image name with a repeat suffix"}
                )
                name = m.group(1)
            if last is None or last[0] != name:
                row, _ = catalog.image(name, UNASSIGNED, ref)
                catalog.update(row, had_captions=1)
                last = (name, row)
            row = last[1]
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                catalog.reject_sentence(
                    "not-utf8", "caption is not valid UTF-8", ref, name, body.decode("utf-8", "replace")
                )
                continue
            if (first := catalog.first_seen("caption", f"{name}#{number}", ref)) is not None:
                catalog.reject_sentence(
                    "duplicate-id", f"caption {name}#{number} already given at {first}", ref, name, text
                )
                continue
            if (sent := _sentence(catalog, text, None, ref, name)) is not None:
                catalog.add_sentence(row, sent)


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


def read_karpathy(root: Path, captions: str = "", images_dir: str = "", scratch: Path | None = None) -> Catalog:
    """Karpathy-split JSON: ``images[]`` with filename, optional filepath, split and ``sentences[]``."""
    path = _karpathy_json(root, captions)
    if _json_shape(path).get("images") != "array":
        raise InputFormatError(path, "expected an object with an 'images' list")
    catalog = Catalog(format="karpathy", source_files=[path], scratch=scratch)
    try:
        for index, item in enumerate(_json_items(path, "images")):
            _karpathy_image(catalog, path, index, item)
        return catalog.finish(_images_dir(root, images_dir))
    except BaseException:
        catalog.close()
        raise


def _karpathy_image(catalog: Catalog, path: Path, index: int, item: Any) -> None:
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
        catalog.input_sentences += 1
        raw, tokens = (sent.get("raw"), sent.get("tokens")) if isinstance(sent, dict) else (sent, None)
        if (checked := _sentence(catalog, raw, tokens, f"{ref}.sentences[{s_index}]", name)) is not None:
            kept.append(checked)
    if (first := catalog.lookup(rel, "ref")) is not None:
        # The same image twice is an input too: counted, and rejected with a pointer to the first.
        catalog.input_images += 1
        catalog.reject_image("duplicate-id", f"{rel} already given at {first}", ref, name, kept)
        return
    split = _KARPATHY_SPLITS.get(str(item.get("split", "")))
    reject = None if split is not None else \
        f"split {item.get('split')!r} is not one of {sorted(_KARPATHY_SPLITS)}"
    row, _ = catalog.image(rel, split or UNASSIGNED, ref, had_captions=int(bool(sentences)), rel_path=rel,
                           key=sample_key(name), image_id=str(item.get("cocoid", item.get("imgid", sample_key(name)))),
                           reject_code="unknown-split" if reject else None, reject_detail=reject)
    for sent in kept:
        catalog.add_sentence(row, sent)


# --------------------------------------------------------------------------------------------- COCO
def _coco_subdir(captions_path: Path) -> str:
    m = re.search(r"(train|val|test)(\d{4})", captions_path.name)
    return f"{m.group(1)}{m.group(2)}" if m else ""


def _is_id(value: Any) -> bool:
    """COCO ids are numbers (or text in hand-made files); a list or object there is a broken file, not an id."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _id_key(value: Any) -> str:
    """An id as a lookup key that keeps 1 and "1" apart, as the file does."""
    return f"{type(value).__name__}:{value}"


def read_coco(
    root: Path, captions: str = "", split_files: str = "", split_from: str = "", images_dir: str = "",
    scratch: Path | None = None
) -> Catalog:
    """COCO ``captions_*.json``; the split comes from a Karpathy JSON, from split lists, or the file name."""
    paths = [Path(p) for p in captions.split(",") if p] if captions else sorted(
        list(root.glob("captions_*.json")) + list(root.glob("annotations/captions_*.json")))
    if not paths:
        raise InputFormatError(root / "captions_*.json", "no COCO caption file found: pass --captions")
    catalog = Catalog(format="coco", source_files=list(paths), scratch=scratch)
    try:
        _coco_split_lists(catalog, split_files, split_from)
        for file_index, path in enumerate(paths):
            _read_coco_file(catalog, root, images_dir, path, str(file_index), bool(split_from or split_files))
        return catalog.finish(_images_dir(root, images_dir))
    except BaseException:
        catalog.close()
        raise


def _coco_split_lists(catalog: Catalog, split_files: str, split_from: str) -> None:
    """Each named image's split, from a Karpathy JSON or from split lists (kept in the catalog, not in memory)."""
    if split_from:
        path = _require_file(Path(split_from), "split file")
        catalog.source_files.append(path)
        if _json_shape(path).get("images") == "array":
            for item in _json_items(path, "images"):
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    split = str(item.get("split"))
                    catalog.db.execute("INSERT OR REPLACE INTO seen VALUES ('split', ?, ?)",
                                       (item["filename"], _KARPATHY_SPLITS.get(split, split)))
    elif split_files:
        for split in SPLITS:
            path = Path(split_files.format(split=split))
            if path.is_file():
                catalog.source_files.append(path)
                for line in _text_lines(path):
                    if line.strip():
                        catalog.db.execute("INSERT OR REPLACE INTO seen VALUES ('split', ?, ?)", (line.strip(), split))


def _read_coco_file(catalog: Catalog, root: Path, images_dir: str, path: Path, scope: str, split_given: bool) -> None:
    shape = _json_shape(path)
    if shape.get("images") != "array" or shape.get("annotations") != "array":
        raise InputFormatError(path, "expected an object with 'images' and 'annotations' lists")
    subdir = _coco_subdir(path)
    default_split = {"train": "train", "val": "dev", "test": "test"}.get(re.sub(r"\d+", "", subdir), UNASSIGNED)
    folder = _images_dir(root, images_dir)
    for index, item in enumerate(_json_items(path, "images")):
        ref = f"{path.name}:images[{index}]"
        if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("file_name"), str):
            raise InputFormatError(path, f"images[{index}] needs 'id' and 'file_name'")
        if not _is_id(item["id"]):
            raise InputFormatError(path, f"images[{index}].id is {type(item['id']).__name__}, not a number or text")
        name = item["file_name"]
        first = catalog.lookup(name, "ref") or catalog.first_seen(f"id{scope}", _id_key(item["id"]), name)
        if first is not None:
            catalog.input_images += 1
            catalog.reject_image("duplicate-id", f"image {item['id']} / {name} already given at {first}", ref, name, [])
            continue
        split = default_split
        if split_given:
            found = catalog.db.execute("SELECT value FROM seen WHERE scope = 'split' AND ident = ?", (name,)).fetchone()
            split = found[0] if found else UNASSIGNED
        catalog.image(name, split, ref, rel_path=f"{subdir}/{name}" if subdir and not (folder / name).exists()
                      else name, image_id=str(item["id"]), key=sample_key(name))
    for index, ann in enumerate(_json_items(path, "annotations")):
        ref = f"{path.name}:annotations[{index}]"
        catalog.input_sentences += 1
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise InputFormatError(path, f"annotations[{index}] needs 'image_id' and 'caption'")
        caption = ann.get("caption")
        if not _is_id(ann["image_id"]) or not (ann.get("id") is None or _is_id(ann["id"])):
            catalog.reject_sentence("bad-id", "image_id or id is not a number or text", ref, None,
                                    caption if isinstance(caption, str) else None)
            continue
        found = catalog.db.execute("SELECT value FROM seen WHERE scope = ? AND ident = ?",
                                   (f"id{scope}", _id_key(ann["image_id"]))).fetchone()
        if found is None:
            catalog.reject_sentence("unknown-image", f"image_id {ann['image_id']} is not in 'images'", ref, None,
                                    caption)
            continue
        name = found[0]
        if ann.get("id") is not None and \
                (first := catalog.first_seen(f"annotation{scope}", _id_key(ann["id"]), ref)) is not None:
            catalog.reject_sentence("duplicate-id", f"annotation {ann['id']} already given at {first}", ref, name,
                                    caption)
            continue
        row = catalog.lookup(name, "id")
        catalog.update(row, had_captions=1)
        if (sent := _sentence(catalog, caption, None, ref, name)) is not None:
            catalog.add_sentence(row, sent)


def read_source(fmt: str, root: Path, captions: str = "", split_files: str = "", split_from: str = "",
                images_dir: str = "", scratch: Path | None = None) -> Catalog:
    """The catalog of a data set in ``fmt``; its scratch file goes in ``scratch`` (a folder that exists) if given."""
    if fmt in ("flickr8k", "flickr30k"):
        return read_flickr(root, captions, split_files, images_dir, fmt=fmt, scratch=scratch)
    if fmt == "karpathy":
        return read_karpathy(root, captions, images_dir, scratch)
    if fmt == "coco":
        return read_coco(root, captions, split_files, split_from, images_dir, scratch)
    raise ValueError(f"unknown format {fmt!r}")
