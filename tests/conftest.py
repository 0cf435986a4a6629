"""Test set-up: offline, few threads, no hub access, real ALFWorld data only when present."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

import signal  # noqa: E402

# A shell that starts `make test` in the background without job control ignores SIGINT in it, and an
# ignored signal stays ignored in every child: the Ctrl-C tests' stages would then never see their
# Ctrl-C. Handled here, the children start with the default action again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pipeline.config import Config, load_config  # noqa: E402
from pipeline.shards import MANIFEST_NAME, read_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
# A few lines in the shape of ALFWorld prompts and responses, to train the tiny tokenizers of model tests on.
CORPUS = [
    "You arrive at countertop 1. On the countertop 1, you see a apple 1, a knife 2, and a mug 3.",
    "<action>go to fridge 1</action>",
    "<action>move mug 1 to shelf 2</action>",
    "Your task is to: put a clean mug in coffeemachine.",
] * 20


@pytest.fixture(scope="module")
def generator():
    """A tiny untrained model and its tokenizer on CORPUS, behind the hf generator."""
    from pipeline.backends.hf import HFGenerator
    from pipeline.tiny_models import STUDENT_SPEC, build_tiny_model, train_tokenizer

    tokenizer = train_tokenizer(CORPUS, vocab_size=400)
    model = build_tiny_model(tokenizer, STUDENT_SPEC, seed=3)
    return HFGenerator(model, tokenizer)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Student and teacher built once per session by the real `prepare` code path."""
    from pipeline.prepare import prepare_tiny_models

    root = tmp_path_factory.mktemp("models")
    paths = {"student": root / "tiny-student", "teacher": root / "tiny-teacher"}
    config = load_config(DEFAULT_CONFIG, [f"models.{name}={path}" for name, path in paths.items()])
    prepare_tiny_models(config, force=False)
    return paths


@pytest.fixture(scope="session")
def small_settings(tiny_models) -> list[str]:
    """Overrides that make every stage small and fast: the tiny models, few games, short episodes."""
    return [
        f"models.student={tiny_models['student']}",
        f"models.teacher={tiny_models['teacher']}",
        "env.max_steps=4",
        "env.num_workers=2",
        "sampling.max_new_tokens=12",
        "sampling.batch_size=6",
        "rollout.num_games=6",
        "rollout.samples_per_game=1",
        "rollout.episodes_per_shard=3",
        "eval.splits=[valid_unseen]",
        "eval.samples_per_game=1",
        "eval.episodes_per_shard=3",
        "runtime.threads=1",
    ]


@pytest.fixture
def make_config(tmp_path, small_settings):
    """A small, fast stage config writing under this test's tmp_path; extra `key=value` overrides win."""

    def build(*overrides: str) -> Config:
        return load_config(DEFAULT_CONFIG, [f"runs_dir={tmp_path / 'runs'}", *small_settings, *overrides])

    return build


@pytest.fixture
def alfworld_data() -> Path:
    """The full ALFWorld data, or a skip: tests on the real splits run only where it is unpacked."""
    root = os.environ.get("ALFWORLD_DATA")
    if not root or not (Path(root) / "json_2.1.1").is_dir():
        pytest.skip("ALFWORLD_DATA is not set to the full ALFWorld data")
    return Path(root)


def wait_until_a_part_is_listed(directory: Path, stage: str, process: subprocess.Popen, seconds: float) -> None:
    """Block until the stage's manifest lists a part, the process ends, or `seconds` pass.

    Waiting for the part's file is not enough: a signal sent between its rename and the manifest
    update leaves an unlisted part, which a rerun rightly redoes, so the resume count would differ.
    """
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        if (directory / MANIFEST_NAME).exists() and read_manifest(directory, stage)["parts"]:
            return
        time.sleep(0.05)
