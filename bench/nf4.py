"""Why NF4 LoRA trails LoRA: what 4-bit rounding costs this model, where it sits, and which QLoRA knobs close it.

    python bench/nf4.py frozen                  # head-only on frozen features: fp32 base vs NF4 base
    python bench/nf4.py rounding                # per-layer rounding error, and the features' drift per layer group (9 min)
    python bench/nf4.py footprint               # weight bytes of the fp32 base, the NF4 base and each knob's (1 min)
    python bench/nf4.py knob r16                # one NF4 LoRA setting on validation (26 min alone, bf16); --resume after a cut
    python bench/nf4.py report --readme docs/benchmarks.md   # the table from results/nf4/

Validation only, in the setup of the earlier `cpu` validation records (bench/truncation.py: 1,000 training reviews,
head+tail, 1,000 carved validation reviews, bf16), so that results/cpu/bf16/truncation/{lora,nf4_lora}.json are the
baselines each setting is paired with. One JSON per setting in results/nf4/, rewritten as each part finishes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from harness import git_commit, what_else_ran
from transformers import AutoModelForSequenceClassification
from validation import carve_validation, run, same_reviews

from peft_sentiment import catalog, features, hardware, metrics, models, recording, report
from peft_sentiment.config import make_config
from peft_sentiment.experiment import prepare_data
from peft_sentiment.variants import Variant, declare, label_of

FOLDER = Path("results/nf4")
BASELINES = {"LoRA": "results/cpu/bf16/truncation/lora.json", "NF4 LoRA": "results/cpu/bf16/truncation/nf4_lora.json"}
# the earlier validation records' setup: the cpu profile then trained on 1,000 reviews, in bf16, every layer but the
# head in 4 bits (the profile has since adopted skip_v_proj)
SETUP = {"train_size": 1000, "precision": "bf16", "nf4_skip_modules": None}
# Each knob is what it changes in the cpu profile's NF4 LoRA (QLoRA's recipe: r 64, alpha 16, double quantization on).
KNOBS = {
    "r16": {"lora_r": 16, "lora_alpha": 32},  # twice the rank at the profile's alpha / r = 2
    "no_double_quant": {"nf4_double_quant": False},  # scales kept in fp32 (+0.4 bit per weight)
    # the layers `rounding` finds most sensitive for their size kept unquantized: v_proj, 3% of the quantized weights,
    # moves the features 0.175 rounded alone (all layers: 0.289). bitsandbytes' skip list replaces the default: the head too
    "skip_v_proj": {"nf4_skip_modules": ("v_proj", "score")},
}


def build_nf4_head_only(cfg, model_path: str, labels, pad_token_id: int):
    """Head-only on the NF4 base, loaded as NF4 LoRA loads it (embedding tables in bf16): the frozen features' cost."""
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, **models.label_names(labels), pad_token_id=pad_token_id, dtype=torch.float32,
        quantization_config=models.make_nf4_config(cfg),
    )  # fmt: skip
    models.store_embeddings_16bit(model)
    model.requires_grad_(False)
    model.score.requires_grad_(True)
    return model


# Declared by `frozen` alone (declaring it at import would add it to every run of the importing process).
NF4_HEAD_ONLY = Variant("nf4_head_only", "head-only on the NF4 base", trains="head", learning_rate="lr_head",
                        build=build_nf4_head_only, quantization=models.make_nf4_config)  # fmt: skip


def study_frozen(argv: list[str]) -> None:
    """Head-only on frozen features of the fp32 base and of the NF4 base: what rounding costs before any training."""
    declare(NF4_HEAD_ONLY)
    for variant in ("head_only", "nf4_head_only"):
        args = argparse.Namespace(profile="cpu", variant=variant, settings=["head+tail"], val_size=1000, resume=False,
                                  set=[f"{k}={v}" for k, v in SETUP.items()])  # fmt: skip
        path = FOLDER / f"frozen_{variant}.json"
        record = run(args, argv, path, script="bench/nf4.py")
        recording.write_json_atomic(record | {"evaluated_on": "validation", "commit": git_commit()}, path)


def layer_groups(names: list[str]) -> dict[str, list[str]]:
    """The quantized layers grouped by role (attention's q/k/v/o, the MLP's gate/up/down) and by depth (thirds)."""
    roles = {role: [n for n in names if n.endswith(role)] for role in dict.fromkeys(n.rsplit(".", 1)[-1] for n in names)}
    depth = sorted({int(n.split("layers.")[1].split(".")[0]) for n in names if "layers." in n})
    third = max(1, len(depth) // 3)
    parts = {"first third": depth[:third], "middle third": depth[third:-third], "last third": depth[-third:]}
    by_depth = {part: [n for n in names if "layers." in n and int(n.split("layers.")[1].split(".")[0]) in layers]
                for part, layers in parts.items()}  # fmt: skip
    return roles | by_depth


def nf4_round_trip(weight: torch.Tensor, double_quant: bool = True) -> torch.Tensor:
    """`weight` quantized to NF4 (blocks of 64, bitsandbytes' kernel) and de-quantized back to fp32."""
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(weight.float().contiguous(), quant_type="nf4", compress_statistics=double_quant)
    return F.dequantize_4bit(packed, state).float()


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (Frobenius)."""
    return float((approx - exact).norm() / exact.norm())


def study_rounding(argv: list[str], reviews: int = 24) -> None:
    """Per layer, NF4's relative rounding error; per layer group, how far rounding that group alone moves the features."""
    started = time.perf_counter()
    cfg = make_config("cpu", **SETUP)
    splits = carve_validation(cfg, 1000)
    prepared = prepare_data(cfg, splits)
    model = models.load_classifier(prepared.model_path, prepared.tokenizer.pad_token_id, prepared.labels).eval()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.startswith("score")}
    exact = {n: m.weight.detach().clone() for n, m in linears.items()}
    rounded = {n: nf4_round_trip(w) for n, w in exact.items()}
    per_layer = {n: {"relative_error": relative_error(rounded[n], exact[n]), "parameters": exact[n].numel()} for n in exact}
    # a Gaussian weight of the same size: NF4's own error on the distribution it was designed for
    gaussian = torch.randn(576, 1536, generator=torch.Generator().manual_seed(0))
    # Q4_1's grid: the stand-in's weights took 16 evenly spaced values per block of 32 before NF4 rounds them again
    levels = [len(torch.unique(exact[n].flatten()[:32])) for n in list(exact)[:20]]

    validation = prepared.tokenized["validation"].select(range(reviews))

    def head_features():  # what the head reads: the package's frozen pass, one batch, in fp32
        return features.extract_features(model, validation, prepared.tokenizer, batch_size=reviews)[0]

    reference = head_features()

    def drift() -> float:
        return relative_error(head_features(), reference)

    groups = layer_groups(list(linears))
    sensitivity = {}
    for group, names in {"all": list(linears), **groups}.items():
        for n in names:
            linears[n].weight.data.copy_(rounded[n])
        share = sum(exact[n].numel() for n in names) / sum(w.numel() for w in exact.values())
        sensitivity[group] = {"feature_drift": drift(), "share_of_quantized_parameters": share, "layers": len(names)}
        print(
            f"{group}: features move {sensitivity[group]['feature_drift']:.3f} ({share:.0%} of the quantized weights)", flush=True
        )
        for n in names:
            linears[n].weight.data.copy_(exact[n])
    record = {
        "study": "rounding",
        "evaluated_on": "validation",
        "command": "python " + shlex.join(["bench/nf4.py", *argv]),
        "commit": git_commit(),
        "model": cfg.model_name,
        "reviews": reviews,
        "per_layer": per_layer,
        "nf4_error_on_gaussian_weight": relative_error(nf4_round_trip(gaussian), gaussian),
        "distinct_values_in_first_32_weights": levels,
        "sensitivity": sensitivity,
        **recording.provenance(),
        "what_else_ran": [what_else_ran()],
        "total_seconds": time.perf_counter() - started,
    }
    recording.write_json_atomic(record, FOLDER / "rounding.json")


def weight_bytes(model) -> int:
    """Bytes of every weight and buffer, with the 4-bit layers' scales (and their own scales, double-quantized):
    `get_memory_footprint` leaves those out, so it cannot tell double quantization on from off."""
    import bitsandbytes as bnb

    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    for p in model.parameters():
        state = getattr(p, "quant_state", None) if isinstance(p, bnb.nn.Params4bit) else None
        for part in (state, getattr(state, "state2", None)) if state is not None else ():
            if part is not None:
                total += sum(t.numel() * t.element_size() for t in (part.absmax, part.code) if t is not None)
    return total


def study_footprint(argv: list[str]) -> None:
    """Weight bytes of the fp32 base, of the NF4 base as NF4 LoRA stores it, and of each knob's NF4 base."""
    import dataclasses

    cfg = make_config("cpu", **SETUP)
    prepared = prepare_data(cfg, carve_validation(cfg, 1000))
    sizes = {}
    model = models.load_classifier(prepared.model_path, prepared.tokenizer.pad_token_id, prepared.labels)
    sizes["fp32"] = weight_bytes(model)
    del model
    for name, changes in {"nf4": {}, **KNOBS}.items():
        knob_cfg = dataclasses.replace(cfg, **changes)
        model = models.load_classifier(prepared.model_path, prepared.tokenizer.pad_token_id, prepared.labels,
                                       models.make_nf4_config(knob_cfg), embedding_dtype=models.NF4_EMBEDDING_DTYPE)  # fmt: skip
        sizes[name] = weight_bytes(model)
        del model
    record = {"study": "footprint", "command": "python " + shlex.join(["bench/nf4.py", *argv]), "commit": git_commit(),
              "bytes": sizes, "share_of_fp32": {k: v / sizes["fp32"] for k, v in sizes.items()},
              **recording.provenance()}  # fmt: skip
    recording.write_json_atomic(record, FOLDER / "footprint.json")


def study_knob(name: str, argv: list[str], resume: bool) -> None:
    """NF4 LoRA with one knob changed, trained and scored on the baselines' validation reviews."""
    changes = SETUP | KNOBS[name] | {"records_dir": str(FOLDER), "work_dir": f"runs/nf4/{name}"}
    overrides = [f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in changes.items()]
    args = argparse.Namespace(profile="cpu", variant="nf4_lora", settings=["head+tail"], val_size=1000, resume=resume,
                              set=overrides)  # fmt: skip
    path = FOLDER / f"{name}.json"
    record = run(args, argv, path, script="bench/nf4.py")
    recording.write_json_atomic(record | {"evaluated_on": "validation", "knob": KNOBS[name], "commit": git_commit()}, path)


def rounding_lines() -> list[str]:
    """Markdown: NF4's per-layer rounding error, and how far rounding each group of layers alone moves the features."""
    if not (FOLDER / "rounding.json").is_file():
        return ["No rounding record yet: `python bench/nf4.py rounding`."]
    r = recording.read_json(FOLDER / "rounding.json")
    errors = [layer["relative_error"] for layer in r["per_layer"].values()]
    lines = [
        f"NF4's relative rounding error, per layer: {min(errors):.3f} to {max(errors):.3f} (median "
        f"{np.median(errors):.3f}); on a Gaussian weight of the same shape {r['nf4_error_on_gaussian_weight']:.3f}. "
        f"The stand-in's weights hold {min(r['distinct_values_in_first_32_weights'])} to "
        f"{max(r['distinct_values_in_first_32_weights'])} distinct values per block of 32 (its Q4_1 file's grid).",
        "",
        f"How far each group of layers, rounded alone, moves the features the head reads ({r['reviews']} validation "
        "reviews, relative to the fp32 features):",
        "",
        "| layers rounded to NF4 | share of the quantized weights | feature drift |",
        "|---|---|---|",
    ]
    for group, g in r["sensitivity"].items():
        lines.append(f"| {group} | {g['share_of_quantized_parameters']:.0%} | {g['feature_drift']:.3f} |")
    return lines


def plot_rounding(path: Path = FOLDER / "rounding.png") -> Path | None:
    """A figure of where rounding costs: each group of layers rounded alone, its feature drift against its share of the
    quantized weights (a group above the diagonal costs more than its size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not (FOLDER / "rounding.json").is_file():
        return None
    r = recording.read_json(FOLDER / "rounding.json")
    groups = {name: g for name, g in r["sensitivity"].items() if name != "all"}
    total = r["sensitivity"]["all"]["feature_drift"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, g in groups.items():
        ax.scatter(g["share_of_quantized_parameters"], g["feature_drift"] / total, color="C1" if "third" in name else "C0")
        ax.annotate(name, (g["share_of_quantized_parameters"], g["feature_drift"] / total), fontsize=8,
                    xytext=(4, 2), textcoords="offset points")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("share of the 4-bit weights rounded")
    ax.set_ylabel("feature drift, as a share of rounding every layer")
    ax.set_title(f"NF4 on {r['model']}: where the rounding costs (all layers: drift {total:.2f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frozen_lines() -> list[str]:
    """Markdown: head-only on the frozen features of the fp32 base and of the NF4 base, paired (`frozen`)."""
    paths = [FOLDER / f"frozen_{name}.json" for name in ("head_only", "nf4_head_only")]
    if not all(p.is_file() for p in paths):
        return ["No frozen-features pair yet: `python bench/nf4.py frozen`."]
    fp32, nf4 = (recording.read_json(p) for p in paths)
    a, b = (r["settings"]["head+tail"]["all"]["accuracy"] for r in (fp32, nf4))
    d = metrics.paired_difference(fp32["validation_labels"], fp32["predictions"]["head+tail"], nf4["predictions"]["head+tail"])
    return [f"Before any training, a head on the frozen features of the fp32 base scores {a:.1%}, on the NF4 base's "
            f"{b:.1%}: {d['only_a']} reviews only the fp32 features get right, {d['only_b']} only the NF4 features "
            f"(exact McNemar p = {d['p_value']:.2g}; `{fp32['command']}`, {(fp32['total_seconds'] + nf4['total_seconds']) / 60:.0f} "
            f"min, {fp32['created'][:10]})."]  # fmt: skip


def nf4_section() -> str:
    """Markdown: where rounding sits, then each NF4 setting's validation accuracy, paired with NF4 LoRA and with LoRA on
    the same reviews, and its weight bytes against fp32's."""
    baselines = {label: recording.read_json(path) for label, path in BASELINES.items()}
    footprint = recording.read_json(FOLDER / "footprint.json")["share_of_fp32"] if (FOLDER / "footprint.json").is_file() else {}
    figure = plot_rounding()
    lines = [
        *frozen_lines(),
        "",
        *rounding_lines(),
        *(["", f"![Where NF4's rounding costs]({figure})"] if figure else []),
        "",
        "| setting | accuracy (95% CI) | vs NF4 LoRA: only this / only NF4 right (p) | vs LoRA: only this / only LoRA right (p) "
        "| weight bytes vs fp32 |",
        "|---|---|---|---|---|",
    ]
    records = [(label_of(r["variant"]), r) for r in baselines.values()]
    skip = ("rounding", "footprint")  # and the frozen pair, above
    records += [(p.stem, recording.read_json(p)) for p in sorted(FOLDER.glob("*.json"))
                if p.stem not in skip and not p.stem.startswith("frozen_")]  # fmt: skip
    for label, r in [(label, r) for label, r in records if "head+tail" in r["settings"]]:  # runs in progress left out
        s = r["settings"]["head+tail"]["all"]
        cells = []
        for base in (baselines["NF4 LoRA"], baselines["LoRA"]):  # the columns' order
            if base is r or not same_reviews(r, base):
                cells.append("-" if base is r else "other reviews")
                continue
            d = metrics.paired_difference(r["validation_labels"], r["predictions"]["head+tail"], base["predictions"]["head+tail"])
            cells.append(f"{d['only_a']} / {d['only_b']} (p = {d['p_value']:.2g})")
        key = {"LoRA": "fp32", "NF4 LoRA": "nf4"}.get(label, label)
        share = f"{footprint[key]:.0%}" if key in footprint else "-"
        lines.append(f"| {label} | {s['accuracy']:.1%} ({s['ci95'][0]:.1%}-{s['ci95'][1]:.1%}) | {' | '.join(cells)} | {share} |")
    lines += ["", "Reproduce:"] + [f"- `{r['command']}` ({r['total_seconds'] / 60:.0f} min, {r['created'][:10]})" for _, r in records
                                   if "head+tail" in r["settings"]]  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["frozen", "rounding", "footprint", "knob", "report"])
    parser.add_argument("knob", nargs="?", choices=list(KNOBS))
    parser.add_argument("--resume", action="store_true", help="knob: continue from the last checkpoint of this setting")
    parser.add_argument("--readme", help="report: regenerate the nf4 block of this Markdown file")
    args = parser.parse_args(argv)
    hardware.quiet_bitsandbytes_kernel_hub()
    catalog.cache_root()
    if args.study == "frozen":
        study_frozen(argv)
    elif args.study == "rounding":
        study_rounding(argv)
    elif args.study == "footprint":
        study_footprint(argv)
    elif args.study == "knob":
        if not args.knob:
            parser.error(f"knob: name one of {', '.join(KNOBS)}")
        study_knob(args.knob, argv, args.resume)
    section = nf4_section()
    print(section)
    if args.readme:
        report.replace_block(args.readme, "nf4", section)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
