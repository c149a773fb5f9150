"""The `medsora` command line as users type it: help, one-line errors, the same answers as `run query`, a demo
that resumes after it is killed and leaves the repository as it was."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import BUNDLE_ROOT, INFERENCE, REPO_ROOT, run_bundle

MEDSORA = [sys.executable, "-c", "from medsora.cli import entry_point; entry_point()"]
VERBS = {
    "query": ["--text", "--queries_file", "--output_file", "--image", "--label", "--label_convention", "--ckpt_dir"],
    "demo": ["--run_dir", "--quick", "--install"],
    "train": ["--dataset_dir", "--label_convention", "--run_dir", "--install"],
    "evaluate": ["--ckpt_dir", "--dataset_dir", "--run_dir", "--tables"],
    "serve": ["STUDIES", "--address", "--port", "--label_convention"],
}


def medsora(*args, cwd=REPO_ROOT, timeout=900):
    return subprocess.run([*MEDSORA, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_help_names_every_verb():
    result = medsora("--help")
    assert result.returncode == 0, result.stderr
    for verb in VERBS:
        assert verb in result.stdout
    assert "Showing help" not in result.stdout + result.stderr


@pytest.mark.parametrize("verb", list(VERBS))
def test_help_of_every_verb_lists_its_options_with_defaults_and_meaning(verb):
    result = medsora(verb, "--help")
    assert result.returncode == 0, result.stderr
    assert f"medsora {verb}" in result.stdout
    for flag in VERBS[verb] + ["--bundle_root"]:
        assert f"{flag}=" in result.stdout or f"    {flag}\n" in result.stdout, flag
    assert result.stdout.count("Default:") >= len(VERBS[verb])
    if verb == "query":
        assert "Default: 'btcv'" in result.stdout and "totalsegmentator" in result.stdout
        assert "liver 6" in result.stdout  # what the label ids of --label are


def one_line_error(result, *words):
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("medsora") and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_misspelt_option_is_one_line_naming_the_closest():
    one_line_error(medsora("query", "fever", "--imgae", "ct.nii.gz"), "--imgae", "did you mean --image?")


def test_an_unknown_command_is_one_line_naming_the_closest():
    one_line_error(medsora("quer", "fever"), "'quer'", "did you mean query?")


def test_a_missing_file_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no_ct.nii.gz"
    one_line_error(medsora("query", "fever", "--image", missing, "--label", missing), str(missing))


def test_debug_shows_the_traceback(tmp_path):
    result = medsora("query", "fever", "--image", tmp_path / "x.nii.gz", "--label", tmp_path / "x.nii.gz", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_a_label_convention_is_a_name_not_an_expression():
    one_line_error(medsora("query", "fever", "--label_convention", "$1+1"), "--label_convention")


@pytest.mark.slow
def test_query_gives_the_answers_of_the_bundle_run(tmp_path):
    queries = tmp_path / "q.jsonl"
    texts = ["painless jaundice and weight loss", "$1+1", "@ckpt_dir", "[1, 2]", "True", "sprained ankle"]
    queries.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    ours, theirs = tmp_path / "medsora.jsonl", tmp_path / "bundle.jsonl"
    result = medsora("query", "--queries_file", queries, "--output_file", ours)
    assert result.returncode == 0, result.stderr
    run_bundle("run", "query", "--config_file", INFERENCE, "--queries_file", queries, "--output_file", theirs)
    assert ours.read_text() == theirs.read_text()
    printed = medsora("query", texts[0])
    answer = json.loads(ours.read_text().splitlines()[0])
    assert printed.returncode == 0 and f"1. {answer['ranking'][0]}" in printed.stdout
    literal = medsora("query", "$__import__('os').system('touch PWNED') or 'x'", cwd=tmp_path)
    assert literal.returncode == 0 and not (tmp_path / "PWNED").exists()
    assert "symptoms: $__import__" in literal.stdout


def digest(directory):
    return {n: hashlib.sha256(open(os.path.join(directory, n), "rb").read()).hexdigest() for n in os.listdir(directory)}


@pytest.mark.slow
def test_the_demo_resumes_after_it_is_killed_and_leaves_the_repository_as_it_was(tmp_path):
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    shipped = digest(os.path.join(BUNDLE_ROOT, "models"))
    run_dir = tmp_path / "demo"
    process = subprocess.Popen(
        [*MEDSORA, "demo", "--quick", "--run_dir", str(run_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    seen = []
    deadline = time.monotonic() + 600
    for line in process.stdout:  # kill it while it trains the image network
        seen.append(line)
        if line.startswith("[2/4] train the image network") or time.monotonic() > deadline:
            time.sleep(3)
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, seen
    assert (run_dir / ".stages" / "data.json").is_file() and not (run_dir / ".stages" / "image.json").exists()

    result = medsora("demo", "--quick", "--run_dir", run_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "[1/4] generate the phantom CTs: up to date, skipped" in lines
    assert any(line.startswith("[2/4] train the image network (usually about") for line in lines)
    assert any(line.startswith("[3/4] done in") and "organ accuracy" in line for line in lines)
    assert any(line.startswith("[4/4] done in") and "test Rank-1" in line for line in lines)
    assert any(line.strip().startswith("1. ") for line in lines)  # the example query's ranking
    for name in ("model.pt", "alignment.pt"):
        assert (run_dir / "models" / name).is_file()

    again = medsora("demo", "--quick", "--run_dir", run_dir)
    assert again.returncode == 0 and again.stdout.count("up to date, skipped") == 4
    assert digest(os.path.join(BUNDLE_ROOT, "models")) == shipped
    after = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    assert after == status
