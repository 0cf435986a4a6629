"""Config: YAML + overrides land in typed fields; every mistake is one clear UserError."""

from pathlib import Path

import pytest

from pipeline.config import Config, load_config
from pipeline.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_without_a_file():
    config = load_config(None)
    assert config == Config()
    assert config.eval.splits == ["valid_seen", "valid_unseen"]
    assert config.eval.temperature == 0.4
    assert config.rollout.temperature is None


@pytest.mark.parametrize("name", ["default.yaml", "alfworld-qwen.yaml"])
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / name)
    assert config.env.history == 2


def test_real_setting_follows_the_usual_protocol():
    config = load_config(REPO / "configs" / "alfworld-qwen.yaml")
    assert (config.env.max_steps, config.env.think, config.data.source) == (50, True, "alfworld")
    assert config.eval.splits == ["valid_seen", "valid_unseen"]


def test_overrides_are_typed_and_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  num_games: 3\nsampling:\n  temperature: 1\n")
    config = load_config(path, ["rollout.num_games=5", "rollout.splits=[valid_seen, valid_unseen]", "seed=7"])
    assert config.rollout.num_games == 5
    assert config.rollout.splits == ["valid_seen", "valid_unseen"]
    assert config.sampling.temperature == 1.0 and isinstance(config.sampling.temperature, float)
    assert config.seed == 7


def test_a_single_split_may_be_given_without_brackets():
    assert load_config(None, ["eval.splits=valid_unseen"]).eval.splits == ["valid_unseen"]


def test_eval_keeps_its_own_defaults_when_partly_overridden():
    config = load_config(None, ["eval.num_games=2"])
    assert config.eval.splits == ["valid_seen", "valid_unseen"] and config.eval.temperature == 0.4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.bogus=1"], "unknown config key 'rollout.bogus'"),
        (["bogus=1"], "unknown config key 'bogus'"),
        (["env.max_steps=many"], "config key 'env.max_steps' must be int, got \"many\""),
        (["env.max_steps=0"], "bad config value in env: max_steps must be at least 1, not 0."),
        (["rollout.splits=[train, test]"], "unknown split 'test'; choose from train, valid_seen"),
        (["sampling.top_p=1.5"], "top_p must be in (0, 1], not 1.5."),
        (["sampling.backend=tgi"], "backend must be 'hf' or 'vllm', not 'tgi'."),
        (["env.think=maybe"], "config key 'env.think' must be bool"),
        (["run=../elsewhere"], "run must be a plain folder name"),
        (["rollout.num_games"], "--set expects key=value"),
        (["env.max_steps.x=1"], "config key 'env.max_steps' must be int, got {\"x\": 1}"),
        (["prepare.student_dagger_samples=-1"], "student_dagger_samples must be 0 or more, not -1."),
        (["prepare.dagger_epsilon=1.5"], "dagger_epsilon must be in [0, 1], not 1.5."),
        (["prepare.teacher_dagger_epsilon=0.4"], "unknown config key 'prepare.teacher_dagger_epsilon'"),
        (["train.warmup_steps=2.5"], "bad config value in train: warmup_steps must be a whole number of steps or"),
        (["train.warmup_steps=-0.1"], "a share in [0, 1), not -0.1."),
        (["train.warmup_ratio=0.1"], "unknown config key 'train.warmup_ratio'"),
        (["train.trainer_args=5"], "config key 'train.trainer_args' must be a mapping of settings, got 5"),
        (
            ["train.trainer_args.num_train_epochs=3"],
            "trainer_args.num_train_epochs is set by sage-opd: set train.epochs",
        ),
        (["train.trainer_args.report_to=wandb"], "trainer_args.report_to is set by sage-opd: set train.report_to"),
        (["train.save_steps=-1"], "save_steps must be 0 (never) or more, not -1."),
        (["train.peft.r=-1"], "bad config value in train.peft: r must be 0 (no adapters) or more, not -1."),
        (["train.peft.dropout=1"], "dropout must be in [0, 1), not 1.0."),
        (["train.peft.target_modules=[]"], "target_modules must name at least one module"),
        (["train.trainer_args.save_strategy=epoch"], "save_strategy is set by sage-opd: set train.save_steps"),
        (["train.trainer_args.resume_from_checkpoint=true"], "a killed train resumes by itself"),
        (["train.trainer_args.dataloader_drop_last=true"], "trainer_args.dataloader_drop_last is set by sage-opd"),
        (["train.max_grad_norm=-1"], "max_grad_norm must be 0 (no clipping) or more, not -1.0."),
        (["train.weight_decay=-5"], "weight_decay must be 0 or more, not -5.0."),
        (["sampling.admissible_only=true", "env.think=true"], "admissible_only constrains the whole response"),
        (["prepare.teacher_dagger_iterations=-1"], "teacher_dagger_iterations must be 0 or more, not -1."),
        (["prepare.teacher_iteration_epochs=0"], "teacher_iteration_epochs must be positive, not 0.0."),
        (["sampling.admissible_only=true", "sampling.backend=vllm"], "admissible_only needs sampling.backend: hf."),
    ],
)
def test_bad_values_are_user_errors(overrides, message, tmp_path):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_training_edges_are_accepted():
    config = load_config(None, ["train.warmup_steps=0.99", "train.max_grad_norm=0", "train.weight_decay=0"])
    assert (config.train.warmup_steps, config.train.max_grad_norm, config.train.weight_decay) == (0.99, 0.0, 0.0)
    assert load_config(None, ["train.warmup_steps=10"]).train.warmup_steps == 10  # steps, not a share
    passed = load_config(None, ["train.trainer_args.lr_scheduler_type=cosine", "train.trainer_args.optim=sgd"])
    assert passed.train.trainer_args == {"lr_scheduler_type": "cosine", "optim": "sgd"}


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(listing)


def test_a_file_can_build_on_a_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\nenv:\n  max_steps: 7\n  history: 1\ntrain:\n  alpha: 0.25\n")
    (tmp_path / "top.yaml").write_text("base: base.yaml\nrun: top\nenv:\n  max_steps: 9\n")
    config = load_config(tmp_path / "top.yaml")
    assert (config.run, config.seed, config.env.max_steps, config.env.history, config.train.alpha) == (
        "top",
        3,
        9,
        1,
        0.25,
    )


def test_a_base_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UserError, match="has a `base` cycle"):
        load_config(tmp_path / "a.yaml")


ABLATIONS = {
    # name: (loss, turn_selection, confidence, normalize, binary_labels, rollout policy); loss None = the base's
    "sage": (None, True, "token", True, False, "student"),
    "opd": (None, False, "none", False, False, "student"),
    "opd-rkl": ("rkl", False, "none", False, False, "student"),
    "no-turn-selection": (None, False, "token", True, False, "student"),
    "no-confidence": (None, True, "none", True, False, "student"),
    "no-normalization": (None, True, "token", False, False, "student"),
    "binary-label": (None, True, "token", True, True, "student"),
    "turn-confidence": (None, True, "turn", True, False, "student"),
    "sft": ("sft", False, "none", False, False, "expert"),
    "sft-teacher": ("sft", False, "none", False, False, "teacher"),
}


@pytest.mark.parametrize("base", [None, "bench.yaml"])
@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_is_its_base_setting_with_its_switches(name, base):
    """Over its own base (default.yaml) or over another one given as `base` (the mini benchmark's)."""
    base_path = REPO / "configs" / (base or "default.yaml")
    config = load_config(REPO / "configs" / "ablations" / f"{name}.yaml", base=base_path if base else None)
    setting = load_config(base_path)
    train = config.train
    loss, *switches, policy = ABLATIONS[name]
    assert (train.loss, train.turn_selection, train.confidence, train.normalize, train.binary_labels) == (
        loss or setting.train.loss,
        *switches,
    )
    assert config.run == name and config.rollout.policy == policy
    assert (config.data, config.models, config.env, config.sampling, config.annotate, config.prepare, config.eval) == (
        setting.data,
        setting.models,
        setting.env,
        setting.sampling,
        setting.annotate,
        setting.prepare,
        setting.eval,
    )


def test_every_ablation_file_is_covered():
    assert {p.stem for p in (REPO / "configs" / "ablations").glob("*.yaml")} == set(ABLATIONS)


def test_a_config_without_a_file_can_still_take_a_base():
    assert load_config(None, [], base=REPO / "configs" / "bench.yaml").data.source == "bench"


def test_the_new_prepare_settings_are_checked():
    with pytest.raises(UserError, match="teacher_shape must read <hidden size>x<layers>"):
        load_config(None, ["prepare.teacher_shape=128-4"])
    with pytest.raises(UserError, match="dagger_expert must be one of planner, search, sweep, not 'oracle'"):
        load_config(None, ["prepare.dagger_expert=oracle"])
    with pytest.raises(UserError, match="unknown split 'test' in tokenizer_splits"):
        load_config(None, ["prepare.tokenizer_splits=[train, test]"])
    with pytest.raises(UserError, match="source must be one of mini, bench, alfworld"):
        load_config(None, ["data.source=real"])
    with pytest.raises(UserError, match="listing must be one of sorted, shuffled, not 'by_task'"):
        load_config(None, ["env.listing=by_task"])


def test_the_sealed_test_splits_are_for_eval_only():
    assert load_config(None, ["eval.splits=[test_seen, test_unseen]"]).eval.splits == ["test_seen", "test_unseen"]
    with pytest.raises(UserError, match="rollout may not play the sealed test split test_unseen"):
        load_config(None, ["rollout.splits=[train, test_unseen]"])
    with pytest.raises(UserError, match="tokenizer_splits may not name the sealed test split test_seen"):
        load_config(None, ["prepare.tokenizer_splits=[train, test_seen]"])


@pytest.mark.parametrize("listing", ["from_here", "next_last", "task_last", "deliver_last"])
def test_a_removed_listing_gets_one_line_saying_why(listing):
    """The shaped listings of earlier versions are gone (#28): under either the old key or the new one, the
    user is told what happened and what to use, not "unknown key"."""
    with pytest.raises(UserError, match=r"env.go_to_order was removed in issue #28: .* use env.listing: sorted"):
        load_config(None, [f"env.go_to_order={listing}"])
    with pytest.raises(UserError, match=rf"listing {listing} was removed in issue #28: .*120 of 120"):
        load_config(None, [f"env.listing={listing}"])


def test_scientific_notation_is_a_float():
    assert load_config(None, ["train.learning_rate=1e-3"]).train.learning_rate == 0.001
    with pytest.raises(UserError, match="'train.learning_rate' must be float"):
        load_config(None, ["train.learning_rate=fast"])
