"""What marks a phantom world on disk, and the warning for the demo's VLM on images of any other set.

A world (phantom/world.py) writes its images into images/ and, last, world.json beside that folder, which
lists each image by name: an image is a world's when the world.json beside its folder lists it. Kept apart
from the generator, so the steps that ask this do not re-run when the generator changes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from core.text import at_most, printable, say_once

WORLD_FILE = "world.json"  # beside images/, written last: it marks a complete world and lists each image by name


def outside_world(root: str | Path, names: list[str]) -> list[str]:
    """The names (image paths relative to root, as a probing set holds them) of the images that are no
    phantom world's: not in an images/ folder beside a world.json that lists them."""
    listed: dict[Path, set[str]] = {}
    out = []
    for name in names:
        path = Path(os.path.realpath(Path(root) / name))  # where the file lies, whatever link names it
        world = path.parent.parent
        if path.parent.name == "images" and world not in listed:
            listed[world] = _listed(world / WORLD_FILE)
        if path.parent.name != "images" or path.name not in listed[world]:
            out.append(name)
    return out


def _listed(meta: Path) -> set[str]:
    """The image names a world.json lists (none where there is no world, or the file is not one)."""
    try:
        images = json.loads(meta.read_text()).get("images")
    except (OSError, ValueError, AttributeError):
        return set()
    return set(images) if isinstance(images, dict) else set()


def warn_other_world(model_clip: str, data_root: str, names: list[str]) -> None:
    """--model_clip phantom is the demo's VLM, trained on the synthetic phantom world alone: warn once in a
    step whose probing set (names under data_root) holds other images, the like of which it never saw."""
    other = outside_world(data_root, names) if model_clip == "phantom" else []
    if other:
        say_once(printable(
            f"warning: --model_clip phantom is the demo's VLM, trained only on the synthetic phantom world "
            f"(phantom/world.py); {len(other)} of the {len(names)} probing images under {data_root} are not that "
            f"world's (no world.json beside their images/ folder lists them: {at_most(other, 3)}), so the concepts "
            f"it matches to them say nothing it learned; name them with a VLM of real radiographs (--model_clip "
            f"medclip or open_clip:NAME)"))
