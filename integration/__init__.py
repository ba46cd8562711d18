"""Everything that touches ComfyUI: its modules (imported lazily, so the pack imports and is tested
without ComfyUI), folders, progress and Stop, server events, the training backend and the grid
preview on ComfyUI's MODEL/CLIP/VAE, and IMAGE ⇄ PIL. The engine never imports this package."""
