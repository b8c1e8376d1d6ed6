"""qwenpt: pretrain Qwen-family models on megatron-core, and study how they scale."""

import warnings

# megatron-core warns at import when Transformer Engine / apex are absent: expected on CPU, and
# qwenpt logs which attention backend it uses.
warnings.filterwarnings("ignore", message=r".*Transformer Engine and Apex are not installed.*")
warnings.filterwarnings("ignore", message=r".*Apex is not installed.*")
