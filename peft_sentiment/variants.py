"""The variants, each declared once: how its model is built, what its training changes, its label and reference.

Everything else (the CLI's choices, the pipeline, records, tables, plots, the notebook and the
benchmarks) reads these declarations and never a variant's name (a profile may choose some by name: the
config's `variants`), so a new variant is one `declare(...)` here or in your own code.
`models.build_model` runs a declaration's recipe; `train.make_training_args` gives it its learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peft_sentiment import models
from peft_sentiment.config import Config

TRAINS = ("head", "adapter", "all")  # what a variant's optimizer updates: the head alone, adapters (+ head), every weight


@dataclass(frozen=True)
class Variant:
    """One way to fine-tune: a declaration the package builds, trains, records and reports."""

    name: str  # the record's file name and the CLI's choice
    label: str  # how tables, plots and prose name it
    trains: str  # one of TRAINS
    learning_rate: str  # the Config field holding its learning rate (a profile tunes it there)
    build: Callable  # its recipe: (cfg, model_path, labels, pad_token_id) -> the model it trains (models.build_*)
    # what the recipe does, for what reads a declaration without building it (saving, reloading, cost estimates;
    # tests/test_variants.py checks each recipe does it):
    quantization: Callable | None = None  # cfg -> the BitsAndBytesConfig its base is loaded with
    gradient_checkpointing: bool = False  # activations recomputed in backward: less memory, more time
    save_dir: str | None = None  # folder under cfg.save_dir for the trained adapter or model; None = not saved
    reference_accuracy: float | None = None  # what the reference notebook reached (GPT-2, all of IMDB), if it ran it
    compared_with: str | None = None  # the variant whose predictions the summary tests this one's against

    def __post_init__(self):
        if self.trains not in TRAINS:
            raise ValueError(f"Variant {self.name!r}: trains={self.trains!r}; choose one of {', '.join(TRAINS)}.")


VARIANTS: dict[str, Variant] = {}  # in declaration order: the order of tables, plots and runs


def declare(variant: Variant) -> Variant:
    """Register `variant` (replacing one of the same name) so that every part of the package offers it."""
    VARIANTS[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The declared variant `name`, or a ValueError listing the declared ones."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown variant {name!r}. Valid variants: {', '.join(VARIANTS)}.")
    return VARIANTS[name]


def variants_to_run(cfg: Config) -> dict[str, Variant]:
    """The variants a run of `cfg` trains, by name, in declaration order: those `cfg.variants` names, or all (None)."""
    if cfg.variants is None:
        return dict(VARIANTS)
    chosen = {name: get_variant(name) for name in cfg.variants}  # a name no longer declared fails here too
    return {name: variant for name, variant in VARIANTS.items() if name in chosen}


def compared_pairs(records: list[dict]) -> list[tuple[dict, dict]]:
    """(record, record of the variant its declaration compares it with), for each record whose partner is among them."""
    by_name = {r["variant"]: r for r in records}
    partner = {r["variant"]: VARIANTS[r["variant"]].compared_with for r in records if r["variant"] in VARIANTS}
    return [(r, by_name[partner[r["variant"]]]) for r in records if partner.get(r["variant"]) in by_name]


def label_of(name: str) -> str:
    """A variant's label for tables and plots; a record of a variant not declared here keeps its name."""
    return VARIANTS[name].label if name in VARIANTS else name


declare(Variant("head_only", "head-only", trains="head", learning_rate="lr_head", build=models.build_head_only,
                reference_accuracy=0.83))  # fmt: skip
declare(
    Variant(
        "lora", "LoRA", trains="adapter", learning_rate="lr_lora", build=models.build_lora, save_dir="saved_f32_lora",
        reference_accuracy=0.90, compared_with="head_only",
    )
)  # fmt: skip
declare(
    Variant(
        "nf4_lora", "NF4 LoRA", trains="adapter", learning_rate="lr_lora", build=models.build_nf4_lora,
        quantization=models.make_nf4_config, gradient_checkpointing=True, save_dir="saved_nf4_lora",
        reference_accuracy=0.88, compared_with="lora",
    )
)  # fmt: skip
# The ceiling the others approximate: every weight trains (GPT-2 on IMDB: ~94%, a public anchor, not the reference's).
# Its saved model is a whole model (540 MB for SmolLM2), git-ignored.
declare(
    Variant(
        "full_finetune", "full fine-tuning", trains="all", learning_rate="lr_full", build=models.build_full_finetune,
        save_dir="saved_full_finetune", compared_with="lora",
    )
)  # fmt: skip
