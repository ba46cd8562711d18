import pytest


@pytest.fixture(scope="session")
def sd15_single_file(tmp_path_factory):
    """A random-weight SD1.5 checkpoint in the A1111/ComfyUI single-file layout (~2.1 GB fp16, ~15 s)."""
    from random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "sd15_random.safetensors", "sd15", seed=0)
