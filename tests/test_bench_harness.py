"""bench/harness.py: weights paged in before memory is read; a worker's JSON comes back from its own process."""

import os

import torch
from conftest import load_bench

harness = load_bench("harness")


def test_page_in_weights_leaves_nothing_for_a_step_to_page_in(tmp_path):
    """Safetensors weights may be file-mapped: once paged in, reading them again adds no memory."""
    import psutil
    from transformers import GPT2Config, GPT2ForSequenceClassification

    GPT2ForSequenceClassification(GPT2Config(n_layer=2, vocab_size=50000, n_embd=768)).save_pretrained(tmp_path)
    model = GPT2ForSequenceClassification.from_pretrained(tmp_path)  # ~210 MB of weights
    harness.page_in_weights(model)
    rss = psutil.Process().memory_info().rss
    for p in model.parameters():  # what a training step's first forward would touch
        p.detach().sum()
    assert psutil.Process().memory_info().rss - rss < 0.05 * model.get_memory_footprint()
    reloaded = dict(GPT2ForSequenceClassification.from_pretrained(tmp_path).named_parameters())
    assert all(torch.equal(reloaded[name], p) for name, p in model.named_parameters())  # read, not changed


def test_a_worker_runs_in_its_own_process_and_returns_its_json(tmp_path):
    script = tmp_path / "echo_worker.py"
    script.write_text(
        "import json, os, sys\n"
        "args = sys.argv[sys.argv.index('--worker') + 1 :]\n"
        "json.dump({'pid': os.getpid(), 'args': args[:-1], 'env': os.environ.get('WORKER_ENV')}, open(args[-1], 'w'))\n"
    )
    result = harness.run_in_worker(str(script), ["--flag"], ["a", "b"], env={"WORKER_ENV": "set", "PATH": ""})
    assert result["args"] == ["a", "b"] and result["env"] == "set" and result["pid"] != os.getpid()


def test_records_name_what_else_ran_without_a_machines_folders():
    command = "/work/x/.venv/bin/python -m ipykernel_launcher -f /tmp/tmp1.json --HistoryManager.hist_file=:memory:"
    assert harness.without_folders(command) == "python -m ipykernel_launcher -f tmp1.json --HistoryManager.hist_file=:memory:"
    assert harness.without_folders("python bench/nf4.py knob r16") == "python bench/nf4.py knob r16"  # relative stays
