"""Every writer survives kill -9: `vector orthogonalize --overwrite` (export_orthogonalized), report folders and
sweep folders, each started in a subprocess over a complete old output and killed with SIGKILL at seeded random
moments. After each kill the output is the complete old one or the complete new one (same file names, same
sha256 per file), never partial or missing, and the next write removes the temporaries the killed ones left.

Each writer runs in a driver process (this file's DRIVER, run with sys.executable) that imports and loads
everything first, says "ready", and writes when told "go"; a first driver writes to the end, which gives the
complete new output and how long a write takes; after "go", half the kills fall uniformly in [0, 1.2 x that time],
half in [0.8, 1.05 x that time], where the folder is filled and swapped.
The report writer runs a second time with renameat2 switched off, so the two-rename fallback is killed too
(there a kill between its renames leaves only the backup, which `files.recover` puts back: counted apart).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from steerlab.files import recover, temporaries

pytestmark = pytest.mark.fuzz

RUNS = 8  # kills per writer (the issue asks for at least 5)
SRC = Path(__file__).resolve().parents[1] / "src"

DRIVER = """
import sys, time
from pathlib import Path

kind, target, two_renames = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
if two_renames:
    from steerlab import files

    import os

    files._renameat2 = lambda src, dst, flags: False
    rename = os.rename

    def slow_rename(src, dst):  # widen the window between the two renames, so that kills land in it too
        rename(src, dst)
        if str(dst).endswith(".backup" + files.TEMP_SUFFIX):
            time.sleep(0.05)

    os.rename = slow_rename
if kind == "orthogonalize":
    from steerlab.ablation import export_orthogonalized
    from steerlab.models import load_model
    from steerlab.vector import SteeringVector

    lm, vector = load_model(sys.argv[4]), SteeringVector.load(sys.argv[5])
    write = lambda: export_orthogonalized(lm, vector, target, overwrite=True)
else:
    import pickle

    payload = pickle.loads(Path(sys.argv[4]).read_bytes())
    if kind == "report":
        from steerlab.evaluation.report import write_report

        write = lambda: write_report(target, payload, overwrite=True)
    else:
        from steerlab.evaluation.sweep import save_sweep

        write = lambda: save_sweep(target, *payload, overwrite=True)
print("ready", flush=True)
sys.stdin.readline()
write()
print("done", flush=True)
sys.stdin.readline()
"""


def tree(folder: Path) -> dict[str, str] | None:
    """sha256 of every file under `folder` by relative path; None where there is no folder."""
    if not folder.is_dir():
        return None
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def start(script: Path, args: list[str], log: Path) -> subprocess.Popen:
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(script.parent)}
    with log.open("w") as err:  # progress bars and, should a driver fail, its traceback
        return subprocess.Popen(
            [sys.executable, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )


def reset(target: Path, old: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    shutil.copytree(old, target)


def kill_runs(tmp_path: Path, kind: str, old: Path, args: list[str], seed: int, two_renames: bool = False):
    """RUNS kills of `kind`'s writer over a copy of the complete output `old`; returns the outcomes, the
    temporaries left before the next write, and the count of backups `recover` put back."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    target = tmp_path / f"{kind}-out"
    logs = [tmp_path / f"driver-{i}.log" for i in range(RUNS + 2)]
    drivers = [start(script, [kind, str(target), "1" if two_renames else "0", *args], log) for log in logs]
    try:
        for d, log in zip(drivers, logs, strict=True):
            assert d.stdout.readline().strip() == "ready", log.read_text()
        first, *killed, last = drivers
        reset(target, old)
        went = time.perf_counter()
        first.stdin.write("go\n")
        first.stdin.flush()
        assert first.stdout.readline().startswith("done")
        took = time.perf_counter() - went  # as this process sees it: from "go" to the complete output
        new = tree(target)
        assert new is not None and new != tree(old) and temporaries(target) == []
        rng = random.Random(seed)
        outcomes: Counter[str] = Counter()
        recovered = strays = kills_leaving = 0
        for i, d in enumerate(killed):
            reset(target, old)
            d.stdin.write("go\n")
            d.stdin.flush()
            # Half the kills anywhere in the write, half in its last fifth, where the folder is filled and swapped.
            time.sleep(rng.uniform(0, 1.2 * took) if i % 2 else rng.uniform(0.8 * took, 1.05 * took))
            d.send_signal(signal.SIGKILL)
            d.wait(30)
            if two_renames and recover(target) is not None:
                recovered += 1
            left = len(temporaries(target))
            strays += left
            kills_leaving += left > 0
            got = tree(target)
            outcomes["old" if got == tree(old) else "new" if got == new else "partial or missing"] += 1
        last.stdin.write("go\n")  # the next write, to the end
        last.stdin.flush()
        assert last.stdout.readline().startswith("done")
        assert tree(target) == new and temporaries(target) == []
    finally:
        for d in drivers:
            d.kill()
            d.wait()
    print(
        f"\n{kind}{' (two renames)' if two_renames else ''}: {dict(outcomes)}; {kills_leaving} kills left "
        f"temporaries ({strays} seen in all), none after the next write; {recovered} backups put back; a full "
        f"write took {took * 1000:.0f} ms"
    )
    return outcomes, kills_leaving


def check(outcomes: Counter[str]) -> None:
    assert sum(outcomes.values()) == RUNS and set(outcomes) <= {"old", "new"}, dict(outcomes)


def test_orthogonalize_overwrite_survives_kill_9(tmp_path, model_dir):
    from steerlab.ablation import export_orthogonalized
    from steerlab.models import load_model
    from steerlab.vector import SteeringVector, VectorMeta

    lm = load_model(model_dir)
    paths = []
    for seed in (1, 2):
        direction = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(seed))
        paths.append(
            SteeringVector({1: direction}, VectorMeta.for_model(lm, "caa")).save(tmp_path / f"v{seed}.safetensors")
        )
    old = export_orthogonalized(lm, SteeringVector.load(paths[0]), tmp_path / "old")
    outcomes, _ = kill_runs(tmp_path, "orthogonalize", old, [str(model_dir), str(paths[1])], seed=20)
    check(outcomes)


def tiny_report():
    from steerlab.evaluation.report import Report, generate_arms, multiplier_arms, score_run
    from steerlab.generation import GenerationConfig
    from steerlab.steering import SpecSteering, SteeringSpec
    from steerlab.vector import SteeringVector, VectorMeta
    from tiny_model import tiny_lm

    lm = tiny_lm()
    vector = SteeringVector(
        {1: torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(1))}, VectorMeta.for_model(lm, "caa")
    )
    arms = multiplier_arms(SpecSteering(SteeringSpec(vector, 1.0, [1])), [-2.0, 2.0])
    run = generate_arms(lm, ["Hi", "Tell me a story"], arms, config=GenerationConfig(max_new_tokens=6))
    many = 2_000  # rows, so that writing takes long enough for kills to land inside it (about 1 MB)
    run = dataclasses.replace(
        run,
        prompts=run.prompts * many,
        original=run.original * many,
        conditions=[dataclasses.replace(c, texts=c.texts * many) for c in run.conditions],
    )
    return Report(settings("caa vector at layer 1"), score_run(lm, run, "sentiment"), run)


def settings(steer: str) -> dict:
    return {
        "task": {"name": "mini", "metric": "sentiment", "direction": 1.0, "split": "test"},
        "model": {"name": "tiny"},
        "steer": {"description": steer},
        "generation": {"max_new_tokens": 6, "do_sample": False},
    }


@pytest.mark.parametrize("two_renames", [False, True], ids=["renameat2", "two-renames"])
def test_report_writer_survives_kill_9(tmp_path, two_renames):
    from steerlab.evaluation.report import write_report

    report = tiny_report()
    old = write_report(tmp_path / "old", dataclasses.replace(report, settings=settings("the old steer")))
    payload = tmp_path / "report.pickle"
    payload.write_bytes(pickle.dumps(report))
    outcomes, _ = kill_runs(tmp_path, "report", old, [str(payload)], seed=21, two_renames=two_renames)
    check(outcomes)


def test_sweep_writer_survives_kill_9(tmp_path):
    from steerlab.evaluation.sweep import SweepConfig, save_sweep, sweep
    from steerlab.evaluation.tasks import get_task
    from tiny_model import tiny_lm

    def item(i, q):
        a, b = ("yes", "no") if i % 2 else ("no", "yes")
        return {
            "question": f"{q}?\n(A) {a}\n(B) {b}",
            "answer_matching_behavior": "(A)" if i % 2 else "(B)",
            "answer_not_matching_behavior": "(B)" if i % 2 else "(A)",
        }

    questions = ["Is it so", "Do you agree", "Should we go", "Is this fine"]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(item(i, q)) for i, q in enumerate(questions)))
    (tmp_path / "test.json").write_text(json.dumps([item(i, f"Test {q}") for i, q in enumerate(questions)]))
    (tmp_path / "task.yaml").write_text("name: tiny-ab\nkind: ab\ntrain: train.jsonl\ntest: test.json\n")
    config = SweepConfig(layers=[1, 2], strengths=[0.5, 1.0], fluency_bound=0.5)
    result, vector = sweep(tiny_lm(), get_task(str(tmp_path / "task.yaml")), config)
    old = save_sweep(tmp_path / "old", dataclasses.replace(result, note="the old sweep"), vector)
    payload = tmp_path / "sweep.pickle"
    payload.write_bytes(pickle.dumps((result, vector)))
    outcomes, _ = kill_runs(tmp_path, "sweep", old, [str(payload)], seed=22)
    check(outcomes)
