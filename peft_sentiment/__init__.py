"""Parameter-efficient fine-tuning of decoder LMs for IMDB sentiment: head-only, LoRA, NF4 LoRA."""

VARIANTS = ("head_only", "lora", "nf4_lora")

__version__ = "0.1.0"
