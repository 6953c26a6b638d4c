"""What the notebook needs to read as a lesson and nothing else: quiet outputs, the package's code shown as code, and
the few settings a reader should see (the rest is in each record)."""

from __future__ import annotations

import inspect
import warnings

from peft_sentiment.config import Config

# the settings a reader of the notebook needs to follow it; every other one is in each record's "config"
KEY_SETTINGS = ("model_name", "train_size", "val_size", "test_size", "max_length", "truncation", "epochs",
                "train_batch_size", "lr_head", "lr_lora", "lr_full", "lora_r", "lora_alpha", "precision", "variants")  # fmt: skip


def quiet_outputs() -> None:
    """One loading bar per model load and per dataset map, and warnings about other libraries' internals, tell a reader
    nothing; pandas shows counts with separators and fractions with three decimals."""
    import datasets
    import pandas as pd
    import transformers

    from peft_sentiment.report import format_cell

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    # peft's prepare_model_for_kbit_training still calls transformers' old gradient_checkpointing_enable: peft's to fix
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6", category=FutureWarning)
    pd.set_option("display.float_format", format_cell)
    pd.set_option("display.max_colwidth", 100)
    pd.set_option("display.width", 100)  # a table's text form wraps within 100 characters


def show_source(*functions) -> None:
    """Display the package's own code as code: what you read is what runs."""
    from IPython.display import Markdown, display

    display(Markdown("\n\n".join(f"```python\n{inspect.getsource(f)}```" for f in functions)))


def key_settings(cfg: Config):
    """The settings of `cfg` that the lesson talks about, as a one-column table."""
    import pandas as pd

    values = {name: getattr(cfg, name) for name in KEY_SETTINGS}
    values["variants"] = ", ".join(values["variants"] or ("all",))
    return pd.Series({k: f"{v:,}" if isinstance(v, int) else str(v) for k, v in values.items()}, dtype=object).to_frame(
        f"profile {cfg.profile}"
    )
