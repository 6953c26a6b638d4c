"""Parameter-efficient fine-tuning of decoder LMs for IMDB sentiment: head-only, LoRA, NF4 LoRA."""

from peft_sentiment.hardware import quiet_bitsandbytes_kernel_hub

VARIANTS = ("head_only", "lora", "nf4_lora")

__version__ = "0.1.0"

quiet_bitsandbytes_kernel_hub()  # before anything imports bitsandbytes
