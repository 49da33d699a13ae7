"""``vsa search`` with a model trained and registered here, pulled from a real MLflow server: text → images over
real shards and a folder of real photos (a broken one among them), image → sentences, the index reused and
updated, JSON lines and the HTML page."""

from __future__ import annotations

import json
import shutil

from conftest import copy_images, truncated_jpeg


def test_search_finds_images_by_their_own_captions(tmp_path, mini_features, mini_shards, mini_images, ray_cluster,
                                                    mlflow_server, monkeypatch, capsys):
    from vsa_dist.cli import main as vsa
    from vsa_dist.stages.search import Searcher, build_index, index_folder, load_searcher

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    vsa(["train-align", "--features", str(mini_features), "--out", str(tmp_path / "align"), "--preset",
         "train_align_modern", "--epochs", "12", "--hardest-warmup-epochs", "4", "--batch-size", "20",
         "--register-as", "vsa-align-search", "--experiment", "test-search", "--test", "false", "--progress", "false"])
    model = "models:/vsa-align-search@champion"
    shards = tmp_path / "shards"
    shutil.copytree(mini_shards, shards)
    capsys.readouterr()

    # Each train image searched for by its first caption among all 100: in the top 5 for most of them (the model
    # trained on them; by chance 5 %).
    searcher = load_searcher(model)
    index = build_index(searcher, shards, ["train"], 32, progress=False)
    assert len(index.names) == 100 and index.vectors.shape[:2] == (100, 20) and not index.skipped
    found = 0
    for row, said in enumerate(index.sentences):
        scores = searcher.image_scores(index.vectors, said[0])
        found += int((scores > scores[row]).sum()) < 5
    assert found >= 50, found

    # The command: JSON lines, best first, from the index built above (nothing embedded again).
    listing = index_folder(shards) / f"{searcher.model_key}-train.json"
    built = listing.stat().st_mtime_ns
    query = index.sentences[0][0]
    hits = vsa(["search", query, str(shards), "--splits", "train", "--model", model, "--top", "5", "--format",
                "jsonl", "--html", str(tmp_path / "hits.html")])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert lines == hits and [h["rank"] for h in lines] == [1, 2, 3, 4, 5]
    # the model named as the registry resolved it; the shard folder left as it was built (the index lives elsewhere)
    assert "vsa search: model vsa-align-search/1 (@champion" in captured.err, captured.err
    assert sorted(p.name for p in shards.iterdir()) == sorted(p.name for p in mini_shards.iterdir())
    assert [h["score"] for h in lines] == sorted((h["score"] for h in lines), reverse=True)
    assert all(h["image"].startswith(str(shards)) for h in lines)
    assert listing.stat().st_mtime_ns == built
    page = (tmp_path / "hits.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 5 and query.split()[1] in page
    assert "model vsa-align-search/1 (@champion" in page

    # Image → sentences: a train image's own sentences lead the sentences of all train images.
    image = next(p for p in mini_images if p.stem == index.names[0])
    hits = vsa(["search", "--image", str(image), str(shards), "--splits", "train", "--model", model, "--top", "5"])
    assert capsys.readouterr().out.count("\n") == 5
    assert sum(hit["sentence"] in index.sentences[0] for hit in hits) >= 1, hits

    # A folder of photos: every image found (a broken one named and skipped, a text file ignored), the index
    # updated for a new photo without embedding the others again.
    photos = tmp_path / "photos"
    copy_images(mini_images[:6], photos / "trip")
    truncated_jpeg(mini_images[6], photos / "broken.jpg")
    (photos / "notes.txt").write_text("not an image")
    hits = vsa(["search", "a dog", str(photos), "--model", model, "--top", "10"])
    captured = capsys.readouterr()
    assert len(hits) == 6 and all("/trip/" in h["image"] for h in hits)
    assert f"{photos / 'broken.jpg'}: skipped:" in captured.err and "notes.txt" not in captured.err
    saved = json.loads((index_folder(photos) / f"{searcher.model_key}.json").read_text())
    stamps = {entry["name"]: entry["stamp"] for entry in saved["images"]}
    copy_images(mini_images[7:8], photos)
    embedded = []
    embed = Searcher.embed_images
    monkeypatch.setattr(Searcher, "embed_images", lambda self, jpegs, names: embedded.extend(names) or embed(
        self, jpegs, names))
    hits = vsa(["search", "a dog", str(photos), "--model", model, "--top", "10"])
    capsys.readouterr()
    assert embedded == [mini_images[7].name]                    # only the new photo was embedded
    assert len(hits) == 7 and mini_images[7].name in {h["image"].rsplit("/", 1)[1] for h in hits}
    again = json.loads((index_folder(photos) / f"{searcher.model_key}.json").read_text())
    assert {e["name"]: e["stamp"] for e in again["images"] if e["name"] in stamps} == stamps


def test_queries_with_nothing_to_rank_by_and_a_bomb_query_image_are_refused_before_indexing(
        tmp_path, mini_features, mini_shards, mini_images, capsys):
    """An untrained model is enough: what is checked is what the command accepts, not how well it ranks."""
    from conftest import fails, jpeg_claiming_size, untrained_alignment_checkpoint

    from vsa_dist.cli import main as vsa
    from vsa_dist.stages.search import index_folder

    model = str(untrained_alignment_checkpoint(mini_features, tmp_path / "align.pt"))
    photos = tmp_path / "photos"
    copy_images(mini_images[:3], photos)
    shards = tmp_path / "shards"
    shutil.copytree(mini_shards, shards)
    assert "the sentence is empty" in fails(capsys, "search", "   ", str(photos), "--model", model)
    assert "none of its words is in the model's vocabulary" in fails(
        capsys, "search", "qwertyuiop zxcvb", str(photos), "--model", model)
    bomb = jpeg_claiming_size(mini_images[0], tmp_path / "bomb.jpg", 30000, 30000)
    assert str(bomb) in fails(capsys, "search", "--image", str(bomb), str(shards), "--model", model)
    assert not index_folder(shards).exists() and not index_folder(photos).exists()  # refused before indexing
    # a word it does not know is named, and the others still rank the images
    hits = vsa(["search", "a dog qwertyuiop", str(photos), "--model", model, "--top", "3"])
    assert len(hits) == 3 and "left out: qwertyuiop" in capsys.readouterr().err


def test_a_damaged_index_is_never_trusted_but_said_and_rebuilt(tmp_path, mini_features, mini_images, capsys):
    """Bytes flipped inside the vectors (the size kept), an empty file, fewer rows than images, a listing whose
    images are an object: each was a silent wrong answer (nan scores, another top 3) or a traceback."""
    import io

    import numpy as np
    from conftest import untrained_alignment_checkpoint

    from vsa_dist.cli import main as vsa
    from vsa_dist.stages.search import index_folder

    model = str(untrained_alignment_checkpoint(mini_features, tmp_path / "align.pt"))
    photos = tmp_path / "photos"
    copy_images(mini_images[:5], photos)
    query = ["search", "a dog runs", str(photos), "--model", model, "--format", "jsonl"]
    truth = vsa(query)
    capsys.readouterr()
    vectors = next(index_folder(photos).glob("*.npy"))
    listing = vectors.with_suffix(".json")
    intact = vectors.read_bytes(), listing.read_text()

    def fewer_rows() -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.load(vectors)[:3], allow_pickle=False)
        vectors.write_bytes(buffer.getvalue())

    damage = {
        "flipped": lambda: vectors.write_bytes(intact[0][:-64] + bytes(255 - b for b in intact[0][-64:])),
        "empty": lambda: vectors.write_bytes(b""),
        "fewer rows": fewer_rows,
        "images an object": lambda: listing.write_text(json.dumps({**json.loads(intact[1]), "images": {}})),
    }
    for what, do in damage.items():
        vectors.write_bytes(intact[0])
        listing.write_text(intact[1])
        do()
        assert vsa(query) == truth, what
        err = capsys.readouterr().err
        assert "rebuilding the index" in err and str(index_folder(photos)) in err, (what, err)
        assert vsa(query) == truth and "rebuilding" not in capsys.readouterr().err  # the rebuilt one holds
