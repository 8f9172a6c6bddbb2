"""The command line as a user meets it: `python -m tv_utils ...` in a subprocess, offline, writing into a
temporary results folder. Bad input ends in one line on stderr and a non-zero exit, before any weights load
and with nothing written; Ctrl-C ends in one line and 130; good runs write their tables whole."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tv_utils.analyses.departures import DEPARTURES
from tv_utils.tasks import TASK_NAMES

pytestmark = pytest.mark.cli  # each test starts `python -m tv_utils`: ~2 s of imports

ROOT = Path(__file__).resolve().parent.parent
VALID_TASKS = f"valid tasks: {', '.join(TASK_NAMES)}"
COLOURS = [("banana", "yellow"), ("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
           ("blood", "red"), ("carrot", "orange"), ("lemon", "yellow"), ("sea", "blue"), ("leaf", "green"),
           ("milk", "white"), ("night", "black"), ("cherry", "red"), ("pumpkin", "orange"), ("violet", "purple")]


# The same colours as objects, as Todd et al.'s task files are, some accepting several answers (the first is the one
# that demonstrations show).
OTHER_NAMES = {"sky": ["azure"], "grass": ["emerald", "lime"], "snow": ["ivory"], "coal": ["ebony", "jet"],
               "blood": ["crimson", "scarlet"], "violet": ["lilac", "mauve"]}
SEVERAL = [{"input": x, "output": [y, *OTHER_NAMES[x]] if x in OTHER_NAMES else y} for x, y in COLOURS]


REPRODUCE_FILES = ["_episodes.csv.gz", "_layer_stability.csv", "_per_layer.csv", "_results.csv", "_results.json"]


def cli_env(results: Path) -> dict:
    """Offline, this checkout's tv_utils, results into `results`."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TV_UTILS_RESULTS": str(results), "PYTHONPATH": str(ROOT)}


def run_cli(workdir: Path, *args, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m tv_utils *args` run in `workdir` with results into workdir/results: (process, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tv_utils", *args], cwd=workdir, env=cli_env(workdir / "results"),
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - start


def files_in(folder: Path) -> list[str]:
    """Every file under `folder`, hidden ones (an atomic write's temporary files) included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_refused(proc, seconds: float, status: int, message: str, workdir: Path, inputs=()) -> None:
    """One line on stderr holding `message`, exit `status`, no traceback, fast, and nothing written."""
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no "loaded <model>" line: no weights read
    assert message in proc.stderr, proc.stderr
    assert seconds < 15, seconds
    assert files_in(workdir) == sorted(inputs)


@pytest.mark.parametrize("args, status, message", [
    (["geometry", "--layer", "999"], 2, "--layer 999 is out of range for gemma3-270m: valid layers are 0..17"),
    (["vocab", "--layer", "999"], 2, "--layer 999 is out of range for gemma3-270m: valid layers are 0..17"),
    (["reproduce", "--dtype", "float33"], 2, "invalid choice: 'float33' "
                                             "(choose from 'float32', 'bfloat16', 'float16')"),
    (["bench", "--compare-dtypes", "float33"], 2, "(choose from 'float32', 'bfloat16', 'float16')"),
    (["bench", "--before", "/no/such/checkout"], 2, "argument --before: '/no/such/checkout' holds no tv_utils package"),
    (["conflict", "--pairs", "en_fr"], 2, "argument --pairs: expected A:B with two task names, e.g. en_es:en_fr"),
    (["conflict", "--pairs", "en_fr:en_xx"], 2, f"unknown task(s) en_xx in pair en_fr:en_xx; {VALID_TASKS}"),
    (["reproduce", "--n-dev", "0"], 2, "argument --n-dev: must be at least 1, got 0"),
    (["vocab", "--n", "-3"], 2, "argument --n: must be at least 1, got -3"),
    (["function-vectors", "--n-effect", "0"], 2, "argument --n-effect: must be at least 1, got 0"),
    (["reproduce", "--k", "30"], 2, "has 25 usable pairs; an episode needs 33 (30 demonstrations + 2 dummy "
                                    "queries + 1 query); add pairs or lower --k"),
    (["reproduce", "--tasks", "en_fr", "en_xx"], 2, f"unknown task(s) en_xx; {VALID_TASKS}"),
    (["function-vectors", "--tasks", "en_xx"], 2, f"unknown task(s) en_xx; {VALID_TASKS}"),
    (["geometry", "--tasks", "en_fr"], 2, "geometry compares tasks: give at least 2"),
    (["reproduce", "--model", "no/such-model"], 2, "cannot load model 'no/such-model': not an embedded model "
                                                   "(gemma3-270m, smollm2-135m, qwen2.5-coder-0.5b, "
                                                   "qwen2.5-coder-1.5b)"),
    (["depth", "--models", "gemma3-270m", "no/such-model"], 2, "cannot load model 'no/such-model'"),
    (["reproduce", "--remote"], 2, "--remote needs --model with a model id that NDIF hosts"),
    (["reproduce", "--device", "cpu", "--device-map", "auto"], 2, "argument --device-map: not allowed with argument "
                                                                  "--device"),
    (["reproduce", "--device", "gpu"], 2, "unknown device 'gpu'; valid devices: cpu, cuda, cuda:N, mps"),
    pytest.param(["reproduce", "--device", "cuda"], 2, "device 'cuda' is not available here; available: cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (["course", "--solutions", "key", "--kernel", "no-such-kernel"], 2, "argument --kernel: no Jupyter kernel named "
                                                                        "'no-such-kernel' (installed: "),
    (["install-model", "llama-9000"], 1, "error: unknown embedded model 'llama-9000'; embedded models: gemma3-270m"),
])
def test_bad_input_is_refused_in_one_line_before_loading(tmp_path, args, status, message):
    proc, seconds = run_cli(tmp_path, *args)
    assert_refused(proc, seconds, status, message, tmp_path)
    if status == 2:
        assert proc.stderr.startswith(f"python -m tv_utils {args[0]}: error: ")


@pytest.mark.parametrize("name, content, message", [
    ("colours.csv", "banana,yellow\nsky,blue\n", "must start with the header line `input,output`, got 'banana,yellow'"),
    ("colours.csv", "input,output\nbanana,yellow,fruit\n", "line 2 has 3 fields, expected 2 (input,output)"),
    ("colours.csv", "input,output\nbanana,yellow\nbanana,green\n", "repeated inputs"),
    ("colours.csv", 'input,output\n"two\nlines",x\nsky,blue\n', "spans several lines"),
    ("colours.csv", "input,output\nx->y,z\nsky,blue\n", "contains '->', which separates input from output"),
    ("colours.csv", "input,output\nbanana,yellow\nsky,\n", "empty"),
    ("colours.json", '[["banana", "yellow"], ["sky", null]]', "inputs and outputs must be strings, got None"),
    ("colours.json", '[["banana", "yellow"], ["sky", NaN]]', "inputs and outputs must be strings, got nan"),
    ("colours.json", '["banana", "yellow"]', "each pair must be an (input, output) pair of strings, got 'banana'"),
    ("colours.json", '"banana"', "must hold a JSON list of [input, output] pairs or an object"),
    ("colours.json", '[["banana", "yellow"', "is not valid JSON"),
    ("colours.txt", "banana -> yellow\n", "unknown format '.txt'; valid formats: .csv"),
    ("colours.json", json.dumps(COLOURS[:4]), "has 4 usable pairs; an episode needs 8"),
    ("en_fr.json", json.dumps(COLOURS), "the task file is named like the paper's task 'en_fr'; rename the file"),
    ("colours.json", "[]", "task file 'colours.json' holds an empty JSON list; a task needs at least 2"),
    ("colours.json", json.dumps([{"input": "sky"}, *SEVERAL]), "item 1 has no 'output' key (its keys: 'input')"),
    ("colours.json", json.dumps([*SEVERAL, {"input": "sun", "output": 1}]), "item 16: output must be a string or a "
                                                                            "non-empty list of strings"),
    ("colours.json", json.dumps([*SEVERAL, {"input": "sun", "output": ["yellow", None]}]),
     'item 16: output must be a string or a non-empty list of strings (accepted answers), got ["yellow", null]'),
])
def test_bad_task_file_is_refused_in_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    proc, seconds = run_cli(tmp_path, "reproduce", "--task-file", name)
    assert_refused(proc, seconds, 2, message, tmp_path, inputs=[name])


@pytest.mark.parametrize("command", ["vocab", "function-vectors", "beyond"])
def test_commands_scoring_one_answer_refuse_tasks_with_several(tmp_path, command):
    (tmp_path / "colours.json").write_text(json.dumps(SEVERAL))
    proc, seconds = run_cli(tmp_path, command, "--task-file", "colours.json")
    assert_refused(proc, seconds, 2, f"{command} scores one answer per input, and task(s) colours accept several "
                                     f"for some inputs; reproduce, depth, geometry take such tasks", tmp_path,
                   inputs=["colours.json"])


def test_bad_task_dir_is_refused_in_one_line(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "notes.txt").write_text("no task here")
    proc, seconds = run_cli(tmp_path, "reproduce", "--task-dir", "tasks")
    assert_refused(proc, seconds, 2, "argument --task-dir: task directory 'tasks' holds no task files (.json or .csv)",
                   tmp_path, inputs=["tasks/notes.txt"])
    (tmp_path / "tasks" / "en_fr.json").write_text(json.dumps(SEVERAL))
    proc, seconds = run_cli(tmp_path, "geometry", "--task-dir", "tasks")
    assert_refused(proc, seconds, 2, "the task file en_fr.json in --task-dir is named like the paper's task 'en_fr'",
                   tmp_path, inputs=["tasks/en_fr.json", "tasks/notes.txt"])


def test_missing_task_file_is_refused(tmp_path):
    proc, seconds = run_cli(tmp_path, "vocab", "--task-file", "absent.csv")
    assert_refused(proc, seconds, 2, "cannot read task file 'absent.csv': No such file or directory", tmp_path)


@pytest.mark.model
def test_ctrl_c_exits_130_in_one_line_and_writes_nothing(tmp_path):
    # The child gets the default SIGINT disposition, as in a terminal, whatever launched the suite: a suite started
    # from a background job inherits SIGINT ignored, and the run would then finish with status 0.
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen([sys.executable, "-m", "tv_utils", "reproduce", "--tasks", "en_fr", "antonyms"],
                            cwd=tmp_path, env=cli_env(tmp_path / "results"), stderr=subprocess.PIPE, text=True,
                            preexec_fn=restore)
    try:
        seen = [proc.stderr.readline()]
        while not seen[-1].startswith("loaded ") and seen[-1]:  # the model is in memory: the run is under way
            seen.append(proc.stderr.readline())
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    assert stderr.endswith("\ninterrupted\n") and "Traceback" not in stderr, stderr
    assert files_in(tmp_path) == []


def test_custom_task_file_runs_end_to_end(tmp_path, tiny_llama_folder):
    pd.DataFrame(COLOURS, columns=["input", "output"]).to_csv(tmp_path / "colours.csv", index=False)
    proc, _ = run_cli(tmp_path, "reproduce", "--task-file", "colours.csv", "--model", str(tiny_llama_folder),
                      "--n-dev", "3", "--n-test", "4", "--no-figures")
    assert proc.returncode == 0, proc.stderr
    stem = "reproduce_" + str(tiny_llama_folder).replace("/", "_")
    assert files_in(tmp_path / "results") == [f"{stem}{s}" for s in REPRODUCE_FILES]  # whole, no temporary ones
    results = pd.read_csv(tmp_path / "results" / f"{stem}_results.csv")
    assert results[["task", "category", "n_pairs"]].values.tolist() == [["colours", "custom", len(COLOURS)]]
    per_layer = pd.read_csv(tmp_path / "results" / f"{stem}_per_layer.csv")
    assert per_layer.layer.tolist() == [0, 1, 2, 3] and set(per_layer.task) == {"colours"}
    assert "colours" in proc.stdout


@pytest.mark.parametrize("where", ["--task-file", "--task-dir"])
def test_task_of_objects_with_several_answers_runs_end_to_end(tmp_path, tiny_llama_folder, where):
    """Todd et al.'s shape: a list of {"input", "output"} objects, outputs that accept several answers."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "colours.json").write_text(json.dumps(SEVERAL))
    shout = [{"input": c, "output": c.upper()} for c in "abcdefghij"]
    (tmp_path / "tasks" / "shout.json").write_text(json.dumps(shout))
    source = ["--task-file", "tasks/colours.json"] if where == "--task-file" else ["--task-dir", "tasks"]
    proc, _ = run_cli(tmp_path, "reproduce", *source, "--model", str(tiny_llama_folder), "--n-dev", "3",
                      "--n-test", "4", "--no-figures")
    assert proc.returncode == 0, proc.stderr
    stem = "reproduce_" + str(tiny_llama_folder).replace("/", "_")
    assert files_in(tmp_path / "results") == [f"{stem}{s}" for s in REPRODUCE_FILES]
    results = pd.read_csv(tmp_path / "results" / f"{stem}_results.csv")
    expected = [["colours", "custom", len(COLOURS)]] + ([["shout", "custom", 10]] if where == "--task-dir" else [])
    assert results[["task", "category", "n_pairs"]].values.tolist() == expected
    episodes = pd.read_csv(tmp_path / "results" / f"{stem}_episodes.csv.gz")
    assert len(episodes[(episodes.task == "colours") & (episodes.split == "test")]) == 3 * 4  # 3 methods


@pytest.mark.parametrize("command", ["reproduce", "function-vectors"])
def test_bench_reads_the_childs_run_record(tiny_llama_folder, command):
    """bench times `reproduce` and `function-vectors` from the JSON record the child writes (--run-record), not
    from its printed text, and digests the files it wrote."""
    from tv_utils.bench import bench_reproduce

    row, results = bench_reproduce(str(tiny_llama_folder), ["next_letter"], command=command)
    assert row["tasks"] == 1 and row["command"] == command and len(row["tables_sha256"]) == 12
    assert 0 < row["seconds_excluding_load"] < row["wall_with_load"] and 0.1 < row["peak_rss_gb"] < 20
    assert (results.task.tolist() == ["next_letter"]) if command == "reproduce" else results is None


@pytest.mark.parametrize("args, outputs", [
    (["reproduce", "--tasks", "next_letter", "--n-dev", "3", "--n-test", "3", "--remote", "local"], REPRODUCE_FILES),
    (["function-vectors", "--tasks", "next_letter", "to_upper", "--n-dev", "3", "--n-test", "3", "--n-effect", "1",
      "--k", "2"], [".csv", "_by_k.csv", "_episodes.csv", "_head_effects.csv", "_heads.json", "_per_layer.csv",
                    "_several_vectors.csv"]),
    (["vocab", "--tasks", "next_letter", "--n", "3", "--layer", "2"], ["_answer_rank.csv", "_top_tokens.csv"]),
])
def test_subcommands_added_on_main_run_on_a_local_model(tmp_path, tiny_llama_folder, args, outputs):
    proc, _ = run_cli(tmp_path, *args, "--model", str(tiny_llama_folder), "--no-figures")
    assert proc.returncode == 0, proc.stderr
    stem = args[0].replace("-", "_") + "_" + str(tiny_llama_folder).replace("/", "_")
    assert files_in(tmp_path / "results") == [stem + suffix for suffix in outputs]
    if args[0] == "function-vectors":
        heads = json.loads((tmp_path / "results" / f"{stem}_heads.json").read_text())
        assert heads["k"] == 2 and len(heads["top_heads"]) == 2


@pytest.mark.model
def test_a_run_in_the_checkout_leaves_the_reference_alone(tmp_path):
    """The README's quick run, as a user types it in the checkout's root (no --out, no $TV_UTILS_RESULTS): results
    go to ./results (ignored by git), the committed reference and what the notebooks load stay as they are, and
    the run ends with its comparison with the reference."""
    from tv_utils import store

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")

    def status() -> str:
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout

    before, loaded = status(), store.precomputed("reproduce_gemma3-270m_results")
    env = {k: v for k, v in cli_env(tmp_path).items() if k != "TV_UTILS_RESULTS"}
    written = [ROOT / "results" / f"reproduce_gemma3-270m{s}" for s in REPRODUCE_FILES]
    kept = {p: tmp_path / p.name for p in written if p.exists()}  # a developer's own results, put back after
    for path, aside in kept.items():
        path.rename(aside)
    try:
        proc = subprocess.run([sys.executable, "-m", "tv_utils", "reproduce", "--tasks", "en_fr", "--n-dev", "5",
                               "--n-test", "5", "--no-figures"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert all(p.exists() for p in written), proc.stdout
        assert status() == before
        assert store.precomputed("reproduce_gemma3-270m_results").equals(loaded)
        assert "results and figures in results/" in proc.stdout
        assert "compared with the committed reference (reproduce_gemma3-270m_results.csv): differs" in proc.stdout
        assert "this run's protocol differs from the reference's: n_dev 5 (reference 50)" in proc.stdout
    finally:
        for path in written:
            path.unlink(missing_ok=True)
        for path, aside in kept.items():
            aside.rename(path)


def test_the_paper_protocol_then_rescore_and_departures_from_the_command_line(tmp_path, tiny_llama_folder):
    """`reproduce` runs the paper protocol by default and stores its predictions; `rescore --scoring paper`
    re-scores them without the model and gives the run's accuracies back when the rule is the run's own;
    `departures` writes its table."""
    model = ["--model", str(tiny_llama_folder)]
    proc, _ = run_cli(tmp_path, "reproduce", "--tasks", "next_letter", "country_capital", "--n-dev", "4",
                      "--n-test", "5", "--no-figures", *model)
    assert proc.returncode == 0, proc.stderr
    stem = tmp_path / "results" / ("reproduce_" + str(tiny_llama_folder).replace("/", "_"))
    report = json.loads(Path(f"{stem}_results.json").read_text())
    assert {report["protocol"][k] for k in ("prompts", "sampling", "scoring")} == {"paper"}
    results = pd.read_csv(f"{stem}_results.csv")
    proc, _ = run_cli(tmp_path, "rescore", f"{stem}_episodes.csv.gz", "--scoring", "paper", "--out", "again.csv")
    assert proc.returncode == 0, proc.stderr
    again = pd.read_csv(tmp_path / "again.csv")
    assert again[["baseline", "icl", "tv"]].values.tolist() == results[["baseline", "icl", "tv"]].values.tolist()
    proc, _ = run_cli(tmp_path, "rescore", f"{stem}_results.csv", "--scoring", "kit")  # not an episode table
    assert proc.returncode == 1 and "column(s)" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc, _ = run_cli(tmp_path, "departures", "--tasks", "next_letter", "--out", "dep", *model, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "dep" / ("departures_" + str(tiny_llama_folder).replace("/", "_") + ".csv"))
    assert set(table.departure) == set(DEPARTURES) and (table.diff_lo <= table.diff_hi).all()
    assert set(table.task) == {"next_letter", "mean"} and set(table.method) == {"baseline", "icl", "tv"}
