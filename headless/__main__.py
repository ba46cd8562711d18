"""``python -m headless ...`` from the repository root: load the repo as the package
``style_lora_trainer`` (as ComfyUI and the tests do) and run the CLI from it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from pack_loader import load_pack  # noqa: E402

load_pack()

from style_lora_trainer.headless.cli import main  # noqa: E402

sys.exit(main())
