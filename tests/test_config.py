import os

import pytest

from peft_sentiment import config
from peft_sentiment.config import PROFILES, config_to_dict, make_config, parse_overrides, resolve_profile
from peft_sentiment.experiment import save_dir
from peft_sentiment.variants import VARIANTS, variants_to_run


def test_profiles_resolve_and_full_keeps_the_reference_lora_setup():
    full = make_config("full")
    assert (full.model_name, full.max_length, full.train_size, full.test_size) == ("gpt2", 512, None, None)
    assert (full.lora_r, full.lora_alpha, full.lora_dropout) == (4, 16, 0.1)
    assert full.nf4_compute_dtype == "auto"  # the reference's bf16 where the GPU computes it natively (test_hardware)
    assert (full.dataset, full.text_column, full.label_column, full.prompt_suffix) == ("stanfordnlp/imdb", "text", "label", "")
    # the committed adapters sit beside the notebook; each variant names its folder under save_dir
    assert [str(save_dir(full, v)) for v in VARIANTS.values()] == [
        "None", "saved_f32_lora", "saved_nf4_lora", "saved_full_finetune"
    ]  # fmt: skip


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_smoke_and_quick_never_write_the_committed_folders(profile):
    cfg = make_config(profile)
    assert all(str(save_dir(cfg, v)).startswith(f"runs/{profile}/") for v in VARIANTS.values() if v.save_dir)
    assert cfg.records_dir.startswith(f"runs/{profile}/") and cfg.work_dir.startswith(f"runs/{profile}/")


def test_quick_is_cpu_on_fewer_reviews_head_only_and_lora():
    quick, cpu = make_config("quick"), make_config("cpu")
    assert (quick.model_name, quick.train_size, quick.val_size, quick.test_size, quick.max_length) == (
        "smollm2-135m", 500, 100, 500, cpu.max_length
    )  # fmt: skip
    assert (quick.test_seed, quick.retired_test_subset) == (cpu.test_seed, cpu.retired_test_subset)  # fresh test reviews
    assert list(variants_to_run(quick)) == ["head_only", "lora"]
    assert list(variants_to_run(cpu)) == list(VARIANTS) and cpu.variants is None


def test_another_dataset_drops_imdbs_prompt_suffix_and_writes_under_its_own_name(monkeypatch):
    monkeypatch.setenv("IMDB_DATA_DIR", "/somewhere/imdb")
    cpu = make_config("cpu")
    assert cpu.prompt_suffix and cpu.data_dir == "/somewhere/imdb"  # IMDB keeps its suffix and its local copy
    own = make_config("cpu", dataset="/data/my_reviews/", text_column="review", label_column="sentiment")
    assert own.prompt_suffix == "" and own.data_dir is None  # $IMDB_DATA_DIR is IMDB's, never another dataset's
    assert (own.save_dir, own.records_dir, own.work_dir) == (
        "runs/cpu/my_reviews", "runs/cpu/my_reviews/records", "runs/cpu/my_reviews/work"
    )  # fmt: skip
    assert all(str(save_dir(own, v)).startswith("runs/cpu/my_reviews/") for v in VARIANTS.values() if v.save_dir)
    # what is set explicitly wins over those defaults
    chosen = make_config("smoke", dataset="me/reviews", prompt_suffix=" Verdict:", records_dir="out")
    assert (chosen.prompt_suffix, chosen.records_dir, chosen.work_dir) == (" Verdict:", "out", "runs/smoke/reviews/work")
    assert config_to_dict(make_config("smoke", dataset="/abs/data"))["dataset"] == os.path.relpath("/abs/data")


def test_profile_comes_from_the_environment(monkeypatch):
    monkeypatch.setattr(config, "default_profile", lambda: pytest.fail("$PEFT_PROFILE is set: no need to look"))
    monkeypatch.setenv("PEFT_PROFILE", "smoke")
    assert resolve_profile() == "smoke"
    assert resolve_profile("full") == "full"  # an explicit argument wins


@pytest.mark.parametrize(
    "gpu, hub, expected",
    [(True, True, "full"), (True, False, "quick"), (False, True, "quick"), (False, False, "quick")],
)
def test_without_a_profile_full_needs_a_gpu_and_the_hub_else_quick(gpu, hub, expected, monkeypatch):
    monkeypatch.delenv("PEFT_PROFILE", raising=False)
    monkeypatch.setattr(config.hardware, "on_gpu", lambda: gpu)
    monkeypatch.setattr(config, "hub_reachable", lambda: hub if gpu else pytest.fail("no GPU: no need to ask the Hub"))
    assert resolve_profile() == expected and make_config().profile == expected
    assert config.choose_profile()[1]  # and says why


def test_the_hub_check_is_false_offline():
    assert config.hub_reachable(timeout=1) is False  # the suite runs with HF_HUB_OFFLINE and no network


def test_every_profile_says_what_it_costs():
    assert set(config.PROFILE_COSTS) == set(PROFILES)
    assert all(cost.startswith(("About", "Under", "Not yet measured")) for cost in config.PROFILE_COSTS.values())


def test_variants_are_chosen_by_name_and_checked():
    assert make_config("smoke", variants=["lora"]).variants == ("lora",)  # a list from JSON
    assert make_config("smoke", **parse_overrides(["variants=head_only,lora"])).variants == ("head_only", "lora")
    assert make_config("smoke", **parse_overrides(["variants=None"])).variants is None
    assert config_to_dict(make_config("smoke", variants="nf4_lora"))["variants"] == ["nf4_lora"]
    cfg = make_config("smoke", variants=("nf4_lora", "head_only"))
    assert list(variants_to_run(cfg)) == ["head_only", "nf4_lora"]  # declaration order: the order of tables and runs
    with pytest.raises(ValueError, match=r"Unknown variant 'qlora'\. Valid variants: head_only, lora, nf4_lora, full_finetune"):
        variants_to_run(make_config("smoke", variants="lora,qlora"))  # before any work: run_training asks first
    with pytest.raises(ValueError, match="none named"):
        make_config("smoke", variants=())


def test_data_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMDB_DATA_DIR", str(tmp_path))
    assert make_config("smoke").data_dir == str(tmp_path)
    assert make_config("smoke", data_dir="/elsewhere").data_dir == "/elsewhere"


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Valid profiles: full, cpu, quick, smoke"):
        make_config("fast")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) \['lora_rank'\].*lora_r"):
        make_config("smoke", lora_rank=8)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train_size": 0}, "train_size=0"),
        ({"test_size": -5}, "test_size=-5"),
        ({"max_length": 0}, "max_length=0"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"nf4_compute_dtype": "int4"}, "nf4_compute_dtype"),
        ({"truncation": "middle"}, "truncation='middle': choose one of head, tail, head\\+tail"),
        ({"truncation_head_share": 1.5}, "truncation_head_share=1.5"),
        ({"lora_r": "abc"}, "lora_r='abc': must be an integer"),
        ({"train_size": 2.5}, "train_size=2.5: must be an integer or None"),
        ({"head_on_cached_features": "yes"}, "head_on_cached_features='yes': must be True or False"),
    ],
)
def test_bad_values_are_rejected_before_any_work(override, message):
    with pytest.raises(ValueError, match=message):
        make_config("smoke", **override)


def test_profiles_are_full_plus_their_differences():
    from peft_sentiment.config import FULL, config_to_dict

    full = config_to_dict(FULL)
    for name in ("cpu", "smoke"):
        changed = {k for k, v in config_to_dict(PROFILES[name]).items() if v != full[k]}
        assert changed and "seed" not in changed and {"profile", "model_name"} <= changed
    cpu = config_to_dict(PROFILES["cpu"])  # quick is what it changes from cpu: its model and recipe stay cpu's
    changed = {k for k, v in config_to_dict(PROFILES["quick"]).items() if v != cpu[k]}
    assert changed == {"profile", "train_size", "val_size", "test_size", "checkpoint_every", "variants",
                       "save_dir", "records_dir", "work_dir"}  # fmt: skip
    assert make_config("cpu").precision == make_config("full").precision == "auto"


def test_overrides_leave_the_profile_untouched_and_serialise():
    cfg = make_config("smoke", lora_targets=["c_attn"], lr_lora=1e-3)
    assert cfg.lora_targets == ("c_attn",) and cfg.lr_lora == 1e-3
    assert PROFILES["smoke"].lr_lora != 1e-3
    assert config_to_dict(cfg)["lora_targets"] == ["c_attn"]
    # each variant names the field that holds its learning rate, so a profile tunes it in one place
    assert {name: getattr(cfg, v.learning_rate) for name, v in VARIANTS.items()} == {
        "head_only": cfg.lr_head, "lora": 1e-3, "nf4_lora": 1e-3, "full_finetune": cfg.lr_full
    }  # fmt: skip


def test_another_dataset_leaves_imdbs_settings_with_imdb(tmp_path):
    """IMDB's retired test reviews, prompt suffix and one-epoch budget are IMDB's: another dataset gets config.OWN_DATA
    (early stopping within a cap), unless it sets them itself."""
    imdb, own = make_config("quick"), make_config("quick", dataset=str(tmp_path))
    assert imdb.retired_test_subset == (1000, 42) and imdb.early_stopping_patience is None and imdb.epochs == 1
    assert {name: getattr(own, name) for name in config.OWN_DATA} == config.OWN_DATA
    assert own.retired_test_subset is None and own.early_stopping_patience == 3 and own.save_dir.startswith("runs/quick/")
    chosen = make_config("quick", dataset=str(tmp_path), epochs=2, early_stopping_patience=None)
    assert (chosen.epochs, chosen.early_stopping_patience) == (2, None)
    with pytest.raises(ValueError, match="early_stopping_patience=0: must be positive, or None"):
        make_config("quick", early_stopping_patience=0)
