"""Raw multilingual text → tokens → megatron-core indexed datasets (.bin/.idx)."""
