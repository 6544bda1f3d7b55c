"""Step 5: ground-truth boxes drawn on their images.

    python bbox_img.py config/nih_densenet121.py --max_drawn 20
    python bbox_img.py config/nih_densenet121.py --box_source chestx_det --data_root data/chestx_det/images

Two annotation sources: NIH bbox.csv (x, y, w, h) and ChestX-Det json (syms, boxes [x1, y1, x2, y2],
polygons); both are in 1024-pixel coordinates and are scaled to each image's real size. Each disease
has one colour across the project. Per image two files, each with a legend strip below the image:
    {stem}_boxes.png   the image with every box (and polygon) outlined
    {stem}_blend.png   the boxes filled and blended in at alpha 0.3, polygons outlined
Images named in the annotations but absent from data_root are counted and reported, not fatal.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
from collections import Counter

from tqdm import tqdm

from dataset.boxes import BLEND_ALPHA, add_legend, draw_boxes, load_boxes, scale_to
from dataset.files import read_image
from dataset.nih import resolve_images
from pipeline.cache import claim, holds_claims, save_png
from pipeline.cli import PipelineError, configure, main, print_config
from pipeline.outputs import bbox_dir, box_figure

# -----------------------------------------------------------------------------
# dataset, data_root (the ChestX-Det images for box_source chestx_det) and save_root are example_selection.py's.
box_source: "nih | chestx_det" = "nih"  # nih (bbox.csv) | chestx_det (ChestX_Det_{train,test}.json)
box_file = ""                   # annotation file; default dataset/nih14/bbox.csv or dataset/chestx_det/ChestX_Det_test.json
max_drawn: "[0, 10**9]" = 0     # draw at most this many images (0 = all with boxes)
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py",))


@holds_claims
def run():
    print_config("bbox_img", config)
    claim(bbox_dir(config))
    boxes, path = load_boxes(box_source, box_file)
    boxed = [name for name, anns in boxes.items() if anns]
    print(f"{path}: {len(boxes)} images, {len(boxed)} with boxes, {sum(len(a) for a in boxes.values())} boxes")
    if not boxed:
        raise PipelineError(f"{path} holds no boxes; pass another --box_file")
    data_root = config["data_root"]
    names, paths = resolve_images(data_root, boxed, skip_missing=True)
    missing = len(boxed) - len(names)
    if max_drawn:
        names, paths = names[:max_drawn], paths[:max_drawn]

    out = bbox_dir(config)
    drawn = Counter()
    for name, p in tqdm(list(zip(names, paths)), desc="boxes", unit="image"):
        im = read_image(p)
        anns = scale_to(boxes[name], im.size)
        outlined, blend = draw_boxes(im, anns, BLEND_ALPHA)
        stem = p.stem
        for suffix, pixels in (("boxes", outlined), ("blend", blend)):
            save_png(box_figure(out, stem, suffix), add_legend(pixels, anns))
        drawn.update(a["label"] for a in anns)

    print(f"drew {sum(drawn.values())} boxes on {len(names)} images; "
          f"{missing} of {len(boxed)} annotated images missing under {data_root}")
    for label, n in drawn.most_common():
        print(f"  {label:<20} {n:5d}")
    print(f"outputs: {out}/{{image}}_boxes.png, {{image}}_blend.png")


if __name__ == "__main__":
    main(run)
