"""`sage-opd view` on a real rollout with chosen annotations: the payload, the file, and the page in Chromium."""

import json
import math
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from test_inspect import annotation, write_annotations
from typer.testing import CliRunner

from pipeline.backends.hf import load_tokenizer
from pipeline.config import load_config
from pipeline.play import run_rollout
from pipeline.shards import read_stage
from pipeline.view.data import load_view_round, view_payload
from pipeline.view.page import render_page
from stages.cli import app

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Without the background-networking flags Chromium waits for the network, which this machine does not have.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def viewed(tmp_path_factory, tiny_models, small_settings):
    """One real rollout (module-wide: the viewer only reads), annotated by hand, and its page written once."""
    root = tmp_path_factory.mktemp("view")
    config = load_config(REPO / "configs" / "default.yaml", [f"runs_dir={root / 'runs'}", *small_settings])
    turns_dir = run_rollout(config, 1).directory
    turns = read_stage(turns_dir, "turns").to_pandas().sort_values(["episode_id", "turn"], ignore_index=True)
    notes = [annotation(row, index) for index, row in enumerate(turns.to_dict("records"))]
    write_annotations(turns_dir.parent / "annotations", notes)
    result = CliRunner().invoke(
        app, ["view", f"--set=runs_dir={root / 'runs'}", *(f"--set={s}" for s in small_settings)]
    )
    assert result.exit_code == 0, result.output
    return root, turns, notes, result


def test_payload_keeps_the_top_k_in_per_mille_and_decodes_every_id_once(viewed, tiny_models):
    root, turns, notes, _ = viewed
    round_dir = root / "runs" / "default" / "round-001"
    frame = load_view_round(round_dir / "turns", round_dir / "annotations")
    tokenizer = load_tokenizer(tiny_models["student"])
    payload = view_payload("default", {1: frame}, tokenizer, topk=1)
    assert sum(len(ep["turns"]) for ep in payload["episodes"]) == len(turns)
    first = payload["episodes"][0]["turns"][0]
    note = notes[0]
    assert first["l"] == note["label"] and first["s"] == note["label_source"]
    assert first["x"] == list(turns["response_ids"][0])
    assert first["c"] == [round(c * 1000) for c in note["confidence"]]
    # topk=1 keeps the best alternative only: [id, per mille], here the sampled token at its confidence
    assert first["k"] == [
        [int(i[0]), round(math.exp(p[0]) * 1000)] for i, p in zip(note["topk_ids"], note["topk_logprobs"], strict=True)
    ]
    assert payload["vocab"][str(first["x"][0])] == tokenizer.decode([first["x"][0]])


def test_the_page_is_one_file_that_needs_no_network(viewed):
    root, turns, _, result = viewed
    path = root / "runs" / "default" / "round-001" / "view.html"
    page = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must load nothing from elsewhere"
    episodes = turns["episode_id"].nunique()
    assert result.stdout == (
        f"view: run default round 1: {episodes} episodes, {len(turns)} turns -> {path} "
        f"({path.stat().st_size / 1e6:.1f} MB)\n"
    )


def test_a_trajectory_cannot_close_the_data_block():
    page = render_page({"run": "</script><b>x", "rounds": [], "topk": 1, "episodes": [], "vocab": {}, "note": ""})
    data = page.split('<script type="application/json" id="data">')[1].split("</script>")[0]
    assert json.loads(data.replace("<\\/", "</"))["run"] == "</script><b>x"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the viewer's browser test: install Debian's chromium (.ci/run does)")
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver); CI runs this test")
    return found


def browse(browser: str, profile: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_chromium_renders_the_turns_labels_and_a_tokens_top_k(viewed, tmp_path, tiny_models):
    """The page from disk in a real browser: one episode's timeline, and the tooltip a click pins on a token."""
    browser = chromium()
    root, turns, notes, _ = viewed
    path = root / "runs" / "default" / "round-001" / "view.html"
    episode = turns["episode_id"].iloc[0]
    mine = turns.index[turns["episode_id"] == episode]
    token = 1 if len(turns["response_ids"][mine[0]]) > 1 else 0
    fragment = urllib.parse.urlencode({"episode": f"1|{episode}", "token": f"{turns['turn'][mine[0]]}:{token}"})
    url = f"{path.as_uri()}#{fragment}"
    done = browse(browser, tmp_path / "profile", url, "--dump-dom")
    assert done.returncode == 0, done.stderr
    dom = done.stdout
    shown = re.findall(r'<li class="turn" data-label="(\w+)" data-turn="(\d+)"', dom)
    assert [label for label, _ in shown] == [notes[i]["label"] for i in mine]
    assert [int(turn) for _, turn in shown] == turns["turn"][mine].tolist()
    assert f"{len(turns)} turns match" in dom and 'data-render-ms="' in dom

    tooltip = re.search(r'<div id="tooltip"[^>]*>(.*?)</div>\s*<script', dom, re.S).group(1)
    assert 'hidden=""' not in re.search(r'<div id="tooltip"[^>]*>', dom).group(0)
    tokenizer = load_tokenizer(tiny_models["student"])
    note = notes[mine[0]]
    expected = [
        (json.dumps(tokenizer.decode([int(i)]), ensure_ascii=False), f"{round(math.exp(p) * 1000) / 10:.1f}%")
        for i, p in zip(note["topk_ids"][token], note["topk_logprobs"][token], strict=True)
    ]
    cells = re.findall(r'<td>\d+</td><td>(.*?)</td><td class="p">(.*?)</td>', tooltip)
    unescape = {"&quot;": '"', "&lt;": "<", "&gt;": ">", "&amp;": "&"}
    assert [(re.sub("|".join(unescape), lambda m: unescape[m.group(0)], t), p) for t, p in cells] == expected
    assert f"teacher confidence {round(note['confidence'][token] * 1000) / 10:.1f}%" in tooltip

    shot = tmp_path / "view.png"
    done = browse(browser, tmp_path / "profile-shot", url, f"--screenshot={shot}", "--window-size=1280,800")
    assert done.returncode == 0, done.stderr
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 20_000


def test_serve_answers_the_page_on_localhost_and_stops_on_ctrl_c(viewed, small_settings):
    import signal
    import sys
    import urllib.error
    import urllib.request

    root, _, _, _ = viewed
    args = [
        "view",
        "--serve",
        "--port",
        "0",
        f"--set=runs_dir={root / 'runs'}",
        *(f"--set={s}" for s in small_settings),
    ]
    server = subprocess.Popen(
        [sys.executable, "-m", "stages", *args], cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = ""
        while "serving" not in line:
            line = server.stderr.readline()
            assert line or server.poll() is None, "the server ended before it listened"
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        page = root / "runs" / "default" / "round-001" / "view.html"
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.read() == page.read_bytes()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url + "turns.parquet", timeout=30)  # the page only, never the run's files
    finally:
        server.send_signal(signal.SIGINT)
        _, rest = server.communicate(timeout=60)
    assert server.returncode == 0 and "Traceback" not in rest  # Ctrl-C is how a served page ends, not a failure
