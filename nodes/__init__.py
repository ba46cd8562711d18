"""ComfyUI node classes (classic API). Filled in as the node modules land."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
