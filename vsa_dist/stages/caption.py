"""``vsa caption``: caption images with a registered generator.

    vsa caption photo.jpg more.jpg --model models:/vsa-captioner@champion
    vsa caption ../shared/data/flickr8k-mini/Images --model models:/vsa-captioner/3 --beam 5
    vsa caption ~/photos --regions 5 --model models:/vsa-region-captioner@champion --html captions.html

The model is pulled from the MLflow registry (``MLFLOW_TRACKING_URI``, default the local sqlite store),
the images' features are extracted with the backbone the model was trained on, and one line per image
is printed: ``path<TAB>caption``, and with ``--regions N`` N more: ``path<TAB>x1,y1,x2,y2<TAB>caption``
for the image's top regions; ``--format jsonl``: one JSON object per image (``image``, ``caption``, ``regions``
with ``box`` and ``caption``). A folder stands for the images in it and its subfolders (every type PIL decodes).
``--html PAGE`` also writes a page of the images with their captions and their regions' boxes.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import mlflow
from tqdm import tqdm

from vsa_dist import config as cfglib
from vsa_dist import console
from vsa_dist.configs import CaptionConfig
from vsa_dist.data.images import DEFAULT_MAX_PIXELS, find_images, open_rgb
from vsa_dist.io import atomic_write_bytes
from vsa_dist.pages import colour, thumbnail
from vsa_dist.registry import resolve_model
from vsa_dist.stages import run_stage
from vsa_dist.tracking import tracking_uri


def image_files(items: list[str]) -> list[Path]:
    files = find_images(items)
    for item in map(Path, items):
        if item.is_dir() and not any(f.is_relative_to(item) for f in files):
            raise cfglib.ConfigError(f"{item}: no images in this folder or its subfolders (no file of a type PIL "
                                     "decodes)")
    return files


def load_captioner(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The captioner at ``uri`` (``vsa_dist.serving.Captioner``), built from its own artifacts: no code from the
    model folder runs, nothing is unpickled; with where ``uri`` led (``registry.ResolvedModel``). The registry is
    asked first: a model that is not there is one line before torch is imported."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        resolved = resolve_model(uri)
        from vsa_dist import serving  # lazy: torch and the CNN take seconds; only once the model is found

        return serving.load_captioner(resolved, max_pixels), resolved
    except mlflow.exceptions.MlflowException as err:
        raise cfglib.ConfigError(f"model {uri}: {err.message} (tracking store {tracking_uri()})") from err
    except ValueError as err:
        raise cfglib.ConfigError(f"model {uri}: {err}") from err


def _read(path: Path) -> tuple[bytes, str]:
    """A file's bytes, or no bytes and why (the image then gets an error line, the others are still captioned)."""
    try:
        return path.read_bytes(), ""
    except OSError as err:
        return b"", f"cannot read: {err.strerror or err}"


def run(cfg: CaptionConfig) -> list[tuple[str, str]]:
    """Print ``path<TAB>caption`` per image (and its regions), or a JSON object per image; an image that cannot be
    captioned gets ``path: error: reason`` on stderr and the others go on. Exits 1 when any image failed."""
    files = image_files(cfg.images)
    captioner, resolved = load_captioner(cfg.model, cfg.max_pixels)
    console.say(f"vsa caption: model {resolved.label()}")
    regions = cfg.regions
    if regions and not captioner.region_trained:
        console.say(f"vsa caption: warning: {resolved.label()} was trained on whole images only (no --snippets): its "
                    "captions of regions would say what it says of the whole image; captioning whole images only")
        regions = 0
    results, failed, page = [], 0, []
    bar = tqdm(total=len(files), desc="vsa caption", unit="image", file=console.err(), disable=None, leave=False)
    for start in range(0, len(files), cfg.batch_size):
        part = files[start:start + cfg.batch_size]
        read = [_read(p) for p in part]
        described = captioner.describe([data for data, _ in read], names=[str(p) for p in part], beam=cfg.beam,
                                       regions=regions)
        bar.update(len(part))
        for path, (data, read_error), result in zip(part, read, described):
            if read_error or result.error:
                bar.write(f"{path}: error: {read_error or result.error}", file=console.err())
                failed += 1
                continue
            if cfg.format == "jsonl":
                print(json.dumps({"image": str(path), "caption": result.caption,
                                  "regions": [{"box": [round(v, 1) for v in box], "caption": said}
                                              for box, said in result.regions]},
                                 ensure_ascii=False), flush=True)
            else:
                print(f"{path}\t{result.caption}", flush=True)
            results.append((str(path), result.caption))
            for box, region_caption in result.regions:
                corners = ",".join(f"{v:g}" for v in box)
                if cfg.format == "tsv":
                    print(f"{path}\t{corners}\t{region_caption}", flush=True)
                results.append((f"{path}#{corners}", region_caption))
            if cfg.html:
                page.append((path, data, result))
    bar.close()
    if cfg.html:
        write_page(Path(cfg.html), resolved.label(), page)
        print(f"vsa caption: page {cfg.html}", file=console.err(), flush=True)
    if failed:
        print(f"vsa caption: {len(files) - failed} of {len(files)} images captioned; {failed} failed (see above)",
              file=console.err(), flush=True)
        raise SystemExit(1)
    return results


def figure(path: Path, data: bytes, result, width: int = 320) -> str:
    """One image as an inline SVG (its boxes drawn in the image's own pixel coordinates, scaled with it) with its
    caption and its regions' captions, each in its box's colour; hovering a region's caption lights its box."""
    shown_w, shown_h = open_rgb(data).size
    boxes = "".join(f'<rect class="r{r}" x="{x1:g}" y="{y1:g}" width="{x2 - x1:g}" height="{y2 - y1:g}" '
                    f'stroke="{colour(r)}"/>' for r, ((x1, y1, x2, y2), _) in enumerate(result.regions, start=1))
    said = "".join(f'<li data-r="r{r}" style="border-color:{colour(r)}">{html.escape(text)}</li>'
                   for r, (_, text) in enumerate(result.regions, start=1))
    height = round(width * shown_h / shown_w)
    return (f'<figure><svg viewBox="0 0 {shown_w} {shown_h}" width="{width}" height="{height}">'
            f'<image href="{thumbnail(data, 2 * width)}" width="{shown_w}" height="{shown_h}"/>{boxes}</svg>'
            f"<figcaption><b>{html.escape(result.caption)}</b><ul>{said}</ul>"
            f"<small>{html.escape(str(path))}</small></figcaption></figure>")


def write_page(page: Path, model: str, described: list) -> None:
    """The captioned images as one page that stands alone (images inline), at their own aspect ratios."""
    cards = "\n".join(figure(path, data, result) for path, data, result in described)
    atomic_write_bytes(page, f"""<!doctype html><meta charset="utf-8"><title>vsa caption</title>
<style>body{{font-family:sans-serif;margin:1.5em}} main{{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}}
figure{{margin:0;width:320px}} rect{{fill:none;stroke-width:3;vector-effect:non-scaling-stroke;opacity:.8}}
rect.lit{{stroke-width:6;opacity:1}} ul{{padding:0;margin:.3em 0;list-style:none}}
li{{border-left:6px solid;padding-left:6px;margin:2px 0;cursor:default}} li.lit{{background:#eee}}</style>
<h1>{len(described)} images captioned</h1><p>model {html.escape(model)}</p><main>{cards}</main>
<script>
for (const item of document.querySelectorAll("li[data-r]")) {{
  const box = item.closest("figure").querySelector("rect." + item.dataset.r);
  for (const on of [item, box]) {{
    on.addEventListener("mouseenter", () => {{ item.classList.add("lit"); box.classList.add("lit"); }});
    on.addEventListener("mouseleave", () => {{ item.classList.remove("lit"); box.classList.remove("lit"); }});
  }}
}}
</script>
""".encode())


def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    return run_stage(CaptionConfig, run, argv, prog="vsa caption", preset=None, input_errors=(ValueError,))
