"""Write a random-weight SD1.5-architecture checkpoint (original LDM key names) for the e2e tests.

    $COMFYUI_PYTHON tools/make_sd15_checkpoint.py --comfyui-dir $COMFYUI_DIR --out /tmp/sd15_random.safetensors

ComfyUI recognises SD1.5 by its key shapes (model_channels 320, context_dim 768), so a tiny U-Net
would not do; this is the full architecture (~1.07 B parameters, ~2.1 GB in fp16) with random
weights. Deterministic for a given --seed; an existing file with the same builder version and seed
is reused (the e2e tier caches it outside the repo).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_random_models import BUILDER_VERSION, setup_comfy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui-dir", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "fp32", "bf16"])
    opts = parser.parse_args(argv)

    stamp = f"style-lora-e2e-sd15-v{BUILDER_VERSION}-seed{opts.seed}-{opts.dtype}"
    if opts.out.is_file():
        from safetensors import safe_open

        with safe_open(str(opts.out), "pt") as fh:
            if (fh.metadata() or {}).get("style_lora_e2e") == stamp:
                print(f"reusing {opts.out}")
                return 0
    setup_comfy(opts.comfyui_dir)
    import torch
    from comfy_random_models import sd15_checkpoint_state_dict
    from safetensors.torch import save_file

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    started = time.time()
    sd = sd15_checkpoint_state_dict(seed=opts.seed, dtype_name=opts.dtype)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = opts.out.with_name(f".{opts.out.name}.tmp-{os.getpid()}")
    try:
        save_file(sd, str(tmp), metadata={"style_lora_e2e": stamp})
        os.replace(tmp, opts.out)
    finally:
        if tmp.exists():
            tmp.unlink()
    params = sum(t.numel() for t in sd.values())
    print(f"wrote {opts.out}: {len(sd)} tensors, {params / 1e6:.0f} M parameters, {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
