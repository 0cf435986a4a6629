"""`sage-opd report` across seeds: the statistics on hand-computed values, and the tables of groups of runs.

Runs are written with the stages' own writers (manifests with their config, training records with their
settings), like tests/test_report.py. Groups: `opd` (4 seeds, the baseline), `sage` (3 seeds), `sft`
(one seed) and `mixed` (3 seeds whose evals differ: another data source, other games). Every success
rate below is a count of won episodes out of 4 (or 2), so each mean, interval and difference is checked
against arithmetic done by hand.
"""

import math
from pathlib import Path

import pandas as pd
import pytest
from test_report import PNG_MAGIC, STUDENT, eval_rows, invoke, write_annotations, write_eval, write_training
from test_schema import turn_row

from pipeline.report import write_report
from pipeline.report.groups import group_runs
from pipeline.report.loading import RunData
from pipeline.report.seed_tables import rate_text
from pipeline.report.stats import difference_interval, mean_interval, relative_improvement, t_quantile
from pipeline.runs import RunLayout, eval_dir_name
from pipeline.shards import StageWriter

T2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # t(0.975, 2) in closed form: the CDF with 2 df is 1/2 + t / (2√(2 + t²))
T3 = 3.182446305284263  # t(0.975, 3), from the tables
SPLITS = ["valid_seen", "valid_unseen"]
TRAINED = {"opd": {"loss": "rkl"}, "sage": {"loss": "rkl", "turn_selection": True}, "sft": {"loss": "sft"}}


def play_config(run: str, round_: int, seed: int, policy: str, source: str, model: str) -> dict:
    """The shape of `play._work_config` (the keys the report reads, plus some it must ignore)."""
    return {
        "run": run,
        "round": round_,
        "seed": seed,
        "data": {"source": source, "path": f"/data/{run}"},
        "play": {"policy": policy, "splits": SPLITS, "games": "fixed", "temperature": 0.4},
        "sampling": {"temperature": 0.4, "max_new_tokens": 64},
        "policy": {"label": policy, "model": model},
    }


def write_seed(
    root: Path,
    name: str,
    seed: int,
    train: dict,
    rounds: dict[int, dict[str, str]],
    *,
    eval_source: str = "mini",
    sampler_probs: list[float] | None = None,
) -> RunLayout:
    """A run of one seed: round 1's rollout manifest (with `sampler_probs`, its turns too: one per annotated
    turn of `write_annotations`), a training record and a student eval per round."""
    layout = RunLayout(root / name)
    config = play_config(name, 1, seed, "student", "mini", STUDENT)  # round 1 rolls out the initial student
    writer = StageWriter(layout.stage_dir(1, "turns"), "turns", config=config, inputs={}, models={}, num_parts=1)
    if sampler_probs is not None:
        writer.write_part(0, [rollout_turn(name, i, p) for i, p in enumerate(sampler_probs)])
        assert writer.finalize()
    for round_, wins in rounds.items():
        write_training(layout.stage_dir(round_, "checkpoint"), [1.0], 6, {"train": train, "seed": seed})
        write_policy_eval(layout, round_, "student", wins, seed, eval_source)
    return layout


def rollout_turn(run: str, index: int, probability: float) -> dict:
    """Turn `index` of `write_annotations`' episodes, its one-token response drawn at `probability`."""
    return {
        **turn_row(0, 0),
        "run": run,
        "round": 1,
        "episode_id": f"train/game-{index // 3}#0",
        "turn": index % 3,
        "response_ids": [7],
        "sampler_logprobs": [math.log(probability)],
    }


def write_policy_eval(layout: RunLayout, round_: int, policy: str, wins: dict[str, str], seed: int, source="mini"):
    folder = eval_dir_name(STUDENT if policy == STUDENT else policy)
    rows = [row for split, won in wins.items() for row in eval_rows(layout.root.name, round_, policy, split, won)]
    model = f"runs/{layout.root.name}/round-{round_:03d}/checkpoint" if policy == "student" else policy
    config = play_config(layout.root.name, round_, seed, policy, source, model)
    write_eval(layout.stage_dir(round_, folder), rows, config=config)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seeds")
    # valid_unseen per seed: opd round 1 [.25]*4, round 2 [.25, .25, .5, .5]; sage round 1 [.25, .5, .75],
    # round 2 [.5, .25, .75]. valid_seen: opd round 2 at 0% in every seed, sage round 2 at 50%.
    opd = {0: ("1000", "1000"), 1: ("1000", "1000"), 2: ("1000", "1100"), 3: ("1000", "1100")}
    for seed, (first, second) in opd.items():
        rounds = {1: {"valid_seen": "1000", "valid_unseen": first}, 2: {"valid_seen": "0000", "valid_unseen": second}}
        # round 1's labels: strong in 3 of 6 turns for even seeds, in none for odd ones; the rollout drew the
        # even seeds' skip turn at 1/2, weak ones at 1/4 and 3/4, strong ones at 1/8; every odd-seed turn at 3/4
        labels = ["skip", "weak", "strong", "strong", "strong", "weak"] if seed % 2 == 0 else ["skip"] * 6
        drawn = [0.5, 0.25, 0.125, 0.125, 0.125, 0.75] if seed % 2 == 0 else [0.75] * 6
        # seed 3 logged to a tracker and saved its state as it went: the same method, so the same group
        kept = {"report_to": ["tensorboard"], "save_steps": 5, "logging_steps": 10} if seed == 3 else {}
        layout = write_seed(root, f"opd-s{seed}", seed, {**TRAINED["opd"], **kept}, rounds, sampler_probs=drawn)
        initial = {"valid_seen": "0000", "valid_unseen": "1000" if seed % 2 == 0 else "0000"}
        write_policy_eval(layout, 1, STUDENT, initial, seed)
        write_policy_eval(layout, 2, "teacher", {"valid_unseen": "1110" if seed == 2 else "1111"}, seed)
        # the floors: random wins 1 of 4 in seed 1 only (mean 1/16), last never
        write_policy_eval(layout, 2, "floor:random", {"valid_unseen": "1000" if seed == 1 else "0000"}, seed)
        write_policy_eval(layout, 2, "floor:last", {"valid_unseen": "0000"}, seed)
        write_annotations(layout.stage_dir(1, "annotations"), layout.root.name, 1, labels)
    sage = {0: ("1000", "1100"), 1: ("1100", "1000"), 2: ("1110", "1110")}
    for seed, (first, second) in sage.items():
        rounds = {1: {"valid_seen": "1100", "valid_unseen": first}, 2: {"valid_seen": "1100", "valid_unseen": second}}
        write_seed(root, f"sage-s{seed}", seed, TRAINED["sage"], rounds)
    write_seed(root, "sft-s0", 0, TRAINED["sft"], {1: {"valid_seen": "0000", "valid_unseen": "0100"}})
    # mixed: seed 1 evaluated on the real data's source, seed 2 on 2 games only; seed 0 like opd
    mixed = {0: ("mini", "1000"), 1: ("alfworld", "1100"), 2: ("mini", "10")}
    for seed, (source, wins) in mixed.items():
        write_seed(root, f"mixed-s{seed}", seed, {"loss": "topk_fkl"}, {1: {"valid_unseen": wins}}, eval_source=source)
    return root


NAMES = [f"opd-s{s}" for s in range(4)] + [f"sage-s{s}" for s in range(3)] + ["sft-s0"]
NAMES += [f"mixed-s{s}" for s in range(3)]


@pytest.fixture(scope="module")
def report(runs_dir, tmp_path_factory):
    return write_report(runs_dir, NAMES, tmp_path_factory.mktemp("report"), baseline="opd")


def table(report, title: str) -> pd.DataFrame:
    return next(t.frame for t in report.tables if t.title.startswith(title))


# ------------------------------------------------------------------------------------------ the statistics


def test_t_quantile_matches_closed_forms_and_tables():
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-12)  # Cauchy: tan(π(p − ½))
    assert t_quantile(0.975, 2) == pytest.approx(T2, rel=1e-12)
    assert t_quantile(0.975, 3) == pytest.approx(T3, rel=1e-10)
    assert t_quantile(0.975, 30) == pytest.approx(2.042272456301238, rel=1e-10)
    assert t_quantile(0.025, 3) == -t_quantile(0.975, 3)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_mean_and_t_interval_over_three_seeds():
    estimate = mean_interval([0.5, 0.25, 0.75])  # mean 0.5, sd √((0 + 0.0625 + 0.0625) / 2) = 0.25
    assert estimate.mean == 0.5 and estimate.df == 2
    assert estimate.half == pytest.approx(T2 * 0.25 / math.sqrt(3), rel=1e-12)
    assert estimate.half == pytest.approx(0.6210344, abs=1e-7)
    assert rate_text([0.5, 0.25, 0.75]) == "50.0% ± 62.1 (3 seeds)"


def test_one_seed_has_no_interval_and_says_so():
    estimate = mean_interval([0.3])
    assert estimate.mean == 0.3 and math.isnan(estimate.half) and not estimate.has_interval
    assert rate_text([0.3]) == "30.0% (n=1 seed: no interval)"
    assert rate_text([0.3], 24) == "30.0% (n=1 seed × 24 ep: no interval)"
    assert not difference_interval([0.3], [0.1, 0.2]).has_interval


def test_welch_difference_by_hand():
    # A = [.5, .25, .75]: var 1/16, var/n = 1/48; B = [.25, .25, .5, .5]: var 1/48, var/n = 1/192.
    # se² = 5/192; df = (5/192)² / ((1/48)²/2 + (1/192)²/3) = 3 exactly.
    difference = difference_interval([0.5, 0.25, 0.75], [0.25, 0.25, 0.5, 0.5])
    assert difference.mean == 0.125
    assert difference.df == pytest.approx(3, rel=1e-12)
    assert difference.half == pytest.approx(T3 * math.sqrt(5 / 192), rel=1e-10)
    # A baseline without spread leaves A's own t-interval: df = n_A − 1 = 2
    one_sided = difference_interval([0.25, 0.5, 0.75], [0.25] * 4)
    assert one_sided.df == pytest.approx(2) and one_sided.half == pytest.approx(T2 * 0.25 / math.sqrt(3))
    assert difference_interval([0.5, 0.5], [0.25, 0.25]).half == 0.0  # every seed agrees: a zero-width interval


def test_relative_improvement_by_hand():
    assert relative_improvement(0.5, 0.375) == pytest.approx(1 / 3)
    assert math.isnan(relative_improvement(0.5, 0.0))  # undefined, not a division by zero


# ---------------------------------------------------------------------------------------------- groups


def bare_run(name: str, seed: int, settings: dict) -> RunData:
    empty = pd.DataFrame()
    return RunData(name, seed, settings, [1], {}, empty, empty, empty, {})


def test_runs_equal_but_for_seed_are_one_group_named_by_the_sweep_stem(report):
    found = {group.name: (group.runs, group.seeds) for group in report.groups}
    assert found == {
        "opd": (tuple(NAMES[:4]), (0, 1, 2, 3)),
        "sage": (tuple(NAMES[4:7]), (0, 1, 2)),
        "sft": (("sft-s0",), (0,)),
        "mixed": (tuple(NAMES[8:]), (0, 1, 2)),
    }


def test_group_names_fall_back_to_a_run_name_where_they_would_clash():
    a, b = {"train": {"loss": "rkl"}}, {"train": {"loss": "sft"}}
    runs = [bare_run("opd", 0, b), bare_run("opd-s0", 0, a), bare_run("opd-s1", 1, a), bare_run("sage-x", 0, a)]
    runs += [bare_run("lone", 0, {}), bare_run("other", 1, {})]  # no settings recorded: a group each
    groups = group_runs(runs)
    assert [(g.name, g.runs) for g in groups] == [
        ("opd", ("opd",)),
        ("opd-s0", ("opd-s0", "opd-s1", "sage-x")),  # stem "opd" is taken by the run opd; no common prefix
        ("lone", ("lone",)),
        ("other", ("other",)),
    ]
    assert [g.name for g in group_runs([bare_run("sage-a", 0, a), bare_run("sage-b", 1, a)])] == ["sage"]


# ---------------------------------------------------------------------------------------------- tables


def test_success_table_mean_and_interval_per_group_split_and_round(report):
    frame = table(report, "Success per round, mean over seeds")
    unseen = frame[("sage", "mini · valid_unseen", "n=4 episodes per seed")]
    assert unseen["round 1"] == unseen["round 2"] == "50.0% ± 62.1 (3 seeds)"
    opd = frame[("opd", "mini · valid_unseen", "n=4 episodes per seed")]
    assert opd["initial student"] == f"12.5% ± {T3 * math.sqrt(1 / 48) / 2 * 100:.1f} (4 seeds)"  # [.25, 0, .25, 0]
    assert opd["round 1"] == "25.0% ± 0.0 (4 seeds)"
    assert opd["round 2"] == f"37.5% ± {T3 * math.sqrt(1 / 48) / 2 * 100:.1f} (4 seeds)" == "37.5% ± 23.0 (4 seeds)"
    assert opd["teacher"] == "93.8% ± 19.9 (4 seeds)"  # [1, 1, .75, 1]: sd 0.125, 3.182 × 0.125 / 2
    assert opd["expert"] == "not evaluated"
    sft = frame[("sft", "mini · valid_unseen", "n=4 episodes per seed")]
    assert sft["round 1"] == "25.0% (n=1 seed: no interval)" and sft["round 2"] == "—"
    assert not any("overall" in part for column in frame.columns for part in column)  # splits are never pooled


def test_different_sources_and_game_sets_never_share_a_column(report):
    frame = table(report, "Success per round, mean over seeds")
    mixed = [column for column in frame.columns if column[0] == "mixed"]
    labels = sorted((label.split(" · eval set")[0], n) for _, label, n in mixed)
    assert labels == [
        ("alfworld · valid_unseen", "n=4 episodes per seed"),
        ("mini · valid_unseen", "n=2 episodes per seed"),
        ("mini · valid_unseen", "n=4 episodes per seed"),
    ]
    assert sorted(frame[column]["round 1"] for column in mixed) == [
        "25.0% (n=1 seed: no interval)",
        "50.0% (n=1 seed: no interval)",
        "50.0% (n=1 seed: no interval)",
    ]
    assert any(note.startswith("mixed mini · valid_unseen was evaluated on 2 eval sets") for note in report.notes)


def test_difference_to_the_baseline_group_with_welch_interval_and_relative_improvement(report):
    frame = table(report, "Difference to opd")
    assert list(frame.columns) == [
        "A: mean",
        "B: opd mean",
        "A − B (95% CI, Welch t over seeds)",
        "relative (A − B) / B",
    ]
    final = frame.loc[("sage", "mini · valid_unseen", "round 2")].tolist()
    assert final == [
        "50.0% ± 62.1 (3 seeds × 4 ep)",
        "37.5% ± 23.0 (4 seeds × 4 ep)",
        f"+12.5 pts ± {T3 * math.sqrt(5 / 192) * 100:.1f}",
        "+33.3%",
    ]
    assert final[2] == "+12.5 pts ± 51.4"
    first = frame.loc[("sage", "mini · valid_unseen", "round 1")].tolist()  # the baseline has no spread: df 2
    assert first[2:] == [f"+25.0 pts ± {T2 * 0.25 / math.sqrt(3) * 100:.1f}", "+100.0%"]
    assert frame.loc[("sage", "mini · valid_seen", "round 2"), "relative (A − B) / B"] == "— (undefined: opd at 0%)"
    sft = frame.loc[("sft", "mini · valid_unseen", "round 1")].tolist()
    assert sft[2:] == ["+0.0 pts (no interval: 1 seed)", "+0.0%"]
    mixed = frame.loc["mixed"]["B: opd mean"].tolist()
    assert sorted(mixed) == [
        "25.0% ± 0.0 (4 seeds × 4 ep)",  # seed 0 played opd's games: compared
        "— (opd has no round 1 here)",  # alfworld: opd never played there
        "— (opd played other episodes or eval settings here)",  # the 2-game set
    ]


def test_task_types_action_rates_and_labels_across_seeds(report):
    types = table(report, "Success per task type, mean over seeds")
    # pick_and_place_simple = games a, b; sage round 2 wins 1100, 1000, 1110 -> [1, .5, 1]: sd √(1/12), se 1/6
    cell = types.loc[("sage", "mini · valid_unseen", "round 2"), "pick_and_place_simple"]
    assert cell == f"83.3% ± {T2 / 6 * 100:.1f} (3 seeds × 2 ep)" == "83.3% ± 71.7 (3 seeds × 2 ep)"
    assert types.loc[("sage", "mini · valid_unseen", "round 2"), "pick_heat_then_place_in_recep"] == "—"
    actions = table(report, "Invalid and repeated actions, mean over seeds")
    # every 4-game eval: 22 turns, invalid 0+1+0+1, repeated 0+0+1+1, whatever was won: no spread across seeds
    row = actions.loc[("opd", "mini · valid_unseen", "round 2")].tolist()
    assert row == ["9.1% ± 0.0 (4 seeds × 4 ep)", "9.1% ± 0.0 (4 seeds × 4 ep)"]
    labels = table(report, "Teacher labels per round, mean over seeds")
    # shares alternating a, b, a, b over 4 seeds: sd² = 4 (d/2)² / 3 for d = b − a, so se = d / (2√3)
    opd = labels.loc[("opd", "round 1")]
    assert opd["strong"] == f"25.0% ± {T3 * 0.5 / (2 * math.sqrt(3)) * 100:.1f} (4 seeds)" == "25.0% ± 45.9 (4 seeds)"
    assert opd["skip"] == f"58.3% ± {T3 * (5 / 6) / (2 * math.sqrt(3)) * 100:.1f} (4 seeds)"  # [1/6, 1, 1/6, 1]
    assert labels.loc[("opd", "round 1"), "turns per seed"] == "6"
    assert ("sage", "round 1") not in labels.index
    probs = table(report, "Response probabilities per label, mean over seeds").loc[("opd", "round 1")]
    # teacher: the product of write_annotations' token confidences, the same in every seed that has the label
    assert probs["skip teacher_prob"] == "25.0% ± 0.0 (4 seeds)"  # 1/2 · 1/2
    assert probs["weak teacher_prob"] == "18.8% ± 0.0 (2 seeds)"  # 1/4 · 3/4; odd seeds have no weak turn
    assert probs["strong teacher_prob"] == "6.2% ± 0.0 (2 seeds)"  # 1/4 · 1/4
    # sampler: skip [1/2, 3/4, 1/2, 3/4] alternates, d = 1/4; weak (1/4 + 3/4) / 2 in both even seeds
    assert probs["skip sampler_prob"] == f"62.5% ± {T3 * 0.25 / (2 * math.sqrt(3)) * 100:.1f} (4 seeds)"
    assert probs["weak sampler_prob"] == "50.0% ± 0.0 (2 seeds)"
    assert probs["strong sampler_prob"] == "12.5% ± 0.0 (2 seeds)"


def test_gain_over_the_initial_student_is_paired_by_seed(report):
    gains = table(report, "Gain over the initial student, mean over seeds")
    column = "round − initial student (95% CI, paired t over seeds)"
    # opd valid_unseen, initial [1/4, 0, 1/4, 0]: round 1 [1/4]*4 gains [0, 1/4, 0, 1/4], alternating, d = 1/4
    assert (
        gains.loc[("opd", "mini · valid_unseen", "round 1"), column]
        == f"+12.5 pts ± {T3 * 25 / (2 * math.sqrt(3)):.1f}"
    )
    # round 2 [1/4, 1/4, 1/2, 1/2] gains [0, 1/4, 1/4, 1/2]: mean 1/4, sd √((1/16 + 0 + 0 + 1/16) / 3)
    assert (
        gains.loc[("opd", "mini · valid_unseen", "round 2"), column]
        == f"+25.0 pts ± {T3 * math.sqrt(1 / 24) / 2 * 100:.1f}"
    )
    assert gains.loc[("opd", "mini · valid_unseen", "round 2"), "seeds"] == "4 × 4 ep"
    assert gains.loc[("opd", "mini · valid_seen", "round 2"), column] == "+0.0 pts ± 0.0"  # 0% before and after
    assert "sage" not in gains.index.get_level_values("group")  # no initial student evaluated: nothing to pair with


def test_share_of_the_floor_to_teacher_gap_closed(report):
    """opd valid_unseen: best floor floor:random at 1/16, teacher at 15/16; round 2 per seed [1/4, 1/4, 1/2, 1/2]."""
    gaps = table(report, "Share of the floor-to-teacher gap closed")
    row = gaps.loc[("opd", "mini · valid_unseen", "round 2")]
    assert row["best floor"] == "floor:random 6.2%" and row["teacher"] == "93.8%"
    shares = [(value - 1 / 16) / (14 / 16) for value in (0.25, 0.25, 0.5, 0.5)]
    mean = sum(shares) / 4
    half = T3 * math.sqrt(sum((x - mean) ** 2 for x in shares) / 3) / 2
    assert row["share of the gap closed (95% CI, t over seeds)"] == f"{mean:.2f} ± {half:.2f}" == "0.36 ± 0.26"
    # the initial student [1/4, 0, 1/4, 0]: seeds at 0 sit below the floor, negative shares
    assert gaps.loc[("opd", "mini · valid_unseen", "initial student")].iloc[2] == "0.07 ± 0.26"
    assert "sage" not in gaps.index.get_level_values("group")  # no floor evaluated there: no gap to measure
    success = table(report, "Success per round, mean over seeds")
    opd = success[("opd", "mini · valid_unseen", "n=4 episodes per seed")]
    assert opd["floor:random"] == "6.2% ± 19.9 (4 seeds)" and opd["floor:last"] == "0.0% ± 0.0 (4 seeds)"
    assert "floor:first" not in success.index  # a floor no run evaluated gets no row


def test_headline_figures_and_page_of_a_seeded_report(report):
    assert [t.title for t in report.headline] == [
        "Success per round, mean over seeds (95% CI, t over seeds)",
        "Gain over the initial student, mean over seeds",
        "Share of the floor-to-teacher gap closed, mean over seeds",
        "Difference to opd, mean over seeds",
    ]
    figures = {figure.path.name: figure for figure in report.figures}
    for name in ("success_by_round_seeds.png", "action_rates_by_round_seeds.png"):
        assert figures[name].path.read_bytes()[:8] == PNG_MAGIC
    page = report.page.read_text()
    assert "## Difference to opd, mean over seeds" in page and "n=1 seed: no interval" in page
    assert "Groups (runs equal in every setting but run name and seed): opd = opd-s0, opd-s1" in page
    assert "## Student success per round" in page  # the per-run tables follow


def test_cli_takes_a_group_name_as_baseline(runs_dir, tmp_path):
    runs = ["--run", "opd-s0", "--run", "opd-s1", "--run", "sft-s0"]
    result = invoke(runs_dir, *runs, "--baseline", "opd", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "Difference to opd" in result.stdout
    assert "; groups opd 2 seeds, sft 1 seed; " in result.stdout.strip().splitlines()[-1]
    wrong = invoke(runs_dir, *runs, "--baseline", "sage", "--out", str(tmp_path / "w"))
    assert wrong.exit_code == 2 and "--baseline sage: no such run in" in wrong.stderr
    assert "nor a group of the runs reported (groups: opd, sft)" in wrong.stderr


def test_a_one_run_group_as_baseline_compares_runs_without_aggregating(runs_dir, tmp_path):
    report = write_report(runs_dir, ["sft-s0", "sage-s0"], tmp_path / "r", baseline="sft")
    assert [t.title for t in report.headline] == ["Student success per round", "Improvement over sft-s0"]
    assert not any(figure.path.name.endswith("_seeds.png") for figure in report.figures)
