"""`prepare`: the ALFWorld data sources, what is said when none is given, and idempotent model builds."""

import json
import math
import tarfile

import pytest

from pipeline import prepare as prepare_module
from pipeline.envs.games import MINI_DATA, discover_games
from pipeline.errors import UserError
from pipeline.prepare import locate_alfworld_data, prepare_tiny_models, unpack_archive
from pipeline.provenance import code_version


@pytest.fixture
def mini_archive(tmp_path):
    """An archive in the alfworld-download layout, made from the shipped mini set."""
    path = tmp_path / "alfworld-mini.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(MINI_DATA / "json_2.1.1", arcname="json_2.1.1")
    return path


def test_archive_is_unpacked_once_into_a_readable_data_root(mini_archive, tmp_path):
    dest = tmp_path / "data" / "alfworld"
    assert unpack_archive(mini_archive, dest) == dest
    assert len(discover_games(dest, "valid_unseen")) == 6
    marker = dest / "json_2.1.1" / "marker"
    marker.write_text("kept")
    unpack_archive(mini_archive, dest)  # already there: nothing is redone
    assert marker.read_text() == "kept"


def test_bad_archives_are_user_errors_and_leave_nothing(tmp_path):
    dest = tmp_path / "alfworld"
    with pytest.raises(UserError, match="archive not found"):
        unpack_archive(tmp_path / "missing.tar.gz", dest)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar file at all")
    with pytest.raises(UserError, match="cannot unpack"):
        unpack_archive(junk, dest)
    other = tmp_path / "other.tar.gz"
    (tmp_path / "readme.txt").write_text("hello")
    with tarfile.open(other, "w:gz") as tar:
        tar.add(tmp_path / "readme.txt", arcname="readme.txt")
    with pytest.raises(UserError, match="not an ALFWorld data archive"):
        unpack_archive(other, dest)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".alfworld")]


def test_missing_data_is_explained_and_only_fatal_when_needed(monkeypatch, tmp_path):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.setattr(prepare_module, "DEFAULT_FULL_DATA", tmp_path / "absent")
    root, note = locate_alfworld_data(None, download=False, required=False)
    assert root is None and note.endswith("(not needed: this config does not play the full data)")
    with pytest.raises(UserError, match="set ALFWORLD_DATA .* or pass --archive .* or --download"):
        locate_alfworld_data(None, download=False, required=True)


def test_environment_variable_is_used_when_valid(monkeypatch, tmp_path):
    monkeypatch.setenv("ALFWORLD_DATA", str(MINI_DATA))
    assert locate_alfworld_data(None, download=False, required=True) == (MINI_DATA, "from ALFWORLD_DATA")


def test_models_are_kept_when_present(tiny_models, make_config):
    config = make_config()
    before = {name: (path / "model.safetensors").stat().st_mtime_ns for name, path in tiny_models.items()}
    assert prepare_tiny_models(config, force=False) == ([], ["student", "teacher"])
    assert {name: (path / "model.safetensors").stat().st_mtime_ns for name, path in tiny_models.items()} == before


def test_a_missing_teacher_is_built_with_the_students_tokenizer(tiny_models, make_config, tmp_path):
    from pipeline.backends.hf import load_tokenizer

    teacher = tmp_path / "new-teacher"
    config = make_config(f"models.teacher={teacher}")
    assert prepare_tiny_models(config, force=False) == (["teacher"], ["student"])
    student_tok, teacher_tok = load_tokenizer(tiny_models["student"]), load_tokenizer(teacher)
    assert student_tok.get_vocab() == teacher_tok.get_vocab()


def test_warm_starts_train_each_model_once_and_record_it(tiny_models, make_config, tmp_path):
    import shutil

    from pipeline.warm_start import SFT_RECORD, warm_start_models

    models = {name: tmp_path / name for name in tiny_models}
    for name, path in tiny_models.items():
        shutil.copytree(path, models[name])
    for game in discover_games(MINI_DATA, "train")[:3]:  # a 3-game split keeps the warm start short
        folder = game.path.parent.parent
        shutil.copytree(folder, tmp_path / "few" / "json_2.1.1" / "train" / folder.name)
    config_overrides = (
        f"models.student={models['student']}",
        f"models.teacher={models['teacher']}",
        f"data.path={tmp_path / 'few'}",
        "rollout.num_games=1",  # a per-round sample; warm starts learn every game of the split
        "eval.splits=[train]",  # the only split here: the probe plays its games with a new draw of detours
        "eval.num_games=2",
        "prepare.teacher_sft_epochs=2",
        "prepare.student_sft_epochs=1",
        "prepare.sft_batch_size=4",
        "prepare.teacher_dagger_samples=2",
        "prepare.student_dagger_samples=1",
        "prepare.teacher_dagger_iterations=2",  # then the teacher's own episodes, 1 epoch more on all rows, twice
    )
    config = make_config(*config_overrides)
    records = warm_start_models(config)
    teacher, student = records["teacher"], records["student"]
    assert (teacher["games"], teacher["epochs"], student["epochs"]) == (3, 2.0, 1.0)
    assert teacher["turns"] == student["turns"] > 0
    assert teacher["dagger_turns"] > student["dagger_turns"] > 0  # each model gets its own DAgger episodes
    assert teacher["own_turns"] >= 3 and student["own_turns"] == 0  # one episode of each game, only the teacher
    first, (own_1, own_2) = teacher["turns"] + teacher["dagger_turns"], teacher["own_turns_per_iteration"]
    assert own_1 + own_2 == teacher["own_turns"] and student["own_turns_per_iteration"] == []
    iterations = math.ceil((first + own_1) / 4) + math.ceil((first + own_1 + own_2) / 4)
    assert teacher["steps"] == 2 * math.ceil(first / 4) + iterations
    assert student["steps"] == math.ceil((student["turns"] + student["dagger_turns"]) / 4)
    assert 0.0 <= teacher["greedy_success"] <= 1.0
    assert teacher["provenance"] == {**code_version(), "world_size": 1, "device": "cpu", "dtype": "float32"}
    for record in (teacher, student):  # the next action on one noisy-expert episode of every eval game
        assert list(record["action_accuracy"]) == config.eval.splits
        for by_verb in record["action_accuracy"].values():
            right, states = by_verb["all"]
            assert 0 <= right <= states > 0
            assert sum(count for verb, (_, count) in by_verb.items() if verb != "all") == states
    stamp = (models["teacher"] / "model.safetensors").stat().st_mtime_ns
    assert warm_start_models(config) == records  # recorded: nothing is trained again
    assert (models["teacher"] / "model.safetensors").stat().st_mtime_ns == stamp
    assert (models["teacher"] / SFT_RECORD).is_file()
    prompt = {"history": config.env.history, "max_steps": config.env.max_steps, "think": False}
    assert teacher["prompt"] == {**prompt, "listing": "sorted", "memory": False}
    other_prompts = make_config(*config_overrides, f"env.history={config.env.history + 1}")
    with pytest.raises(UserError, match=rf"warm-started with env.history={config.env.history}, not"):
        warm_start_models(other_prompts)  # kept silently, it would play prompts it never saw
    with pytest.raises(UserError, match=r"warm-started with env.listing=sorted, not"):
        warm_start_models(make_config(*config_overrides, "env.listing=shuffled"))
    with pytest.raises(UserError, match=r"warm-started with env.memory=False, not"):
        warm_start_models(make_config(*config_overrides, "env.memory=true"))
    records_before = {name: (models[name] / SFT_RECORD).read_text() for name in ("teacher", "student")}
    for record_path in (models[name] / SFT_RECORD for name in ("teacher", "student")):  # as written before listings
        record_path.write_text(json.dumps({**json.loads(record_path.read_text()), "prompt": prompt}))
    assert warm_start_models(config)["teacher"]["prompt"] == prompt  # taken as sorted, no memory: all there was
    with pytest.raises(UserError, match=r"warm-started with env.listing=sorted, not"):
        warm_start_models(make_config(*config_overrides, "env.listing=shuffled"))
    for record_path in (models[name] / SFT_RECORD for name in ("teacher", "student")):  # a removed listing (#28)
        shaped = {**prompt, "go_to_order": "deliver_last"}
        record_path.write_text(json.dumps({**json.loads(record_path.read_text()), "prompt": shaped}))
    with pytest.raises(UserError, match=r"warm-started with env.listing=deliver_last, not this config's"):
        warm_start_models(config)
    for name, text in records_before.items():
        (models[name] / SFT_RECORD).write_text(text)
    assert teacher["recipe"]["prepare.teacher_dagger_iterations"] == 2
    other_recipes = {  # each would keep weights trained another way: the folder is named in the refusal
        "prepare.teacher_dagger_iterations=1": r"teacher was warm-started with prepare.teacher_dagger_iterations=2,",
        "sampling.admissible_only=true": r"teacher was warm-started with sampling.admissible_only=False,",
        "prepare.student_sft_epochs=2": r"student was warm-started with prepare.student_sft_epochs=1.0,",
        "prepare.teacher_shape=64x2": r"teacher was warm-started with prepare.teacher_shape=128x4,",
    }
    for override, message in other_recipes.items():
        with pytest.raises(UserError, match=message):
            warm_start_models(make_config(*config_overrides, override))
    assert warm_start_models(make_config(*config_overrides, "seed=1")) == warm_start_models(config)  # seeds share
