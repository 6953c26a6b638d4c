"""Parameter-efficient fine-tuning of decoder LMs for IMDB sentiment: head-only, LoRA, NF4 LoRA."""

VARIANTS = ("head_only", "lora", "nf4_lora")

__version__ = "0.1.0"

try:  # torch is imported here; before the notebook's setup step has installed it, the package still imports
    from peft_sentiment.hardware import quiet_bitsandbytes_kernel_hub
except ImportError:
    pass
else:
    quiet_bitsandbytes_kernel_hub()  # before anything imports bitsandbytes
