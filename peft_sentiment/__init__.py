"""Parameter-efficient fine-tuning of decoder LMs for text classification: head-only, LoRA, NF4 LoRA, full fine-tuning.

The variants are declared in `peft_sentiment.variants`; the dataset (IMDB by default) is a setting in `config`.
"""

__version__ = "0.2.0"

try:  # torch is imported here; before the notebook's setup step has installed it, the package still imports
    from peft_sentiment.hardware import bound_kernel_caches, quiet_bitsandbytes_kernel_hub
except ImportError:
    pass
else:
    bound_kernel_caches()  # before torch builds its first CPU kernel
    quiet_bitsandbytes_kernel_hub()  # before anything imports bitsandbytes
