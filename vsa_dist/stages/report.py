"""``vsa report RUN``: one self-contained HTML page to look at what a run learned.

    vsa report runs/mini                              # RUN/features, RUN/align, RUN/mrnn → RUN/report.html
    vsa report runs/flickr8k --features runs/flickr8k/features --region-captioner runs/flickr8k/mrnn-regions/best.pt

For a few test images: the image with its region boxes; each reference sentence with its snippets
(the snippet MRF over the alignment model's scores) coloured like the region they were aligned to; the
generated caption and region captions beside the references; the top-5 sentences the alignment model
retrieves for the image, and the top-5 images for its first sentence; and the training curves of both
runs from MLflow. Images are embedded, so the file opens anywhere; it is logged to the generator's
MLflow run as an artifact.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from vsa_dist import storage
from vsa_dist.checkpoints import generator_decoding, load_alignment, load_generator
from vsa_dist.configs import ReportConfig
from vsa_dist.data.images import check_image
from vsa_dist.data.manifests import as_pixel_input, source_shards, takes_pixels
from vsa_dist.data.pairs import word_index
from vsa_dist.data.shards import jpegs_by_id
from vsa_dist.data.splits import load_split
from vsa_dist.eval.retrieval import PAPER_ROW, score_matrix
from vsa_dist.examples import CAPTION_COLOUR, pick, render_tiles
from vsa_dist.features.format import check_model_matches, check_same_settings, load_features_manifest
from vsa_dist.io import atomic_write_bytes
from vsa_dist.models.decoding import generate
from vsa_dist.models.snippets import align_words, snippets
from vsa_dist.pages import colour, thumbnail
from vsa_dist.stages import run_stage
from vsa_dist.tracking import tracking_uri


# ----------------------------------------------------------------------------------- what goes on the page
def image_jpegs(features_manifest: dict[str, Any], features_dir: str, split: str, wanted: set[str]) -> dict[str, bytes]:
    shards = source_shards(features_manifest, features_dir)
    if shards is None:
        raise FileNotFoundError(
            f"{features_dir}: the image shards it was made from are not found; the page needs the images"
        )
    return jpegs_by_id(shards, [split], wanted)


def curves_png(histories: dict[str, dict[str, list[tuple[int, float]]]]) -> str:
    # a Figure of its own, not pyplot's: no window backend and no global state, the same on a machine without display
    panels = [(run, key, points) for run, metrics in histories.items() for key, points in metrics.items() if points]
    figure = Figure(figsize=(3.6 * max(len(panels), 1), 2.8))
    axes = figure.subplots(1, max(len(panels), 1), squeeze=False)
    for ax, (run, key, points) in zip(axes[0], panels):
        steps, values = zip(*sorted(points))
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_title(f"{run}: {key}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def read_summaries(cfg: ReportConfig) -> dict[str, dict[str, Any]]:
    """The stages' summary.json files beside their checkpoints (MLflow run id, test scores, minutes), where present."""
    paths = {"align": storage.join(storage.parent(cfg.align), "summary.json"),
             "mrnn": storage.join(storage.parent(cfg.captioner), "summary.json")}
    return {stage: json.loads(storage.read_bytes(path)) for stage, path in paths.items() if storage.exists(path)}


def metric_histories(run_ids: dict[str, str], keys: dict[str, tuple[str, ...]]) -> dict[str, dict[str, list]]:
    """Per-epoch metrics of the named runs, from the tracking store."""
    client = MlflowClient(tracking_uri())
    return {name: {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys[name]}
            for name, run_id in run_ids.items()}


def sentence_html(words: list[str], pieces: list[tuple[int, int, int]]) -> str:
    spans = []
    for region, start, end in pieces:
        where = "the whole image" if region == 0 else f"region {region}"
        spans.append(f'<span class="snippet" data-region="{region}" style="border-color:{colour(region)}" '
                     f'title="{where}">{html.escape(" ".join(words[start:end]))}</span>')
    return " ".join(spans)


# Karpathy & Fei-Fei (2015) on Flickr8K: Table 1 (BRNN; retrieval) and Table 2 (MRNN; BLEU, no METEOR or CIDEr)
PAPER_CAPTIONS = {"bleu1": 57.9, "bleu2": 38.3, "bleu3": 24.5, "bleu4": 16.0}
CAPTION_COLUMNS = (("bleu1", "BLEU-1"), ("bleu2", "BLEU-2"), ("bleu3", "BLEU-3"), ("bleu4", "BLEU-4"),
                   ("meteor", "METEOR"), ("rouge_l", "ROUGE-L"), ("cider", "CIDEr"))


def metrics_html(retrieval: dict[str, Any] | None, captions: dict[str, Any] | None, minutes: dict[str, float]) -> str:
    """The run's test scores under the paper's row, in the units papers print (R@K in %, caption scores x 100); a
    score above the paper's is marked. Empty parts say why."""
    def cell(value: float | None, paper: float | None, lower_is_better: bool = False) -> str:
        if value is None:
            return "<td>–</td>"
        better = paper is not None and (value < paper if lower_is_better else value > paper)
        return f'<td class="{"better" if better else ""}">{value:.1f}</td>'

    head = "".join(f"<th>{d} R@{k}</th>" for d in ("image→text", "text→image") for k in (1, 5, 10)) + \
        "<th>med r →text</th><th>med r →image</th>"
    paper = "".join(f"<td>{PAPER_ROW[d][k]:.1f}</td>" for d in ("annotation", "search") for k in ("r1", "r5", "r10"))
    paper += f"<td>{PAPER_ROW['annotation']['medr']:.1f}</td><td>{PAPER_ROW['search']['medr']:.1f}</td>"
    if retrieval:
        ours = "".join(cell(retrieval[d][k], PAPER_ROW[d][k])
                       for d in ("annotation", "search") for k in ("r1", "r5", "r10"))
        ours += "".join(cell(retrieval[d]["medr"], PAPER_ROW[d]["medr"], True) for d in ("annotation", "search"))
    else:
        ours = '<td colspan="8">not tested (trained with --test false)</td>'
    caption_head = "".join(f"<th>{label}</th>" for _, label in CAPTION_COLUMNS)
    caption_paper = "".join(f"<td>{PAPER_CAPTIONS[k]:.1f}</td>" if k in PAPER_CAPTIONS else "<td>–</td>"
                            for k, _ in CAPTION_COLUMNS)
    caption_ours = "".join(cell(100 * captions[k], PAPER_CAPTIONS.get(k)) for k, _ in CAPTION_COLUMNS) if captions \
        else f'<td colspan="{len(CAPTION_COLUMNS)}">not tested (trained with --test false)</td>'
    took = lambda stage: f"{minutes[stage]:.1f}" if stage in minutes else "–"  # noqa: E731
    return f"""<table class="metrics" id="retrieval-metrics">
<caption>Retrieval on the test split, every image against every sentence (R@K in %; green: better than the paper's
Flickr8K row)</caption>
<thead><tr><th></th>{head}<th>train min</th></tr></thead>
<tbody><tr><th>this run</th>{ours}<td>{took("align")}</td></tr>
<tr class="paper"><th>paper (BRNN)</th>{paper}<td></td></tr></tbody></table>
<table class="metrics" id="caption-metrics"><caption>Captions of the test images (x 100)</caption>
<thead><tr><th></th>{caption_head}<th>train min</th></tr></thead>
<tbody><tr><th>this run</th>{caption_ours}<td>{took("mrnn")}</td></tr>
<tr class="paper"><th>paper (MRNN)</th>{caption_paper}<td></td></tr></tbody></table>"""


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; }}
table.metrics {{ border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }}
table.metrics caption {{ text-align: left; font-weight: 600; padding-bottom: 4px; }}
table.metrics th, table.metrics td {{ border-bottom: 1px solid #ddd; padding: 3px 9px; text-align: right; }}
table.metrics tr.paper {{ color: #666; }} table.metrics td.better {{ color: #1a7f37; font-weight: 600; }}
main.examples {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 0 32px; }}
section.example {{ border-top: 1px solid #ddd; padding: 16px 0; }}
.figure {{ position: relative; width: 100%; max-width: 360px; margin-bottom: 8px; }}
.figure img {{ display: block; width: 100%; height: auto; }}
.figure svg {{ position: absolute; left: 0; top: 0; width: 100%; height: 100%; }}
.figure rect {{ pointer-events: visibleStroke; cursor: pointer; }}
.snippet {{ border-bottom: 3px solid; padding: 0 1px; cursor: pointer; }}
.lit {{ background: #fff3b0; }} rect.lit {{ stroke-width: 7; }} rect.dim {{ stroke-opacity: 0.2; }}
rect.extra {{ display: none; }} section.all rect.extra, rect.extra.lit {{ display: inline; }}
.swatch {{ display: inline-block; width: 10px; height: 10px; margin-right: 6px; }}
.generated {{ font-size: 16px; font-weight: 600; }}
.hit {{ color: #1a7f37; }} .miss {{ color: #555; }}
.search img {{ height: 64px; margin-right: 4px; border: 3px solid transparent; }}
.search img.hit {{ border-color: #1a7f37; }}
img.curves {{ max-width: 100%; }}
h2 {{ margin-top: 28px; }} h4 {{ margin: 10px 0 4px; }} ol, ul {{ margin: 0; padding-left: 20px; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{subtitle}</p>
{metrics}
<h2>Test images</h2>
<p>Each photo shows the boxes of its described regions. Hover a snippet to see its region, or a box to see its words;
tick "all regions" to see every box.</p>
<main class="examples">
{examples}
</main>
<h2>Training curves</h2>
<img class="curves" alt="training curves" src="{curves}">
<script>
// A snippet and its region's box light up together (and the other boxes dim), from either side.
function light(section, region, on) {{
  section.querySelectorAll("rect").forEach(r => {{
    r.classList.toggle("lit", on && r.dataset.region === region);
    r.classList.toggle("dim", on && r.dataset.region !== region);
  }});
  section.querySelectorAll(".snippet").forEach(s => s.classList.toggle("lit", on && s.dataset.region === region));
}}
document.querySelectorAll("section.example").forEach(section => {{
  section.querySelector("input.all-regions").addEventListener("change", e => {{
    section.classList.toggle("all", e.target.checked);
  }});
  section.querySelectorAll(".snippet, rect").forEach(el => {{
    el.addEventListener("mouseenter", () => light(section, el.dataset.region, true));
    el.addEventListener("mouseleave", () => light(section, el.dataset.region, false));
  }});
}});
// Page health, read by tests/integration/test_report.py in a real browser: every image decoded, nothing went wrong,
// the metrics tables there, and hovering a snippet lights its box.
const problems = [];
window.addEventListener("error", e => problems.push(String(e.message || (e.target && e.target.src) || "error")), true);
window.addEventListener("load", () => {{
  const images = Array.from(document.images);
  document.body.dataset.images = images.length;
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.metricsRows = document.querySelectorAll("table.metrics tbody tr").length;
  const shown = s => Array.from(s.querySelectorAll("rect")).filter(r => getComputedStyle(r).display !== "none").length;
  const sections = Array.from(document.querySelectorAll("section.example"));
  document.body.dataset.boxesShown = Math.max(0, ...sections.map(shown));
  if (sections.length) {{
    const toggle = sections[0].querySelector("input.all-regions");
    toggle.click();
    document.body.dataset.boxesAll = shown(sections[0]);
    toggle.click();
  }}
  const snippet = Array.from(document.querySelectorAll(".snippet")).find(s => s.dataset.region !== "0");
  if (snippet) {{
    snippet.dispatchEvent(new MouseEvent("mouseenter"));
    const box = snippet.closest("section").querySelector(`rect[data-region="${{snippet.dataset.region}}"]`);
    document.body.dataset.hoverLightsBox = String(Boolean(box && box.classList.contains("lit")));
    snippet.dispatchEvent(new MouseEvent("mouseleave"));
  }}
  document.body.dataset.problems = problems.length;
}});
</script>
</body></html>
"""


def render_example(
    image_id: str,
    jpeg: bytes,
    boxes: list[list[float]],
    caption: str,
    region_captions: list[tuple[int, str]],
    sentences: list[tuple[list[str], list[tuple[int, int, int]]]],
    annotation: list[tuple[str, bool]],
    search_query: str,
    search: list[tuple[str, bool]],
    size: int,
) -> str:
    width, height = boxes[0][2], boxes[0][3]
    # drawn: the described regions' boxes; the others (19 in all would bury the photo) show while a snippet of theirs
    # is hovered, or all at once from the page's "all regions" box
    described = {r for r, _ in region_captions}
    rects = "".join(
        f'<rect data-region="{r}" class="{"" if r in described else "extra"}" x="{boxes[r][0]:.1f}" '
        f'y="{boxes[r][1]:.1f}" width="{boxes[r][2] - boxes[r][0]:.1f}" height="{boxes[r][3] - boxes[r][1]:.1f}" '
        f'fill="none" stroke="{colour(r)}" stroke-width="3"><title>region {r}</title></rect>'
        for r in range(1, len(boxes)))
    regions_html = "".join(f'<li><span class="swatch" style="background:{colour(r)}"></span>'
                           f'region {r}: {html.escape(text)}</li>' for r, text in region_captions)
    references = "".join(f"<li>{sentence_html(words, pieces)}</li>" for words, pieces in sentences)
    retrieved = "".join(f'<li class="{"hit" if hit else "miss"}">{html.escape(text)}</li>' for text, hit in annotation)
    images = "".join(
        f'<img class="{"hit" if hit else "miss"}" alt="retrieved image" src="{src}">' for src, hit in search
    )
    return f"""<section class="example" id="{html.escape(image_id)}">
<div class="figure"><img alt="{html.escape(image_id)}" src="{thumbnail(jpeg, size)}">
<svg viewBox="0 0 {width:.0f} {height:.0f}" preserveAspectRatio="none">{rects}</svg></div>
<div class="image-id">{html.escape(image_id)} <label><input type="checkbox" class="all-regions"> all {len(boxes) - 1}
regions</label></div>
<div class="text">
<div class="generated">{html.escape(caption)}</div>
<h4>Regions, described</h4><ul>{regions_html}</ul>
<h4>References, snippets underlined in their region's colour (grey: the whole image)</h4><ul>{references}</ul>
<h4>Top-5 sentences for this image (green: one of its own)</h4><ol>{retrieved}</ol>
<h4>Top-5 images for its sentence “{html.escape(search_query)}” (green: this image)</h4>
<div class="search">{images}</div>
</div></section>"""


def aligner_rows(cfg: ReportConfig, align_state: dict[str, Any], split: dict[str, Any]) -> torch.Tensor:
    """What an aligner that carries its CNN scores the split's images with, in the split's order: its own trunk
    folder's maps (``--align-features``: encoder cached), or the images, decoded from the image shards of its folder
    (encoder full)."""
    folder = cfg.align_features or cfg.features
    settings = as_pixel_input(check_same_settings({folder: load_features_manifest(folder)}), takes_pixels(align_state))
    check_model_matches(folder, settings, align_state)
    own = load_split(folder, cfg.split, {}, 1, image_size=settings["input_size"] if takes_pixels(align_state) else 0)
    row_of = {image_id: row for row, image_id in enumerate(own["image_ids"])}
    missing = [image_id for image_id in split["image_ids"] if image_id not in row_of]
    if missing:
        raise ValueError(f"{folder}: no {cfg.split} image {missing[0]} of {cfg.features} ({len(missing)} missing)")
    # as stored (uint8 images, float16 maps): the model's CNN takes them a few at a time; float32 would be 600 MB
    return torch.from_numpy(own["features"][[row_of[image_id] for image_id in split["image_ids"]]])


def run(cfg: ReportConfig) -> dict[str, Any]:
    manifest = load_features_manifest(cfg.features)
    settings = check_same_settings({cfg.features: manifest})
    aligner, align_state = load_alignment(storage.fetch(cfg.align))
    captioner, caption_state = load_generator(storage.fetch(cfg.captioner))
    region_captioner, region_state = load_generator(storage.fetch(cfg.region_captioner))
    for state in (caption_state, region_state):
        check_model_matches(cfg.features, settings, state)

    split = load_split(cfg.features, cfg.split, word_index(align_state["vocab"]), align_state["config"]["max_words"])
    features, tokens = torch.from_numpy(split["features"]).float(), torch.from_numpy(split["tokens"]).long()
    chosen = pick(cfg.images, split["image_ids"])
    carries_cnn = cfg.align_features or takes_pixels(align_state)
    aligner_input = aligner_rows(cfg, align_state, split) if carries_cnn else features
    if aligner_input is features:
        check_model_matches(cfg.features, settings, align_state)
    with torch.no_grad():
        matrix = score_matrix(aligner, aligner_input, tokens)
        captions = generate(captioner, features[chosen], caption_state["vocab"],
                            *generator_decoding(caption_state, cfg.beam, cfg.length_penalty))
        top_regions = min(cfg.regions, features.shape[1] - 1)
        region_rows = features[chosen, 1:1 + top_regions].reshape(-1, features.shape[-1])
        region_text = generate(region_captioner, region_rows, region_state["vocab"],
                               *generator_decoding(region_state, cfg.region_beam, cfg.region_length_penalty)
                               ) if top_regions else []
        scores, lengths = aligner.word_region_scores(aligner_input[chosen].repeat_interleave(tokens.shape[1], dim=0),
                                                     tokens[chosen].reshape(-1, tokens.shape[-1]))
        assignment, _ = align_words(scores, lengths, cfg.beta)

    image_ids, references = split["image_ids"], split["references"]
    sentence_image, sentence_slot = matrix["image_of"].tolist(), matrix["slot"].tolist()
    sentence_text = [references[i][s] for i, s in zip(sentence_image, sentence_slot)]
    query_of = {i: sentence_image.index(i) for i in chosen}  # each example's shortest sentence
    wanted = {image_ids[i] for i in chosen}
    for i in chosen:
        wanted |= {image_ids[j] for j in matrix["scores"][:, query_of[i]].topk(5).indices.tolist()}
    jpegs = image_jpegs(manifest, cfg.features, cfg.split, wanted)

    # row 0 is the whole image as shown (EXIF orientation applied); rows 1..R the regions, as the feature rows are
    boxes = {image_ids[i]: [[0.0, 0.0, *map(float, check_image(jpegs[image_ids[i]]))]]
             + split["boxes"][i].tolist() for i in chosen}

    max_words = align_state["config"]["max_words"]
    described = [[(r + 1, region_text[n * top_regions + r]) for r in range(top_regions)] for n in range(len(chosen))]
    sections = []
    for n, i in enumerate(chosen):
        sentences = []
        for s in range(tokens.shape[1]):
            row = n * tokens.shape[1] + s
            if lengths[row] == 0:
                continue
            words = split["sentence_tokens"][i][s][:max_words]  # the words the model saw, cut as it cut them
            sentences.append((words, snippets(assignment[row].tolist())))
        annotation = [(sentence_text[j], sentence_image[j] == i) for j in matrix["scores"][i].topk(5).indices.tolist()]
        query = query_of[i]
        search = [
            (thumbnail(jpegs[image_ids[j]], 72), j == i) for j in matrix["scores"][:, query].topk(5).indices.tolist()
        ]
        sections.append(render_example(image_ids[i], jpegs[image_ids[i]], boxes[image_ids[i]], captions[n],
                                       described[n], sentences, annotation, sentence_text[query], search, size=480))

    root = cfg.run[0]
    summaries = read_summaries(cfg)
    histories = metric_histories(
        {panel: summaries[stage]["run_id"] for stage, panel in (("align", "alignment"), ("mrnn", "generator"))
         if stage in summaries},
        {"alignment": ("dev_rsum", "train_loss"), "generator": ("dev_perplexity", "dev_cider")})
    minutes = {stage: s["train_minutes"] for stage, s in summaries.items() if s.get("train_minutes") is not None}
    page = PAGE.format(
        metrics=metrics_html(summaries.get("align", {}).get("test"), summaries.get("mrnn", {}).get("test"), minutes),
        title=f"vsa-dist report: {html.escape(root)}",
        subtitle=html.escape(
            f"{len(chosen)} {cfg.split} images of {cfg.features}; snippets with "
            f"beta {cfg.beta}; {settings['backbone']} {settings['region_mode']} features"
        ),
        curves=curves_png(histories),
        examples="\n".join(sections),
    )
    storage.write_bytes(cfg.out, page.encode("utf-8"))
    if cfg.figure:
        examples = [{"image_id": image_ids[i], "caption": captions[n], "references": references[i],
                     "regions": [{"region": r, "box": boxes[image_ids[i]][r], "caption": text}
                                 for r, text in described[n]]}
                    for n, i in enumerate(chosen)]
        write_figure(cfg.figure, examples, jpegs)
    logged = None
    if cfg.log_to_mlflow and "mrnn" in summaries:
        logged = log_report(page, summaries["mrnn"]["run_id"])
    print(
        f"report: {len(chosen)} images -> {cfg.out}"
        + (f" (MLflow run {logged}, report/report.html)" if logged else ""),
        flush=True,
    )
    return {"out": cfg.out, "images": len(chosen), "mlflow_run_id": logged}


def write_figure(path: str, examples: list[dict[str, Any]], jpegs: dict[str, bytes]) -> None:
    """The examples as one JPEG grid (the caption in blue, each region's caption in its box's colour) and as JSON."""
    tiles = [(jpegs[e["image_id"]], [(e["caption"], CAPTION_COLOUR)]
              + [(f"{r['region']}: {r['caption']}", colour(r["region"])) for r in e["regions"]],
              [(r["box"], colour(r["region"])) for r in e["regions"]]) for e in examples]
    storage.write_bytes(path, render_tiles(tiles))
    as_json = json.dumps(examples, indent=1, ensure_ascii=False).encode("utf-8")
    storage.write_bytes(path.rsplit(".", 1)[0] + ".json", as_json)


def log_report(page: str, run_id: str) -> str:
    """The page as an artifact of the generator's run (named by its summary.json)."""
    with tempfile.TemporaryDirectory(prefix="vsa-report-") as scratch:
        path = Path(scratch) / "report.html"
        atomic_write_bytes(path, page.encode("utf-8"))
        MlflowClient(tracking_uri()).log_artifact(run_id, str(path), artifact_path="report")
    return run_id


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(ReportConfig, run, argv, prog="vsa report", preset=None, input_errors=(ValueError,))
