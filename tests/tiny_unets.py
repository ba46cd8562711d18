"""Tiny diffusers U-Net configs shaped like SD1.5 and SDXL (the LoRA/LoCon/DoRA tests build them)."""

SD15_TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
)
# SDXL-shaped: first level without attention, last up level without attention (as SDXL).
SDXL_TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2), cross_attention_dim=32, attention_head_dim=(2, 4, 4),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=8 * 6 + 32,
)
# arch -> (config, layers_per_block)
TINY = {"sd15": (SD15_TINY, 1), "sdxl": (SDXL_TINY, 2)}
