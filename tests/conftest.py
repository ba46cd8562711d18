import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from pack_loader import load_pack  # noqa: E402

load_pack()
