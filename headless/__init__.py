"""The headless trainer: the pack's nodes run from a terminal on a user's single-file checkpoint
(``python -m headless train --help``), plus the diffusers host it trains on. Not part of the ComfyUI
pack (``.comfyignore``): inside ComfyUI the nodes train ComfyUI's own MODEL."""
