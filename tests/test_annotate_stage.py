"""The annotate stage on real turns: exact teacher numbers, labels, resume, isolation, refusals."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig
from typer.testing import CliRunner

from pipeline import annotate as annotate_module
from pipeline.annotate import run_annotate
from pipeline.backends.hf import load_causal_lm, stop_ids
from pipeline.errors import UserError
from pipeline.judges import rule_flags
from pipeline.play import run_rollout
from pipeline.schema import ANNOTATIONS_SCHEMA
from pipeline.shards import MANIFEST_NAME, read_stage
from pipeline.tiny_models import TEACHER_SPEC, build_tiny_model, save_model, train_tokenizer
from stages.cli import app


@pytest.fixture
def rolled_out(make_config):
    config = make_config("rollout.num_games=4", "env.max_steps=3")
    turns_dir = run_rollout(config, 1).directory
    return config, turns_dir


def joined(config, turns_dir, out="annotations"):
    turns = read_stage(turns_dir, "turns").to_pandas()
    notes = read_stage(turns_dir.parent / out, "annotations").to_pandas()
    return turns, notes


def test_annotations_align_with_turns_and_hold_the_teachers_exact_numbers(rolled_out, tiny_models):
    config, turns_dir = rolled_out
    result = run_annotate(config, 1)
    assert result.complete and result.parts_written == 2 and result.turns == 12
    for part in sorted(result.directory.glob("part-*.parquet")):
        assert pq.read_schema(part).remove_metadata() == ANNOTATIONS_SCHEMA
    turns, notes = joined(config, turns_dir)
    assert notes[["episode_id", "turn"]].values.tolist() == turns[["episode_id", "turn"]].values.tolist()
    teacher = load_causal_lm(tiny_models["teacher"], torch.device("cpu"), torch.float32)
    for (_, turn), (_, note) in zip(turns.iterrows(), notes.iterrows(), strict=True):
        prompt, response = list(turn["prompt_ids"]), list(turn["response_ids"])
        n = len(response)
        assert len(note["teacher_logprobs"]) == len(note["topk_ids"]) == len(note["confidence"]) == n
        with torch.no_grad():
            logits = teacher(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1].float()
        full = torch.log_softmax(logits, -1)
        expected_top = full.topk(20, dim=-1)
        topk_logprobs = np.stack(note["topk_logprobs"])
        np.testing.assert_allclose(note["teacher_logprobs"], full[torch.arange(n), response].numpy(), atol=1e-5)
        np.testing.assert_allclose(topk_logprobs, expected_top.values.numpy(), atol=1e-5)
        assert np.all(np.diff(topk_logprobs, axis=1) <= 0)
        np.testing.assert_allclose(note["confidence"], np.exp(topk_logprobs[:, 0]), rtol=1e-6)
        assert note["teacher"] == str(tiny_models["teacher"])


def test_labels_follow_rules_then_the_likelihood_judge(rolled_out):
    config, turns_dir = rolled_out
    run_annotate(config, 1)
    turns, notes = joined(config, turns_dir)
    for (_, turn), (_, note) in zip(turns.iterrows(), notes.iterrows(), strict=True):
        flags = rule_flags(turn)
        assert list(note["rule_flags"]) == list(flags)
        if flags:
            assert (note["label"], note["label_source"]) == ("strong", "rule") and pd.isna(note["judge_output"])
        else:
            assert note["label_source"] == "judge" and note["judge_output"].startswith("p=")


def test_responses_cut_by_the_token_limit_are_truncated_turns_with_no_action_and_aligned_annotations(
    make_config, tiny_models
):
    """At 3 new tokens the untrained student seldom ends its answer: those turns send the empty command."""
    config = make_config("sampling.max_new_tokens=3", "rollout.num_games=2", "env.max_steps=3")
    turns_dir = run_rollout(config, 1).directory
    run_annotate(config, 1)
    turns, notes = joined(config, turns_dir)
    student = tiny_models["student"]
    stops = stop_ids(GenerationConfig.from_pretrained(student), AutoTokenizer.from_pretrained(student))
    ended = turns["response_ids"].map(lambda ids: ids[-1] in stops)
    assert (turns["truncated"] == ~ended).all() and turns["truncated"].any()
    cut = turns[turns["truncated"]]
    assert (cut["response_ids"].map(len) == 3).all()
    assert (cut["action"] == "").all() and not cut["format_ok"].any() and not cut["admissible"].any()
    assert (cut["feedback"] == "Nothing happens.").all()
    assert (notes["teacher_logprobs"].map(len) == turns["response_ids"].map(len)).all()
    cut_notes = notes[turns["truncated"].to_numpy()]
    assert all("truncated" in flags for flags in cut_notes["rule_flags"]) and (cut_notes["label"] == "strong").all()


def test_expert_turns_under_the_likelihood_judge(make_config):
    """No rule fires on expert turns, so every label comes from the teacher's ranking."""
    config = make_config("rollout.policy=expert", "rollout.num_games=2", "env.max_steps=20")
    turns_dir = run_rollout(config, 1).directory
    run_annotate(config, 1)
    _, notes = joined(config, turns_dir)
    assert set(notes["label_source"]) == {"judge"}
    assert set(notes["label"]) <= {"skip", "weak", "strong"}


def test_chunked_and_unchunked_annotation_agree(rolled_out, make_config):
    config, turns_dir = rolled_out
    run_annotate(config, 1)
    small = make_config(
        "rollout.num_games=4", "env.max_steps=3", "annotate.max_tokens_per_batch=64", "annotate.out=small"
    )
    run_annotate(small, 1)
    _, big = joined(config, turns_dir)
    _, tiny = joined(config, turns_dir, "small")
    for column in ("teacher_logprobs", "confidence"):
        for a, b in zip(big[column], tiny[column], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert big["label"].tolist() == tiny["label"].tolist()


def test_a_second_judge_writes_beside_the_first_without_touching_turns(rolled_out, make_config):
    config, turns_dir = rolled_out
    run_annotate(config, 1)
    before = {p.name: p.stat().st_mtime_ns for p in turns_dir.iterdir()}
    rules = make_config("rollout.num_games=4", "env.max_steps=3", "annotate.judge=rules", "annotate.out=by-rules")
    assert run_annotate(rules, 1).complete
    assert {p.name: p.stat().st_mtime_ns for p in turns_dir.iterdir()} == before
    turns, notes = joined(rules, turns_dir, "by-rules")
    expected = ["strong" if rule_flags(t) else "weak" for _, t in turns.iterrows()]
    assert notes["label"].tolist() == expected and set(notes["label_source"]) == {"rule"}
    assert (turns_dir.parent / "annotations" / MANIFEST_NAME).is_file()


def test_a_crash_mid_stage_resumes_with_the_missing_part_only(rolled_out, monkeypatch):
    config, turns_dir = rolled_out
    real = annotate_module.Annotator.annotate
    calls = []

    def crash_on_second_part(self, rows, on_batch=None):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(self, rows, on_batch)

    monkeypatch.setattr(annotate_module.Annotator, "annotate", crash_on_second_part)
    with pytest.raises(RuntimeError, match="killed"):
        run_annotate(config, 1)
    monkeypatch.setattr(annotate_module.Annotator, "annotate", real)
    out = turns_dir.parent / "annotations"
    assert [p.name for p in out.glob("part-*.parquet")] == ["part-00000.parquet"]
    resumed = run_annotate(config, 1)
    assert (resumed.parts_written, resumed.parts_skipped, resumed.complete) == (1, 1, True)
    _, notes = joined(config, turns_dir)
    assert not notes.duplicated(["episode_id", "turn"]).any() and len(notes) == 12


def test_missing_corrupt_or_foreign_version_turns_are_refused(make_config, rolled_out):
    config, turns_dir = rolled_out
    with pytest.raises(UserError, match="run `sage-opd rollout` first"):
        run_annotate(make_config("run=nothing-here"), 1)
    part = turns_dir / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(UserError, match="corrupt shard"):
        run_annotate(config, 1)
    manifest = json.loads((turns_dir / MANIFEST_NAME).read_text())
    manifest["schema_version"] = 99
    (turns_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="schema"):
        run_annotate(config, 1)
    assert not (turns_dir.parent / "annotations").exists()


def test_a_teacher_with_another_tokenizer_is_refused_before_anything_is_written(rolled_out, make_config, tmp_path):
    config, turns_dir = rolled_out
    other = train_tokenizer(["a completely different corpus of words"] * 50, vocab_size=300)
    foreign = tmp_path / "foreign-teacher"
    save_model(build_tiny_model(other, TEACHER_SPEC, seed=0), other, foreign)
    with pytest.raises(UserError) as info:
        run_annotate(make_config("rollout.num_games=4", "env.max_steps=3", f"models.teacher={foreign}"), 1)
    message = str(info.value)
    assert message.startswith(f"teacher {foreign} and student ") and "do not share a tokenizer" in message
    assert "vocabularies differ" in message
    assert not (turns_dir.parent / "annotations").exists()


def test_annotate_command_ends_with_a_summary_line(rolled_out, tiny_models, tmp_path):
    config, _ = rolled_out
    args = [
        "annotate",
        f"--set=runs_dir={config.runs_dir}",
        f"--set=models.teacher={tiny_models['teacher']}",
        "--judge",
        "rules",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (line,) = [text for text in result.stdout.splitlines() if text.startswith("annotate:")]
    turns = read_stage(config.runs_dir + "/default/round-001/turns", "turns").to_pandas()
    strong = sum(bool(rule_flags(t)) for _, t in turns.iterrows())
    assert line.startswith(f"annotate: 12 turns annotated (skip 0 / weak {12 - strong} / strong {strong}; by rule 12)")
    assert line.endswith("[complete]")


def padded_copy(model_dir, folder, extra_rows: int = 64):
    """The checkpoint with its output head padded past its tokenizer, as Qwen pads its larger models."""
    model = load_causal_lm(model_dir, torch.device("cpu"), torch.float32)
    rows = model.get_output_embeddings().out_features
    model.resize_token_embeddings(rows + extra_rows, mean_resizing=False)
    with torch.no_grad():  # padded rows that matter: softmax over the whole head would give them real mass
        model.get_output_embeddings().weight[rows:] = model.get_output_embeddings().weight[:extra_rows] * 2
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return rows, model


def test_a_padded_teacher_head_is_cut_to_the_students_ids_before_the_softmax(rolled_out, make_config, tmp_path):
    config, turns_dir = rolled_out
    rows, teacher = padded_copy(config.models.teacher, tmp_path / "padded-teacher")
    padded = make_config("rollout.num_games=4", "env.max_steps=3", f"models.teacher={tmp_path / 'padded-teacher'}")
    result = run_annotate(padded, 1)
    manifest = json.loads((result.directory / MANIFEST_NAME).read_text())
    assert manifest["config"]["teacher_vocab"] == {"head_rows": rows + 64, "scored_ids": rows}
    assert manifest["config"]["backend"] == "hf"
    turns, notes = joined(padded, turns_dir)
    for (_, turn), (_, note) in zip(turns.iterrows(), notes.iterrows(), strict=True):
        prompt, response = list(turn["prompt_ids"]), list(turn["response_ids"])
        with torch.no_grad():
            logits = teacher(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1].float()
        cut, whole = torch.log_softmax(logits[:, :rows], -1), torch.log_softmax(logits, -1)
        picked = torch.arange(len(response)), response
        np.testing.assert_allclose(note["teacher_logprobs"], cut[picked].numpy(), atol=1e-5)
        assert not np.allclose(note["teacher_logprobs"], whole[picked].numpy(), atol=1e-3)  # the cut mattered
        assert np.stack(note["topk_ids"]).max() < rows
        np.testing.assert_allclose(np.stack(note["topk_logprobs"]), cut.topk(20, -1).values.numpy(), atol=1e-5)


def test_a_student_head_larger_than_the_teachers_is_refused_naming_the_heads(make_config, tmp_path):
    config = make_config()
    rows, _ = padded_copy(config.models.student, tmp_path / "padded-student")
    with pytest.raises(UserError) as info:
        annotate_module.scored_ids(
            annotate_module.head_rows(str(tmp_path / "padded-student")),
            annotate_module.head_rows(config.models.teacher),
            "student-dir",
            "teacher-dir",
        )
    message = str(info.value)
    assert message.startswith("output heads differ (the tokenizers are the same): teacher teacher-dir has ")
    assert f"fewer than student student-dir's {rows + 64}" in message


@pytest.mark.parametrize("think", [False, True])
def test_a_qwen3_style_template_keeps_prompts_responses_and_annotations_aligned(
    make_config, tiny_models, tmp_path, think
):
    """The tiny models with a thinking switch in their template (pipeline.tiny_models.THINKING_CHAT_TEMPLATE):
    with env.think off every prompt ends in the closed empty block, on it leaves the block to the model; the
    prompt ids are the rendered text's and every annotation column has one entry per response token."""
    import shutil

    from pipeline.tiny_models import THINKING_CHAT_TEMPLATE

    for name in ("student", "teacher"):
        shutil.copytree(tiny_models[name], tmp_path / name)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / name)
        tokenizer.chat_template = THINKING_CHAT_TEMPLATE
        tokenizer.save_pretrained(tmp_path / name)
    config = make_config(
        "rollout.num_games=2",
        "env.max_steps=3",
        f"env.think={str(think).lower()}",
        f"models.student={tmp_path / 'student'}",
        f"models.teacher={tmp_path / 'teacher'}",
    )
    turns_dir = run_rollout(config, 1).directory
    assert run_annotate(config, 1).complete
    turns, notes = joined(config, turns_dir)
    assert notes[["episode_id", "turn"]].values.tolist() == turns[["episode_id", "turn"]].values.tolist()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "student")
    for (_, turn), (_, note) in zip(turns.iterrows(), notes.iterrows(), strict=True):
        assert turn["prompt_text"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") is not think
        assert tokenizer(turn["prompt_text"], add_special_tokens=False)["input_ids"] == list(turn["prompt_ids"])
        for column in ("teacher_logprobs", "topk_ids", "topk_logprobs", "confidence"):
            assert len(note[column]) == len(turn["response_ids"]) == len(turn["sampler_logprobs"]), column
