"""Shared set-up of the node tests: the pack's folders pointed at a temp dir, with a synthetic dataset."""

from pathlib import Path

from style_lora_trainer.dev.synthetic_data import make_style_dataset


def node_env(tmp_path: Path, monkeypatch, *, count: int) -> Path:
    """Dataset roots, loras and output folders under ``tmp_path``; ``input/style`` holds ``count`` images."""
    monkeypatch.setenv("STYLE_LORA_DATASET_ROOTS", str(tmp_path / "input"))
    monkeypatch.setenv("STYLE_LORA_LORAS_DIR", str(tmp_path / "loras"))
    monkeypatch.setenv("STYLE_LORA_OUTPUT_DIR", str(tmp_path / "output"))
    make_style_dataset(tmp_path / "input" / "style", count=count, size=32, seed=2)
    return tmp_path


def load_node_dataset(folder: str = "style", **widgets):
    """Load Dataset called as ComfyUI calls it, with the tiny datasets' widgets (32 px, 2 repeats)."""
    from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS

    args = dict(folder=folder, caption_extension=".txt", repeats=2, resolution=32, enable_bucket=True,
                min_bucket_size=32, max_bucket_size=64, bucket_step=32, bucket_no_upscale=False,
                skip_unreadable=False)
    return NODE_CLASS_MAPPINGS["StyleLoRALoadDataset"]().load(**(args | widgets))
