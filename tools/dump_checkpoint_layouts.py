"""Record the key names and shapes of SD1.5 and SDXL single-file checkpoints, from ComfyUI's own classes.

    $COMFYUI_PYTHON tools/dump_checkpoint_layouts.py --comfyui-dir $COMFYUI_DIR

Writes ``tests/data/ldm_layout_sd15.json`` and ``tests/data/ldm_layout_sdxl.json``: the layout an
A1111/ComfyUI checkpoint file has (``model.diffusion_model.*``, ``cond_stage_model.*`` or
``conditioner.embedders.*``, ``first_stage_model.*``). The tests build random checkpoints from them
without ComfyUI, to test the headless trainer's single-file loading.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_random_models import setup_comfy  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui-dir", required=True)
    opts = parser.parse_args(argv)
    setup_comfy(opts.comfyui_dir)
    from comfy_random_models import sd15_checkpoint_shapes, sdxl_checkpoint_shapes

    for arch, shapes in (("sd15", sd15_checkpoint_shapes()), ("sdxl", sdxl_checkpoint_shapes())):
        path = DATA / f"ldm_layout_{arch}.json"
        layout = {k: list(v) for k, v in sorted(shapes.items())}
        path.write_text(json.dumps(layout, indent=0) + "\n", encoding="utf-8")
        print(f"{path}: {len(layout)} tensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
