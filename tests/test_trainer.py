"""Training examples and the trainer: per-batch weights, micro-batch equivalence, smoke training, skipped batches."""

import copy
import math
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from pipeline import losses
from pipeline.annotate import run_annotate
from pipeline.backends.hf import load_causal_lm
from pipeline.config import LoraSettings, TrainConfig, load_config
from pipeline.errors import UserError
from pipeline.play import run_rollout
from pipeline.shards import read_stage
from pipeline.tiny_models import save_model
from pipeline.train_data import EXAMPLES_FILE, build_examples, note_columns, round_data, turn_columns
from pipeline.trainer import OPDCollator, SageOPDTrainer, train_student
from pipeline.trainer_args import sft_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
STEP_KEYS = (
    "loss",
    "grad_norm",
    "nll",
    "rkl_sampled",
    "clip_fraction",
    "mean_weight",
    "nonzero_weight_fraction",
    "skipped_turn_fraction",
    "skipped_batches",
    "tokens",
    "label_skip",
    "label_weak",
    "label_strong",
)
PER_TOKEN_NOTES = ("teacher_logprobs", "topk_ids", "topk_logprobs", "confidence")


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory, tiny_models):
    """Real turns and annotations on disk: the tiny student plays 4 games for 4 steps, the tiny teacher annotates."""
    root = tmp_path_factory.mktemp("train-shards")
    config = load_config(
        DEFAULT_CONFIG,
        [
            f"runs_dir={root / 'runs'}",
            f"models.student={tiny_models['student']}",
            f"models.teacher={tiny_models['teacher']}",
            "env.max_steps=4",
            "sampling.max_new_tokens=12",
            "rollout.num_games=4",
            "rollout.samples_per_game=1",
            "rollout.episodes_per_shard=2",
            "runtime.threads=1",
        ],
    )
    return run_rollout(config, 1).directory, run_annotate(config, 1).directory


@pytest.fixture(scope="module")
def shards(shard_dirs):
    """The real turns and annotations as lists of rows."""
    turns_dir, notes_dir = shard_dirs
    turns = read_stage(turns_dir, "turns").to_pylist()
    notes = read_stage(notes_dir, "annotations").to_pylist()
    assert len(turns) == len(notes) == 16
    assert [(t["episode_id"], t["turn"]) for t in turns] == [(n["episode_id"], n["turn"]) for n in notes]
    return turns, notes


def varied(shards, count=None):
    """Copies of the shards with mixed labels and responses cut to different lengths (consistently)."""
    turns, notes = copy.deepcopy(shards)
    for index, (turn, note) in enumerate(zip(turns, notes, strict=True)):
        keep = 3 + (index * 5) % 10
        for row, columns in ((turn, ("response_ids", "sampler_logprobs")), (note, PER_TOKEN_NOTES)):
            for column in columns:
                row[column] = row[column][:keep]
        note["label"] = ("skip", "weak", "strong")[index % 3]
    return turns[:count], notes[:count]


def by_key(rows):
    return {(row["episode_id"], row["turn"]): row for row in rows}


def batches(examples):
    grouped = {}
    for example in examples:
        grouped.setdefault(example["batch_index"], []).append(example)
    return [grouped[index] for index in sorted(grouped)]


def parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


class GradCapture(TrainerCallback):
    """Keeps the gradients the optimizer is about to apply (after accumulation, before the step)."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({name: p.grad.detach().clone() for name, p in model.named_parameters()})


def reference_gradients(model_path, examples, cfg, sampler_is_policy=True):
    """d/dθ of Σ_rows Σ_j w·ℓ / N, one unpadded row at a time, straight from losses.py: no Trainer involved.
    With `sampler_is_policy=False`, rkl's π_old is the model's own log-probs before the step."""
    model = load_causal_lm(model_path, torch.device("cpu"), torch.float32)
    for example in examples:
        ids = torch.tensor([example["prompt_ids"] + example["response_ids"]])
        start = len(example["prompt_ids"])
        response = ids[0, start:]
        logp = torch.log_softmax(model(ids).logits[0, start - 1 : -1].float(), dim=-1)
        logp_new = logp.gather(-1, response[:, None]).squeeze(-1)
        if cfg.loss == "rkl":
            sampler, teacher = torch.tensor(example["sampler_logprobs"]), torch.tensor(example["teacher_logprobs"])
            if sampler_is_policy:
                per_token = losses.rkl_loss(logp_new, sampler, teacher, cfg.clip_eps)
            else:
                per_token = losses.rkl_loss(logp_new, logp_new.detach(), teacher, cfg.clip_eps, logp_sampler=sampler)
        else:
            student_topk = logp.gather(-1, torch.tensor(example["topk_ids"]))
            per_token = losses.topk_divergence(student_topk, torch.tensor(example["topk_logprobs"]), cfg.loss[5:])
        loss = losses.weighted_token_mean(per_token, torch.tensor(example["weights"]), example["batch_tokens"])
        loss.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------ examples


@pytest.mark.parametrize(
    "switches",
    [
        {},  # SAGE-OPD: turn selection, token confidence, normalization
        {"confidence": "turn", "binary_labels": True},
        {"turn_selection": False, "confidence": "none", "normalize": False},  # standard OPD
        {"normalize": False},
    ],
)
def test_weights_are_computed_once_per_whole_optimizer_batch(shards, switches):
    turns, notes = varied(shards)
    cfg = TrainConfig(**switches)
    examples, stats = build_examples(turns, notes, cfg, world_batch=5, seed=3)
    assert [len(batch) for batch in batches(examples)] == [5, 5, 5, 1]
    assert [example["batch_index"] for example in examples] == [i // 5 for i in range(16)]
    assert sorted(by_key(examples)) == sorted(by_key(turns))
    notes_by_key = by_key(notes)
    for batch in batches(examples):
        batch_notes = [notes_by_key[(e["episode_id"], e["turn"])] for e in batch]
        lengths = [len(note["confidence"]) for note in batch_notes]
        mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
        confidence = torch.zeros(mask.shape)
        for row, note in enumerate(batch_notes):
            confidence[row, : lengths[row]] = torch.tensor(note["confidence"])
        gains = losses.label_gains(
            [note["label"] for note in batch_notes],
            alpha=cfg.alpha,
            turn_selection=cfg.turn_selection,
            binary=cfg.binary_labels,
        )
        expected = losses.token_weights(gains, confidence, mask, cfg.confidence)
        if cfg.normalize:
            expected, _ = losses.normalize_weights(expected, mask)
        tokens = sum(lengths)
        for row, example in enumerate(batch):
            assert example["batch_tokens"] == tokens
            assert example["label"] == batch_notes[row]["label"]
            torch.testing.assert_close(torch.tensor(example["weights"]), expected[row, : lengths[row]])
        total = sum(sum(example["weights"]) for example in batch)
        skipped = bool(gains.sum() == 0)
        assert all(example["batch_skipped"] == skipped for example in batch)
        if cfg.normalize:  # Σw̃ = N, or 0 for a batch of skipped turns only
            assert total == pytest.approx(0 if skipped else tokens, rel=1e-5)
        if not cfg.turn_selection and cfg.confidence == "none":
            assert all(w == 1.0 for example in batch for w in example["weights"])
    labels = [note["label"] for note in notes]
    assert stats["labels"] == {name: labels.count(name) for name in ("skip", "weak", "strong")}
    skipped = labels.count("skip") / 16 if cfg.turn_selection else 0.0
    assert stats["skipped_turn_fraction"] == pytest.approx(skipped)
    assert stats["tokens"] == sum(len(t["response_ids"]) for t in turns) and stats["batches"] == 4
    assert stats["skipped_batches"] == sum(batch[0]["batch_skipped"] for batch in batches(examples))


def test_the_shuffle_is_seeded_and_each_loss_gets_only_what_it_needs(shards):
    turns, notes = varied(shards)
    first, _ = build_examples(turns, notes, TrainConfig(), world_batch=4, seed=0)
    again, _ = build_examples(list(reversed(turns)), notes, TrainConfig(), world_batch=4, seed=0)
    other, _ = build_examples(turns, notes, TrainConfig(), world_batch=4, seed=1)
    assert first.to_list() == again.to_list()
    assert [(e["episode_id"], e["turn"]) for e in first] != [(e["episode_id"], e["turn"]) for e in other]
    needs = {
        "rkl": {"sampler_logprobs", "teacher_logprobs"},
        "topk_jsd": {"teacher_logprobs", "topk_ids", "topk_logprobs"},
        "sft": {"teacher_logprobs"},
    }
    for loss, fields in needs.items():
        (example, *_), _ = build_examples(turns, notes, TrainConfig(loss=loss), world_batch=4, seed=0)
        present = {"sampler_logprobs", "teacher_logprobs", "topk_ids", "topk_logprobs", "confidence"} & set(example)
        assert present == fields, loss


@pytest.mark.parametrize("loss", ["sft", "rkl", "topk_jsd"])
def test_a_round_is_memory_mapped_arrow_with_only_the_columns_its_loss_reads(shard_dirs, shards, tmp_path, loss):
    turns_dir, notes_dir = shard_dirs
    cache = tmp_path / "cache"
    turns, notes = round_data(turns_dir, None if loss == "sft" else notes_dir, loss, cache)
    assert turns.column_names == turn_columns(loss)
    assert notes is None if loss == "sft" else notes.column_names == note_columns(loss)
    mapped = [*turns.cache_files, *(notes.cache_files if notes is not None else [])]
    assert mapped and all(Path(entry["filename"]).is_relative_to(cache) for entry in mapped)
    cfg = TrainConfig(loss=loss)
    examples, stats = build_examples(turns, notes, cfg, world_batch=4, seed=2, cache_dir=cache)
    assert [Path(entry["filename"]) for entry in examples.cache_files] == [cache / EXAMPLES_FILE]
    rows, notes_rows = shards
    in_memory, same = build_examples(rows, None if loss == "sft" else notes_rows, cfg, world_batch=4, seed=2)
    assert not in_memory.cache_files and stats == same
    assert examples.to_list() == in_memory.to_list()
    assert "confidence" not in examples.column_names and ("topk_ids" in examples.column_names) == (loss == "topk_jsd")


def test_sft_trains_every_turn_with_weight_one_without_annotations(shards):
    turns, _ = varied(shards)
    examples, stats = build_examples(turns, None, TrainConfig(loss="sft"), world_batch=4, seed=0)
    assert len(examples) == 16 and all(e["label"] == "none" and e["gain"] == 1.0 for e in examples)
    assert all(w == 1.0 for e in examples for w in e["weights"])
    assert stats["labels"] == {"skip": 0, "weak": 0, "strong": 0, "none": 16}
    assert stats["nonzero_weight_fraction"] == 1.0 and stats["skipped_batches"] == 0


def test_turns_and_annotations_that_do_not_match_are_user_errors(shards):
    turns, notes = varied(shards)
    cfg = TrainConfig()
    with pytest.raises(UserError, match=r"1 turn\(s\) have no annotation"):
        build_examples(turns, notes[1:], cfg, world_batch=4, seed=0)
    with pytest.raises(UserError, match=r"1 annotation\(s\) have no turn"):
        build_examples(turns[1:], notes, cfg, world_batch=4, seed=0)
    with pytest.raises(UserError, match="appears twice"):
        build_examples([*turns, turns[0]], [*notes, notes[0]], cfg, world_batch=4, seed=0)
    short = [dict(notes[0], confidence=notes[0]["confidence"][:-1]), *notes[1:]]
    with pytest.raises(UserError, match="confidence for"):
        build_examples(turns, short, cfg, world_batch=4, seed=0)
    with pytest.raises(UserError, match="needs the teacher's annotations"):
        build_examples(turns, None, cfg, world_batch=4, seed=0)


def test_the_collator_pads_with_finite_zeros(shards, tiny_models):
    turns, notes = varied(shards, 3)
    examples, _ = build_examples(turns, notes, TrainConfig(loss="topk_fkl"), world_batch=3, seed=0)
    examples = examples.to_list()
    batch = OPDCollator(pad_token_id=0)(examples)
    spans = [len(e["response_ids"]) for e in examples]
    width = max(spans)
    assert batch["topk_ids"].shape == (3, width, 20) and batch["weights"].shape == (3, width)
    assert batch["response_mask"].sum(dim=1).tolist() == spans
    for key in ("weights", "teacher_logprobs", "topk_logprobs", "topk_ids", "response_ids"):
        padded = batch[key][~batch["response_mask"]]
        assert torch.isfinite(batch[key].float()).all() and (padded == 0).all(), key
    for row, example in enumerate(examples):
        ids = example["prompt_ids"] + example["response_ids"]
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
        assert batch["attention_mask"][row].sum() == len(ids)
        assert batch["response_start"][row] == len(example["prompt_ids"])
        assert batch["response_ids"][row, : spans[row]].tolist() == example["response_ids"]


# ------------------------------------------------------------------------------------------- trainer


@pytest.mark.parametrize("loss", ["rkl", "topk_fkl"])
def test_the_gradient_does_not_depend_on_the_micro_batch_split(shards, tiny_models, tmp_path, loss):
    turns, notes = varied(shards, 8)
    student = tiny_models["student"]
    grads, logged = {}, {}
    splits = {"whole": (8, 1, 1024), "split": (2, 4, 1024), "head in pieces": (8, 1, 5)}
    for name, (micro, accumulate, head_chunk) in splits.items():
        cfg = TrainConfig(  # max_grad_norm=0: no clipping, compare raw gradients
            loss=loss,
            per_device_batch_size=micro,
            gradient_accumulation_steps=accumulate,
            max_grad_norm=0.0,
            head_chunk_tokens=head_chunk,
        )
        examples, _ = build_examples(turns, notes, cfg, world_batch=8, seed=0)
        assert (
            examples.to_list()
            == build_examples(turns, notes, TrainConfig(loss=loss), world_batch=8, seed=0)[0].to_list()
        )
        capture = GradCapture()
        summary = train_student(student, examples, {}, cfg, tmp_path / name, seed=0, callbacks=[capture])
        assert summary.steps == 1 and len(capture.grads) == 1
        grads[name], logged[name] = capture.grads[0], summary.final_loss
    reference = reference_gradients(student, examples, cfg)
    assert sum(g.abs().sum() for g in reference.values()) > 0
    for name in splits:
        assert grads[name].keys() == reference.keys()
        for key, expected in reference.items():
            torch.testing.assert_close(grads[name][key], expected, atol=1e-5, rtol=1e-4)
        assert logged[name] == pytest.approx(logged["whole"], abs=1e-6)


@pytest.mark.parametrize(("micro", "accumulate", "head_chunk"), [(8, 1, 1024), (2, 4, 1024), (8, 1, 7)])
def test_rkl_off_the_sampler_takes_the_students_pi_old(shards, tiny_models, tmp_path, micro, accumulate, head_chunk):
    """Restricted decoding recorded q, not the student's π: the trainer computes π_old itself before the first
    step, and the gradient is the reference's with A and ρ against π_old and each token weighted π_old/q."""
    turns, notes = varied(shards, 8)
    for i, turn in enumerate(turns):  # q ≥ π on the tokens kept, as when decoding drops the other tokens' mass
        raised = enumerate(turn["sampler_logprobs"])
        turn["sampler_logprobs"] = [min(0.0, lp + 0.1 * (1 + (i + j) % 4)) for j, lp in raised]
    cfg = TrainConfig(
        loss="rkl",
        per_device_batch_size=micro,
        gradient_accumulation_steps=accumulate,
        max_grad_norm=0.0,
        head_chunk_tokens=head_chunk,
    )
    examples, _ = build_examples(turns, notes, cfg, world_batch=8, seed=0)
    capture = GradCapture()
    student = tiny_models["student"]
    train_student(student, examples, {}, cfg, tmp_path / "off", seed=0, callbacks=[capture], sampler_is_policy=False)
    reference = reference_gradients(student, examples, cfg, sampler_is_policy=False)
    coupled = reference_gradients(student, examples, cfg)
    for key, expected in reference.items():
        torch.testing.assert_close(capture.grads[0][key], expected, atol=1e-5, rtol=1e-4)
    assert sum((reference[k] - coupled[k]).abs().sum() for k in reference) > 1e-3  # q as π_old is another loss


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"policy": "student", "sampling": {"temperature": 1.0, "top_p": 1.0, "admissible_only": False}}, True),
        ({"policy": "student", "sampling": {"temperature": 1.0, "top_p": 1.0}}, True),  # before admissible_only
        ({"policy": "student", "sampling": {"temperature": 1.0, "top_p": 1.0, "admissible_only": True}}, False),
        ({"policy": "student", "sampling": {"temperature": 0.7, "top_p": 1.0}}, False),
        ({"policy": "student", "sampling": {"temperature": 1.0, "top_p": 0.9}}, False),
        ({"policy": "teacher", "sampling": {"temperature": 1.0, "top_p": 1.0}}, False),
        ({"sampling": {}}, True),  # a manifest from before these were recorded: the student at T=1, unrestricted
    ],
)
def test_the_sampler_is_the_policy_only_for_the_students_own_unrestricted_samples(config, expected):
    from pipeline.train import sampler_is_policy

    assert sampler_is_policy(config) is expected


def test_four_steps_on_real_shards_write_a_loadable_checkpoint(shards, tiny_models, tmp_path):
    turns, notes = shards
    cfg = TrainConfig(per_device_batch_size=2, gradient_accumulation_steps=2, learning_rate=0.001)
    examples, stats = build_examples(turns, notes, cfg, world_batch=4, seed=1)
    out = tmp_path / "round-001" / "checkpoint"
    summary = train_student(tiny_models["student"], examples, stats, cfg, out, seed=0, threads=1)
    assert summary.steps == 4 and summary.data_stats == stats
    steps = [entry for entry in summary.log_history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4]
    for entry, batch in zip(steps, batches(examples), strict=True):
        assert all(math.isfinite(entry[key]) for key in STEP_KEYS), entry
        assert entry["tokens"] == batch[0]["batch_tokens"] == sum(len(e["weights"]) for e in batch)
        assert entry["label_skip"] + entry["label_weak"] + entry["label_strong"] == 4
        assert entry["mean_weight"] == pytest.approx(1.0, abs=1e-5)
        assert entry["skipped_batches"] == 0
    assert summary.mean_loss == pytest.approx(sum(e["loss"] for e in steps) / 4)
    assert [p.name for p in out.parent.iterdir()] == ["checkpoint"]  # no temporary folder left behind
    trained = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    before = load_causal_lm(tiny_models["student"], torch.device("cpu"), torch.float32)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(tiny_models["student"]).get_vocab()
    before, after = parameters(before), parameters(trained)
    assert before.keys() == after.keys() and any(not torch.equal(before[name], after[name]) for name in before)
    text = turns[0]["prompt_text"]
    assert tokenizer(text)["input_ids"] == list(turns[0]["prompt_ids"])


@pytest.mark.parametrize("normalize", [True, False])
def test_an_all_skip_batch_trains_with_loss_zero_and_changes_nothing(shards, tiny_models, tmp_path, normalize):
    turns, notes = shards
    notes = [dict(note, label="skip") for note in notes[:8]]
    cfg = TrainConfig(per_device_batch_size=2, gradient_accumulation_steps=2, learning_rate=0.01, normalize=normalize)
    examples, stats = build_examples(turns[:8], notes, cfg, world_batch=4, seed=0)
    assert stats["skipped_batches"] == 2 and stats["skipped_turn_fraction"] == 1.0
    assert stats["nonzero_weight_fraction"] == 0.0
    out = tmp_path / "checkpoint"
    summary = train_student(tiny_models["student"], examples, stats, cfg, out, seed=0)
    steps = [entry for entry in summary.log_history if "loss" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert all(math.isfinite(entry[key]) for key in STEP_KEYS), entry
        assert entry["loss"] == 0.0 and entry["grad_norm"] == 0.0 and entry["skipped_batches"] == 1
        assert entry["mean_weight"] == 0.0 and entry["skipped_turn_fraction"] == 1.0
    before = parameters(load_causal_lm(tiny_models["student"], torch.device("cpu"), torch.float32))
    after = parameters(AutoModelForCausalLM.from_pretrained(out))
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_short_last_batch_is_a_step_of_its_own(shards, tiny_models, tmp_path):
    turns, notes = shards
    cfg = TrainConfig(per_device_batch_size=2, gradient_accumulation_steps=4, logging_steps=1)
    examples, stats = build_examples(turns[:10], notes[:10], cfg, world_batch=8, seed=0)
    summary = train_student(tiny_models["student"], examples, stats, cfg, tmp_path / "checkpoint", seed=0)
    steps = [entry for entry in summary.log_history if "loss" in entry]
    assert summary.steps == 2 and [entry["step"] for entry in steps] == [1, 2]
    assert [entry["tokens"] for entry in steps] == [batch[0]["batch_tokens"] for batch in batches(examples)]
    assert [entry["label_strong"] for entry in steps] == [
        sum(e["label"] == "strong" for e in batch) for batch in batches(examples)
    ]


def test_bf16_autocast_keeps_the_loss_finite_and_close(shards, tiny_models, tmp_path):
    turns, notes = shards
    cfg = TrainConfig(per_device_batch_size=4)
    examples, stats = build_examples(turns[:4], notes[:4], cfg, world_batch=4, seed=0)
    runs = {
        bf16: train_student(tiny_models["student"], examples, stats, cfg, tmp_path / str(bf16), seed=0, bf16=bf16)
        for bf16 in (False, True)
    }
    full, half = (run.log_history[0] for run in (runs[False], runs[True]))
    assert all(math.isfinite(half[key]) for key in STEP_KEYS), half
    assert half["nll"] != full["nll"]  # autocast was on
    assert half["nll"] == pytest.approx(full["nll"], rel=1e-3)
    assert half["loss"] == pytest.approx(full["loss"], abs=1e-3)


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation makes, forward and backward."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.numel = max([self.numel, *sizes])
        return out


def test_at_a_152k_vocabulary_a_micro_batch_never_holds_its_logits(shards, tiny_models, tmp_path):
    """Qwen2.5-7B's head size, two 512-token responses, top-20 FKL: the head runs on 128 positions at a time,
    so no tensor reaches [2, 512, vocab]; with the whole micro-batch in one piece, one does."""
    vocab, length = 152_064, 512
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"])
    model.resize_token_embeddings(vocab, mean_resizing=False)
    save_model(model, AutoTokenizer.from_pretrained(tiny_models["student"]), tmp_path / "wide")
    turns, notes = copy.deepcopy(shards)
    ids = torch.randint(0, 151_936, (2, length), generator=torch.Generator().manual_seed(0))
    for row, (turn, note) in enumerate(zip(turns[:2], notes[:2], strict=True)):
        turn.update(response_ids=ids[row].tolist(), sampler_logprobs=[-1.0] * length)
        note.update(
            teacher_logprobs=[-1.0] * length,
            topk_ids=[ids[row, :20].tolist()] * length,
            topk_logprobs=[[-3.0] * 20] * length,
            confidence=[0.05] * length,
        )
    largest = {}
    for head_chunk in (128, 1024):
        cfg = TrainConfig(loss="topk_fkl", per_device_batch_size=2, head_chunk_tokens=head_chunk)
        examples, stats = build_examples(turns[:2], notes[:2], cfg, world_batch=2, seed=0)
        with LargestTensor() as probe:
            summary = train_student(tmp_path / "wide", examples, stats, cfg, tmp_path / str(head_chunk), seed=0)
        assert summary.steps == 1 and math.isfinite(summary.final_loss)
        largest[head_chunk] = probe.numel
    assert largest[128] <= 128 * vocab < 2 * length * vocab <= largest[1024]


def test_examples_cut_for_another_batch_size_are_refused(shards, tiny_models, tmp_path):
    turns, notes = shards
    examples, stats = build_examples(turns, notes, TrainConfig(), world_batch=4, seed=0)
    cfg = TrainConfig(per_device_batch_size=2)
    with pytest.raises(ValueError, match="another optimizer batch size"):
        train_student(tiny_models["student"], examples, stats, cfg, tmp_path / "checkpoint", seed=0)
    assert not (tmp_path / "checkpoint").exists()


def test_trainer_args_reach_sft_config_and_warmup_reads_as_transformers_does(tmp_path):
    cfg = TrainConfig(warmup_steps=0.25, trainer_args={"lr_scheduler_type": "cosine", "optim": "sgd"})
    args = sft_config(cfg, tmp_path, seed=3, cuda=False, bf16=False)
    assert (str(args.lr_scheduler_type), str(args.optim), args.seed) == (
        "SchedulerType.COSINE",
        "OptimizerNames.SGD",
        3,
    )
    assert args.get_warmup_steps(40) == 10  # a share of the steps
    assert sft_config(TrainConfig(warmup_steps=3), tmp_path, seed=0, cuda=False, bf16=False).get_warmup_steps(40) == 3
    assert args.activation_checkpointing is False  # unset: on with CUDA only
    assert sft_config(
        TrainConfig(gradient_checkpointing=True), tmp_path, seed=0, cuda=False, bf16=False
    ).activation_checkpointing


def test_under_fsdp_activation_checkpointing_fsdp_checkpoints_and_asking_twice_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")  # what configs/accelerate/fsdp2.yaml launches with
    from pipeline.trainer_args import _activation_checkpointing

    assert _activation_checkpointing(TrainConfig(), cuda=True) is False  # unset: FSDP's, not the model's too
    with pytest.raises(UserError, match="^train.gradient_checkpointing and the accelerate config's") as info:
        sft_config(TrainConfig(gradient_checkpointing=True), tmp_path, seed=0, cuda=False, bf16=False)
    assert "\n" not in str(info.value)
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "false")
    assert sft_config(
        TrainConfig(gradient_checkpointing=True), tmp_path, seed=0, cuda=False, bf16=False
    ).activation_checkpointing


def test_float_inputs_stay_float32_where_deepspeed_would_cast_them_to_bf16(shards, tiny_models, tmp_path):
    """The Trainer casts every float input to DeepSpeed's dtype; the annotation tensors must not lose digits."""
    turns, notes = shards
    examples, _ = build_examples(turns[:4], notes[:4], TrainConfig(loss="topk_fkl"), world_batch=4, seed=0)
    trainer = SageOPDTrainer(
        model=load_causal_lm(tiny_models["student"], torch.device("cpu"), torch.float32),
        args=sft_config(TrainConfig(), tmp_path, seed=0, cuda=False, bf16=False),
        data_collator=OPDCollator(pad_token_id=0),
        train_dataset=examples,
        train_config=TrainConfig(loss="topk_fkl"),
    )
    trainer.is_deepspeed_enabled = True  # the Trainer's own switch for the cast
    batch = OPDCollator(pad_token_id=0)(examples.to_list())
    prepared = trainer._prepare_inputs(batch)
    for key in ("weights", "teacher_logprobs", "topk_logprobs", "batch_tokens", "gain"):
        assert prepared[key].dtype == torch.float32 and torch.equal(prepared[key], batch[key]), key
    assert prepared["input_ids"].dtype == torch.long


def test_lora_is_refused_where_the_weights_are_sharded(shards, tiny_models, tmp_path, monkeypatch):
    """FSDP and ZeRO-3 shard the weights the adapter merges into (neither runs on a CPU: the Trainer's own
    switch stands in for the launch)."""
    turns, notes = shards
    cfg = TrainConfig(per_device_batch_size=4, peft=LoraSettings(r=4, alpha=8.0))
    examples, stats = build_examples(turns[:4], notes[:4], cfg, world_batch=4, seed=0)
    made = SageOPDTrainer.__init__

    def sharded(self, *args, **kwargs):
        made(self, *args, **kwargs)
        self.is_fsdp_enabled = True

    monkeypatch.setattr(SageOPDTrainer, "__init__", sharded)
    with pytest.raises(UserError, match=r"^train.peft \(LoRA\) merges the adapter into whole weights, which FSDP"):
        train_student(tiny_models["student"], examples, stats, cfg, tmp_path / "checkpoint", seed=0)
    assert not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize(
    ("trainer_args", "message"),
    [
        ({"lr_sheduler_type": "cosine"}, "train.trainer_args.lr_sheduler_type is not a setting of TRL's SFTConfig"),
        ({"optim": "sgd", "lr_scheduler_type": "sideways"}, "train.trainer_args.lr_scheduler_type: "),
    ],
)
def test_a_bad_trainer_arg_is_named_in_one_line(tmp_path, trainer_args, message):
    with pytest.raises(UserError) as info:
        sft_config(TrainConfig(trainer_args=trainer_args), tmp_path, seed=0, cuda=False, bf16=False)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_lora_trains_only_the_adapter_and_the_checkpoint_is_base_plus_adapter(shards, tiny_models, tmp_path):
    from peft import PeftModel

    turns, notes = shards
    cfg = TrainConfig(per_device_batch_size=4, learning_rate=1e-2, peft=LoraSettings(r=4, alpha=8.0))
    examples, stats = build_examples(turns, notes, cfg, world_batch=4, seed=1)
    out = tmp_path / "checkpoint"
    assert train_student(tiny_models["student"], examples, stats, cfg, out, seed=0, threads=1).steps == 4
    student = parameters(load_causal_lm(tiny_models["student"], torch.device("cpu"), torch.float32))
    adapted = PeftModel.from_pretrained(
        load_causal_lm(tiny_models["student"], torch.device("cpu"), torch.float32), out / "adapter"
    )
    frozen = {name: value for name, value in parameters(adapted).items() if "lora_" not in name}
    assert len(frozen) == len(student)
    for name, value in frozen.items():  # peft's names: base_model.model.<name>, adapted layers' .base_layer
        assert torch.equal(value, student[name.removeprefix("base_model.model.").replace(".base_layer", "")]), name
    assert any(value.abs().sum() > 0 for name, value in parameters(adapted).items() if "lora_B" in name)

    merged = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([turns[0]["prompt_ids"] + turns[0]["response_ids"]])
    with torch.no_grad():
        expected, got = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
        before = load_causal_lm(tiny_models["student"], torch.device("cpu"), torch.float32)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - before).abs().max() > 1e-3  # the adapter changed what the merged model says
    vocabulary = AutoTokenizer.from_pretrained(tiny_models["student"]).get_vocab()
    assert AutoTokenizer.from_pretrained(out).get_vocab() == vocabulary
