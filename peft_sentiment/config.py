"""One visible configuration with named profiles (`full`, `cpu`, `quick`, `smoke`).

A profile is a frozen `Config`; a run changes it only through `make_config(profile, **overrides)`,
which rejects unknown names and values with the list of valid ones. A run that names no profile gets
$PEFT_PROFILE, else `default_profile()`: `full` with a CUDA GPU and the Hub, else the offline `quick`.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from peft_sentiment import hardware
from peft_sentiment.hardware import PRECISIONS

TRUNCATIONS = ("head", "tail", "head+tail")  # which tokens of a review longer than max_length are kept (data.truncate)

PROFILE_ENV = "PEFT_PROFILE"
DATA_DIR_ENV = "IMDB_DATA_DIR"
IMDB = "stanfordnlp/imdb"  # the default dataset; $IMDB_DATA_DIR names a local copy of it


@dataclass(frozen=True)
class Config:
    """Everything a run depends on; recorded verbatim beside its results."""

    profile: str
    # --- model ---
    model_name: str  # Hub id ("gpt2"), a local folder, or a short name from catalog.SHORT_NAMES
    # --- data ---
    dataset: str  # a Hub id, or a local folder with train and test files (CSV, JSON Lines or parquet; validation optional)
    data_dir: str | None  # a local copy of `dataset` (IMDB: $IMDB_DATA_DIR); None = load `dataset` itself
    text_column: str  # the column holding the text to classify
    label_column: str  # the column holding its class: integers or strings, two classes or more
    train_size: int | None  # stratified, seeded subset of the train split; None = all
    val_size: int  # carved from train (never from test) unless the dataset has a validation split
    test_size: int | None  # stratified, seeded subset of the test split; None = all
    test_seed: int | None  # the seed of the test subset's draw; None = `seed`
    retired_test_subset: tuple[int, ...] | None  # (size, seed) of a test subset spent on earlier choices: left out
    max_length: int  # tokens per text after truncation (the prompt suffix included)
    prompt_suffix: str  # appended to every text after truncation; "" = the text alone. It goes with the dataset
    truncation: str  # which tokens of a longer text are kept: "head", "tail" or "head+tail" (data.truncate)
    truncation_head_share: float  # head+tail: the share of the kept tokens taken from the text's start
    # --- training ---
    variants: tuple[str, ...] | None  # the variants a run trains (names declared in variants.py); None = every one
    epochs: float
    train_batch_size: int
    eval_batch_size: int
    lr_head: float  # variants that train the head alone (each variant names the learning rate it uses)
    lr_lora: float  # LoRA, on fp32 or NF4 weights: the same step, so that they differ only in quantization
    lr_full: float  # full fine-tuning: every weight moves, so a step well below LoRA's
    head_on_cached_features: bool  # head-only: one frozen forward pass per review, then train the head on its output
    head_epochs: float  # head-only epochs over the cached features (nearly free once cached)
    weight_decay: float
    evals_per_run: int  # validation passes during training (a learning curve; each costs a pass over val_size)
    # None: train for `epochs` exactly (IMDB's validated budget). A number: `epochs` is a cap, and training stops once
    # validation loss has not improved for that many validation passes; the best checkpoint is kept (own data)
    early_stopping_patience: int | None
    checkpoint_every: float  # checkpoint interval: a fraction (< 1) of the run's steps, or a number of steps
    warmup_ratio: float
    precision: str  # "auto" (bf16 where the hardware computes it natively, else fp32), "fp32", "bf16", "fp16"
    # --- LoRA ---
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: tuple[str, ...] | None  # None = every linear layer below the head (peft's "all-linear")
    # --- NF4 ---
    nf4_compute_dtype: str  # what NF4 matmuls dequantize to: "auto" (as `precision` resolves), "bfloat16", "float16", "float32"
    nf4_double_quant: bool  # quantize NF4's per-block scales too (QLoRA's ~0.4 bit per weight saved)
    # layers kept in 16/32 bits, by name (bitsandbytes' llm_int8_skip_modules, which replaces transformers' default
    # skips: list the head too); None = transformers' default (the head alone)
    nf4_skip_modules: tuple[str, ...] | None
    # --- outputs ---
    save_dir: str  # trained adapters and models go to <save_dir>/<the variant's folder> (saved_f32_lora, ...)
    records_dir: str  # one JSON record per variant
    work_dir: str  # Trainer checkpoints and logs (git-ignored)
    seed: int = 42


# The tutorial on a GPU with the Hub: the reference setup (LoRA r=4, alpha=16, dropout 0.1 on every
# attention and MLP projection; NF4 with double quantization and bf16 compute). The other profiles
# are written as what they change.
FULL = Config(
    profile="full",
    model_name="gpt2",
    dataset=IMDB,
    data_dir=None,
    text_column="text",
    label_column="label",
    train_size=None,
    val_size=1000,  # 4% of train; Wilson 95% interval about +-1.9 points at 90% accuracy
    test_size=None,
    test_seed=None,
    retired_test_subset=None,
    max_length=512,  # the reference setting; most IMDB reviews fit, the longest are cut
    prompt_suffix="",  # the reference setup: the review alone
    # The reference setup: the review's end is cut. At 512 tokens 12% of reviews are cut (44% at 256), and
    # head+tail's evidence (cpu profile, head-only and LoRA) is at 256 tokens and not resolved: full keeps the reference's.
    truncation="head",
    truncation_head_share=0.25,  # Sun et al. (2019): 128 + 382 of 510 tokens
    variants=None,  # every declared variant, in declaration order (variants.variants_to_run)
    epochs=1,
    train_batch_size=16,
    eval_batch_size=64,
    lr_head=1e-3,  # a lone linear head on frozen features tolerates a large step
    head_on_cached_features=True,  # same result as training through the frozen model, 1/epochs of its forward cost
    head_epochs=10,
    lr_lora=2e-4,  # the usual LoRA range is 1e-4..5e-4; not yet tuned on this setup
    lr_full=2e-5,  # the usual range for fully fine-tuning a 100M-parameter model (BERT, GPT-2: 1e-5..5e-5)
    weight_decay=0.0,
    evals_per_run=4,
    early_stopping_patience=None,
    checkpoint_every=0.1,  # a crash costs at most a tenth of the run
    warmup_ratio=0.05,
    precision="auto",  # bf16 mixed precision where the GPU or CPU computes bf16 natively, else fp32 (hardware.py)
    lora_r=4,
    lora_alpha=16,
    lora_dropout=0.1,
    lora_targets=None,  # GPT-2: c_attn, c_proj (attention and MLP), c_fc
    # LoRA starts as peft's default (B = 0). LoftQ's start (the best rank-r fit of what 4-bit rounding lost) scored 86.1%
    # vs 87.3% on validation (cpu, NF4, p 0.058; commit a217ec2, docs/benchmarks.md): removed with its option.
    nf4_compute_dtype="auto",  # the reference's bf16 where the GPU computes it natively; fp16 on a T4 (hardware.py)
    nf4_double_quant=True,  # the QLoRA recipe's
    nf4_skip_modules=None,
    save_dir=".",  # saved_f32_lora/ and saved_nf4_lora/ beside the notebook (committed); saved_full_finetune/ is git-ignored
    records_dir="results/full",
    work_dir="runs/full",
)

# Real accuracy offline on 2 CPU cores: a pretrained LM of GPT-2's size (SmolLM2-135M, installed from PyPI) on real
# IMDB reviews, sized so that the notebook (four variants, 2,000 test reviews, bf16 where the CPU has it) finishes
# within 120 min on 2 cores with native bf16: about 97 min, estimated from bench/precision.py's tokens/s
# (docs/benchmarks.md, "How many training reviews"); about 1.5x that in fp32 (quick: 24 vs 16.5 min).
CPU = dataclasses.replace(
    FULL,
    profile="cpu",
    model_name="smollm2-135m",
    # bench/curve (LoRA, 1,000 validation reviews): 87.0% at 500, 88.6% at 1,000, 89.5% at 1,500 reviews, still rising;
    # 1,500 would take about 108 of the 120 min, and this machine's speed has drifted by a third between runs
    train_size=1250,
    val_size=200,  # about +-4 points at 90%: enough to catch a diverging run, not to rank close settings
    # 2,000 fresh test reviews (about +-1.3 points at 90%, Wilson 95%), none of them in the 1,000 (seed 42) this
    # profile tested on before: three rounds of choices were made with those results in view, and they scored 3.6
    # points above other test reviews (docs/benchmarks.md, "Fresh test reviews"). Every setting is chosen on validation; test is read once per run.
    test_size=2000,
    test_seed=2024,
    retired_test_subset=(1000, 42),
    max_length=256,  # longer reviews are cut (the records count how many)
    prompt_suffix="\nOverall, the sentiment of this review is",  # makes the last token, which the head reads, summarise the review
    # 43-44% of reviews are cut at 256 tokens. bench/truncation (1,000 validation reviews): on the cut ones head+tail
    # beats head for head-only (86.9 vs 83.9%) and LoRA (88.1 vs 86.5%), neither resolved alone (paired p 0.11,
    # 0.41); the same direction as Sun et al. (2019) found on IMDB.
    truncation="head+tail",
    train_batch_size=8,  # 157 steps from 1,250 reviews
    eval_batch_size=32,
    head_epochs=20,  # cached: 20 epochs of a 576x2 head cost under a second
    lr_lora=5e-4,  # short run (~150 steps): the upper end of the usual range; a validation sweep (dcabbcb): 2e-4 and 1e-3 no better
    lr_full=5e-5,  # short run: the upper end of the usual range, as for LoRA (not yet swept)
    # validation at a third, two thirds and the end of each run: the learning curves' points, for about 6 more minutes
    # (one LoRA validation pass of 200 reviews took 121 s in fp32 here, about half that in bf16)
    evals_per_run=3,
    checkpoint_every=0.25,
    lora_r=8,  # rank 16 no better on validation: LoRA (sweep, dcabbcb), NF4 LoRA 86.9 vs 87.3% (results/nf4/r16.json)
    # Off: drawing LoRA's dropout masks (7 per layer) was 20% of a training step on this CPU
    # (torch.profiler), and without it validation accuracy held (sweep, dcabbcb; docs/benchmarks.md).
    lora_dropout=0.0,
    # fp32 on this CPU (no native bf16: bf16 compute ran at half the speed); under bf16 autocast
    # (precision auto on a CPU with AVX512-BF16) the dequantized matmuls run in bf16 all the same
    nf4_compute_dtype="float32",
    # The value projections stay unquantized (fp32): 3% of the 4-bit weights, yet rounded alone they move the features
    # the head reads 60% as far as rounding every layer (results/nf4/rounding.json). On validation NF4 LoRA then scores
    # 88.2% against 87.3% (24 vs 15 reviews, p 0.2) and LoRA's 88.9% (16 vs 23, p 0.34: the gap no longer resolved),
    # at 23% of fp32's weight bytes against 21% (results/nf4/skip_v_proj.json, footprint.json). The list replaces
    # transformers' default skips, so it names the head too. Double quantization off scored 87.3%, as with it: kept on
    # (results/nf4/no_double_quant.json).
    nf4_skip_modules=("v_proj", "score"),
    records_dir="results/cpu",
    work_dir="runs/cpu",
)

PROFILES: dict[str, Config] = {
    "full": FULL,
    "cpu": CPU,
    # The offline default (./run.sh without a GPU and the Hub): the cpu profile's pretrained model and recipe, on
    # fewer reviews, head-only and LoRA. Its reviews keep cpu's 256 tokens: at 128, LoRA scored 84.4% on quick's test
    # reviews, while at 256 on 500 training reviews it scores 87.0% on validation (bench/curve.py). At 256, NF4 LoRA
    # (checkpointing, 4-bit) would add about 10 min to the 18 (fresh-clone ./run.sh, 2026-12-03): it and full
    # fine-tuning are cpu's lesson, or VARIANTS in the notebook's parameters cell.
    "quick": dataclasses.replace(
        CPU,
        profile="quick",
        train_size=500,  # 63 steps of 8
        val_size=100,
        test_size=500,  # fresh as cpu's (its test_seed, the retired reviews left out); about +-3 points at 87%
        checkpoint_every=0.5,
        variants=("head_only", "lora"),
        save_dir="runs/quick",  # never the committed saved_*_lora folders or results/
        records_dir="runs/quick/records",
        work_dir="runs/quick/work",
    ),
    # CI and the offline run command: a tiny random GPT-2 and a few hundred real reviews, so that
    # every variant (NF4 included) goes through the same code in about a minute on 2 CPU cores.
    # It writes only under runs/smoke, never into the committed saved_*_lora folders.
    "smoke": dataclasses.replace(
        FULL,
        profile="smoke",
        model_name="tiny-gpt2",
        train_size=320,
        val_size=64,
        test_size=128,
        max_length=128,
        lr_head=5e-3,  # random features: a large step shows learning within 20 steps
        head_epochs=5,
        lr_lora=2e-3,
        lr_full=1e-3,  # a tiny random model: large steps, as for LoRA
        checkpoint_every=0.5,
        warmup_ratio=0.0,
        nf4_compute_dtype="float32",  # as cpu
        save_dir="runs/smoke",
        records_dir="runs/smoke/records",
        work_dir="runs/smoke/work",
    ),
}


# What each profile costs and what it shows, in one place: ./run.sh says it before it starts (`python -m
# peft_sentiment profile`), and the README's profile table quotes it (a test checks).
PROFILE_COSTS = {
    "full": "Not yet measured (no GPU run so far; docs/gpu.md). The tutorial itself: GPT-2 on all of IMDB, four variants.",
    "cpu": "Under 2 hours on 2 CPU cores with native bf16 (the committed run's time is under the results), about 1.5x "
    "that without. Real accuracy offline, four variants on 2,000 test reviews (+-1.3 points).",
    "quick": "About 20 minutes in all, setup included, on 2 CPU cores with native bf16 (AVX512-BF16 or AMX), about 1.5x "
    "that without (24 min measured on an AVX2-only CPU). Real accuracy offline, head-only and LoRA on 500 test reviews "
    "(about +-3 points); NF4 LoRA and full fine-tuning are `cpu`'s.",
    "smoke": "About a minute on 2 CPU cores. Checks the machinery: a tiny random model, its accuracies mean nothing.",
}


# What another dataset gets instead of IMDB's settings, unless it sets them itself: IMDB's prompt suffix and its
# retired test reviews belong to IMDB, and one epoch over IMDB-length reviews is a budget far too small for short
# texts (LoRA scored below head-only on a short-text set with it): trained variants run until validation loss stops
# improving, a pass every half epoch, within a cap of 10 epochs that the run states before it starts.
OWN_DATA = {"prompt_suffix": "", "retired_test_subset": None, "epochs": 10, "evals_per_run": 20, "early_stopping_patience": 3}


def hub_reachable(timeout: float = 5) -> bool:
    """True when the Hugging Face Hub answers within `timeout` seconds."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info("gpt2", timeout=timeout)
    except Exception:  # no network, HF_HUB_OFFLINE, a timeout, a proxy's refusal: all mean "run offline"
        return False
    return True


def default_profile() -> tuple[str, str]:
    """The profile a run that names none gets (unless $PEFT_PROFILE), and why: `full` with a CUDA GPU and the Hub, else `quick`."""
    if not hardware.on_gpu():
        return "quick", "no CUDA GPU found"
    if not hub_reachable():
        return "quick", "a CUDA GPU, but the Hugging Face Hub did not answer"
    return "full", "a CUDA GPU and the Hugging Face Hub found"


def choose_profile(profile: str | None = None) -> tuple[str, str]:
    """The profile to run and why: the argument, else $PEFT_PROFILE, else `default_profile()`."""
    if profile:
        return profile, "chosen by name"
    if os.environ.get(PROFILE_ENV):
        return os.environ[PROFILE_ENV], f"${PROFILE_ENV} chose it"
    return default_profile()


def resolve_profile(profile: str | None = None) -> str:
    """The profile to run: the argument, else $PEFT_PROFILE, else `full` with a CUDA GPU and the Hub, else `quick`."""
    name = choose_profile(profile)[0]
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}. Valid profiles: {', '.join(PROFILES)}.")
    return name


def make_config(profile: str | None = None, **overrides) -> Config:
    """The named profile with `overrides` applied.

    $IMDB_DATA_DIR fills an unset data_dir for IMDB. Another dataset drops IMDB's prompt suffix and writes
    under runs/<profile>/<dataset>/ unless those are set too: the committed results stay IMDB's.
    """
    base = PROFILES[resolve_profile(profile)]
    valid = {f.name for f in dataclasses.fields(Config)} - {"profile"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"Unknown parameter(s) {unknown}. Valid parameters: {', '.join(sorted(valid))}.")
    dataset = overrides.get("dataset", base.dataset)
    if dataset == IMDB and overrides.get("data_dir") is None and base.data_dir is None and os.environ.get(DATA_DIR_ENV):
        overrides["data_dir"] = os.environ[DATA_DIR_ENV]
    if dataset != base.dataset:
        own = f"runs/{base.profile}/{Path(str(dataset).rstrip('/')).name}"
        outputs = {"save_dir": own, "records_dir": f"{own}/records", "work_dir": f"{own}/work"}
        overrides = outputs | OWN_DATA | overrides
    for name in ("lora_targets", "variants", "retired_test_subset", "nf4_skip_modules"):  # lists from JSON or the CLI
        if isinstance(overrides.get(name), list):
            overrides[name] = tuple(overrides[name])
    for name in ("lora_targets", "variants", "nf4_skip_modules"):  # `--set variants=head_only,lora`: comma-separated
        if isinstance(overrides.get(name), str):
            overrides[name] = tuple(part.strip() for part in overrides[name].split(",") if part.strip())
    cfg = dataclasses.replace(base, **overrides)
    validate_config(cfg)
    return cfg


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False", type(None): "None"}
CHOICES = {"nf4_compute_dtype": ("auto", "float32", "bfloat16", "float16"), "truncation": TRUNCATIONS, "precision": PRECISIONS}
POSITIVE = ("val_size", "max_length", "epochs", "head_epochs", "evals_per_run", "train_batch_size", "eval_batch_size",
            "lr_head", "lr_lora", "lr_full", "lora_r")  # fmt: skip
POSITIVE_OR_NONE = ("train_size", "test_size", "early_stopping_patience")


def matches_type(value, expected) -> bool:
    """isinstance for the annotations Config uses: int, float (an int will do), str, bool, None, tuple[str, ...], unions."""
    if isinstance(expected, types.UnionType):
        return any(matches_type(value, t) for t in typing.get_args(expected))
    if typing.get_origin(expected) is tuple:  # tuple[str, ...] or tuple[int, ...]
        return isinstance(value, tuple) and all(matches_type(v, typing.get_args(expected)[0]) for v in value)
    if expected in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, int | float if expected is float else expected)


def validate_config(cfg: Config) -> None:
    """Reject values that would fail later, after expensive work, with a message that says what to do."""
    for field, expected in typing.get_type_hints(Config).items():  # `--set lora_r=abc` names the type it needs
        if not matches_type(getattr(cfg, field), expected):
            wanted = " or ".join(TYPE_NAMES.get(t, "a list of names") for t in typing.get_args(expected) or (expected,))
            raise ValueError(f"{field}={getattr(cfg, field)!r}: must be {wanted}.")
    for name in POSITIVE_OR_NONE:
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise ValueError(f"{name}={getattr(cfg, name)}: must be positive, or None.")
    for name in POSITIVE:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name}={getattr(cfg, name)}: must be positive.")
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ValueError(f"{name}={getattr(cfg, name)!r}: choose one of {', '.join(choices)}.")
    if not 0 <= cfg.lora_dropout < 1 or not 0 <= cfg.truncation_head_share <= 1:
        raise ValueError(
            f"lora_dropout={cfg.lora_dropout} must be in [0, 1), truncation_head_share={cfg.truncation_head_share} in [0, 1]."
        )
    for name in ("text_column", "label_column"):
        if not getattr(cfg, name):
            raise ValueError(f"{name} is empty: name the column of the dataset that holds the {name.split('_')[0]}.")
    if cfg.text_column == cfg.label_column:
        raise ValueError(
            f"text_column and label_column are both {cfg.text_column!r}: name the column that holds the text and the one "
            "that holds its class."
        )
    # the names themselves are checked where the declarations are read (variants.variants_to_run, before any work)
    if cfg.variants is not None and not cfg.variants:
        raise ValueError("variants=(): none named. Name some (variants=head_only,lora), or None for all of them.")


def parse_overrides(pairs: list[str]) -> dict:
    """`name=value` pairs as config overrides; values are Python literals (3e-4, None, 'gpt2'), else strings."""
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: expected NAME=VALUE, for example --set lora_r=8.")
        try:
            overrides[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name.strip()] = value
    return overrides


def config_to_dict(cfg: Config) -> dict:
    """The config as plain JSON-ready data (local folders relative to the working folder)."""
    data = dataclasses.asdict(cfg)
    for name in ("data_dir", "dataset"):
        if data[name] is not None and os.path.isabs(data[name]):
            data[name] = os.path.relpath(data[name])  # records name no machine's folders
    for name in ("lora_targets", "variants", "retired_test_subset", "nf4_skip_modules"):
        if data[name] is not None:
            data[name] = list(data[name])
    return data
