"""Style LoRA training engine: dataset -> captions -> training -> LoRA files -> preview.

Knows nothing of ComfyUI. Every module here uses relative imports only, so the package works
both inside the ComfyUI pack (``<pack>.style_lora_engine``) and on its own.
"""
