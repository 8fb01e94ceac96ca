"""Re-run issue #14's probes (hostile and careless input) and print the table: probe, tried, clear, other.

    .venv/bin/python bench/probe_hardening.py            # about 2-4 minutes on 2 shared cores
    .venv/bin/python bench/probe_hardening.py --cases 300 # cases per fuzzed reader (default 1000)

"clear" means the behaviour the issue asks for (the library's own error naming the file, a JSON error on a
connection that stays open, an intact neighbour, ...); "other" is anything else. Server probes use the tiny
random model from tests/ (the mechanics under test do not depend on the model) on a real uvicorn server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from safetensors.torch import save as safetensors_bytes  # noqa: E402

import test_reader_fuzz as fuzz  # noqa: E402
from server_helpers import serve_in_thread  # noqa: E402
from tiny_model import tiny_model  # noqa: E402

import steerlab  # noqa: E402
from steerlab.config import ConfigError, load_config  # noqa: E402
from steerlab.data import DatasetError, load_pairs  # noqa: E402
from steerlab.generation import GenerationConfig  # noqa: E402
from steerlab.interop.gguf import import_control_vector  # noqa: E402
from steerlab.methods.lm_steer import LMSteer, LMSteerConfig  # noqa: E402
from steerlab.methods.prompt import PromptSteering  # noqa: E402
from steerlab.server.app import create_app  # noqa: E402
from steerlab.server.registry import VectorRegistry  # noqa: E402
from steerlab.vector import TEMP_SUFFIX, SteeringVector, VectorFileError, VectorMeta, write_atomic  # noqa: E402

ROWS: list[tuple[str, int, int, int, str]] = []


def row(probe: str, outcomes: list[bool], note: str = "") -> None:
    clear = sum(outcomes)
    ROWS.append((probe, len(outcomes), clear, len(outcomes) - clear, note))
    print(f"  {probe}: {clear}/{len(outcomes)}", file=sys.stderr, flush=True)


def names_file(exc: Exception, path: str) -> bool:
    return str(exc).startswith(str(path)) and "\n" not in str(exc)


def refused(read, data: bytes, name: str, errors: tuple) -> bool:
    """True when reading `data` raises one of `errors` whose one-line message starts with the file's path."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            read(path)
        except errors as exc:
            return names_file(exc, str(path))
        except Exception:  # noqa: BLE001 - counted as "other"
            return False
        return False


def fuzzed(probe: str, strategy, read, name: str, errors: tuple, cases: int) -> None:
    """Run `cases` generated files through `read`: a valid result or one of `errors` is clear."""
    seen: Counter = Counter()
    kinds: Counter = Counter()

    @settings(max_examples=cases, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(data):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(data)
            try:
                read(path)
                seen["clear"] += 1
            except errors:
                seen["clear"] += 1
            except Exception as exc:  # noqa: BLE001 - counted as "other"
                seen["other"] += 1
                kinds[type(exc).__name__] += 1

    run()
    ROWS.append((probe, seen["clear"] + seen["other"], seen["clear"], seen["other"], ", ".join(kinds) or ""))
    print(f"  {probe}: {seen['clear']}/{seen['clear'] + seen['other']}", file=sys.stderr, flush=True)


def meta(**changes) -> str:
    return json.dumps({**VectorMeta("m", 4, 4, "caa").to_json(), **changes})


def vector_bytes(tensors: dict, header: str) -> bytes:
    return safetensors_bytes(tensors, metadata={"steerlab": header})


def probe_files(cases: int) -> None:
    bad_values = [float("nan"), float("inf"), float("-inf")]
    outcomes = []
    for layer in range(4):
        for value in bad_values:
            for position in (0, 3):
                t = torch.ones(4)
                t[position] = value
                outcomes.append(refused(SteeringVector.load, vector_bytes({f"layer.{layer}": t}, meta()), "v.safetensors",
                                        (VectorFileError,)))
    row("vector with one NaN/Inf value", outcomes)

    wrong = [None, 3, 2.5, True, "x", [], {}]
    outcomes = []
    for field in ("model_name", "hidden_size", "num_layers", "method", "task", "config", "dataset", "recommended",
                  "residual_norms", "created", "format_version", "model_fingerprint", "kind"):
        for value in wrong:
            header = json.loads(meta())
            if isinstance(header[field], type(value)) and not isinstance(value, bool):
                continue
            header[field] = value
            outcomes.append(refused(SteeringVector.load, vector_bytes({"layer.1": torch.ones(4)}, json.dumps(header)),
                                    "v.safetensors", (VectorFileError,)))
    bad = {"multiplier": [True, "x", [], {}, float("inf"), 1e39],  # null is "not set"
           "layer": [True, "x", [], {}, 2.5, 1e39, 9, -1]}
    for key, values in bad.items():
        for value in values:
            header = meta(recommended={key: value}).replace("Infinity", "1e999")
            outcomes.append(refused(SteeringVector.load, vector_bytes({"layer.1": torch.ones(4)}, header),
                                    "v.safetensors", (VectorFileError,)))
    row("vector metadata of the wrong type", outcomes)

    names = [["layer.\u0661\u0665"], ["layer.\uff11"], ["layer.\u0967"], ["layer.015", "layer.15"], ["layer.1", "layer.01"],
             ["layer.-1"], ["layer. 1"], ["layer.1e1"], ["layer.9999999"]]
    outcomes = [refused(SteeringVector.load, vector_bytes({n: torch.ones(4) for n in group}, meta(num_layers=30)),
                        "v.safetensors", (VectorFileError,)) for group in names]
    row("layer names: non-ASCII digits, duplicates", outcomes)

    from gguf_files import write_gguf
    from test_gguf_and_lm_steer_files import GGUF_BAD
    outcomes = []
    for tensors, options, _ in GGUF_BAD:
        with tempfile.TemporaryDirectory() as folder:
            path = write_gguf(Path(folder) / "v.gguf", tensors, **options)
            outcomes.append(refused(import_control_vector, Path(path).read_bytes(), "v.gguf", (VectorFileError,)))
    row("GGUF: non-UTF-8 strings, direction.0, duplicates, NaN", outcomes)

    pair = {"prompt": "p", "positive": "good", "negative": "bad caf\u00e9"}
    text = json.dumps(pair, ensure_ascii=False) + "\n"
    outcomes = [refused(load_pairs, text.encode(enc), "pairs.jsonl", (DatasetError,))
                for enc in ("utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252")]
    with tempfile.TemporaryDirectory() as folder:
        bom = Path(folder) / "bom.jsonl"
        bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
        outcomes.append(len(load_pairs(bom)) == 1)
    row("pair files in UTF-16/UTF-32/Latin-1 (refused, named) and with a BOM (read)", outcomes)

    outcomes = []
    for text in ["lr: 1e-4\nlr: 2e-4\n", "lr: [1, 2\n", "a:\n  - b\n c: d\n", "lr: !!python/object:os.system x\n",
                 "lr: .nan\n", "lr: 1e999\n", "lr: 2024-13-45\n", "\t- x\n", "lr: " + "[" * 5000 + "\n"]:
        outcomes.append(refused(lambda p: load_config(LMSteerConfig, p), text.encode(), "c.yaml", (ConfigError,)))
    outcomes.append(load_config(LMSteerConfig, None, ["lr=1e-4"]).lr == 1e-4)
    outcomes.append(load_config(LMSteerConfig, None, ["lr=3E-5", "epsilon=.5e-3"]).epsilon == 5e-4)
    row("YAML: one-line errors naming file:line, duplicates, --set lr=1e-4 is a number", outcomes)

    readers = [("fuzz: safetensors vectors", fuzz.vector_files(), SteeringVector.load, "v.safetensors", (VectorFileError,)),
               ("fuzz: LM-Steer files", fuzz.lm_steer_files(), LMSteer.load, "s.safetensors", (VectorFileError,)),
               ("fuzz: GGUF control vectors", fuzz.gguf_files(), import_control_vector, "v.gguf", (VectorFileError,)),
               ("fuzz: prompt-steer JSON", fuzz.prompt_files(), PromptSteering.load, "p.json", (VectorFileError,)),
               ("fuzz: pair files", fuzz.pair_files(), load_pairs, "pairs.jsonl", (DatasetError,))]
    for probe, strategy, read, name, errors in readers:
        fuzzed(probe, strategy, read, name, errors, cases)
    _fuzz_checked("fuzz: YAML configs and --set", fuzz.config_inputs(), fuzz.check_config, cases)
    _fuzz_checked("fuzz: task files and the files they name", fuzz.task_folders(), fuzz.check_task, cases)


def _fuzz_checked(probe: str, strategy, check, cases: int) -> None:
    """Run `cases` generated inputs through `check` (which raises only on an unclear outcome)."""
    seen: Counter = Counter()

    @settings(max_examples=cases, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(inputs):
        try:
            check(inputs)
            seen["clear"] += 1
        except Exception:  # noqa: BLE001 - counted as "other"
            seen["other"] += 1

    run()
    ROWS.append((probe, sum(seen.values()), seen["clear"], seen["other"], ""))


def probe_output_files() -> None:
    outcomes = []
    old = os.umask(0o022)
    try:
        with tempfile.TemporaryDirectory() as folder:
            for i in range(5):
                path = SteeringVector({1: torch.ones(4)}, VectorMeta("m", 4, 4, "caa")).save(Path(folder) / f"{i}.st")
                outcomes.append(path.stat().st_mode & 0o777 == 0o644)
    finally:
        os.umask(old)
    row("output file mode under umask 022 is 0644", outcomes)
    outcomes = []
    import signal
    import subprocess
    for _ in range(3):
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "v.safetensors"
            script = ("import os, time\nfrom pathlib import Path\nfrom steerlab.vector import write_atomic\n"
                      "os.fsync = lambda fd: (print('writing', flush=True), time.sleep(600))\n"
                      f"write_atomic(Path({str(target)!r}), b'x' * 1_000_000)\n")
            writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
            writer.stdout.readline()
            writer.send_signal(signal.SIGKILL)
            writer.wait(30)
            write_atomic(target, b"again")
            outcomes.append(sorted(p.name for p in Path(folder).iterdir()) == ["v.safetensors"]
                            and not any(p.name.endswith(TEMP_SUFFIX) for p in Path(folder).iterdir()))
    row("write killed mid-way: nothing left after the next write", outcomes)


def probe_server() -> None:
    logging.getLogger("steerlab").setLevel(logging.ERROR)
    lm = tiny_model("llama")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        SteeringVector({1: torch.ones(lm.hidden_size) * 3}, VectorMeta.for_model(lm, "caa")).save(folder / "up.safetensors")
        (folder / "bad.safetensors").write_bytes(vector_bytes(
            {"layer.1": torch.ones(lm.hidden_size)}, json.dumps({**VectorMeta.for_model(lm, "caa").to_json(),
                                                                  "recommended": {"multiplier": "x"}})))
        registry = VectorRegistry.from_dir(lm, folder)
        started = list(registry.entries) == ["up"]
        nan = SteeringVector({1: torch.full((lm.hidden_size,), float("nan"))}, VectorMeta.for_model(lm, "caa"))
        registry.entries["nan"] = type(registry.entries["up"])("nan", folder / "nan.safetensors", nan, None)
        app = create_app(lm, registry)
        body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "temperature": 0}
        with serve_in_thread(app) as (url, _):
            row("a vector file with wrong-type metadata in --vectors: server still starts", [started])
            host = url.removeprefix("http://")
            outcomes = []
            for _ in range(5):
                conn = http.client.HTTPConnection(host, timeout=30)
                conn.request("POST", "/v1/chat/completions", body=b'{"max_tokens": true}',
                             headers={"content-type": "application/json"})
                first = conn.getresponse()
                shape = "error" in json.loads(first.read())
                sock = conn.sock
                conn.request("GET", "/health")
                second = conn.getresponse()
                second.read()
                outcomes.append(shape and second.status == 200 and conn.sock is sock)
                conn.close()
            row("error then keep-alive request on the same connection", outcomes)

            def latency_during(call) -> float:
                worker = threading.Thread(target=call)
                worker.start()
                time.sleep(0.3)
                t0 = time.monotonic()
                httpx.get(url + "/health", timeout=300)
                took = time.monotonic() - t0
                worker.join(600)
                return took

            result = {}
            texts = ["I am happy and sad. " * 1500] * 64  # 64 texts of 30 KB
            took = latency_during(lambda: result.__setitem__("score", httpx.post(
                url + "/v1/score", json={"metric": "sentiment", "texts": texts}, timeout=600)))
            row("/v1/score with 64 texts of 30 KB: 413, /health answers meanwhile", [result["score"].status_code == 413
                                                                                   and took < 1.0], f"/health {took:.2f} s")
            took = latency_during(lambda: result.__setitem__("big", httpx.post(
                url + "/v1/completions", json={"prompt": "x" * 10_000_000, "max_tokens": 2}, timeout=600)))
            took = latency_during(lambda: result.__setitem__("cap", httpx.post(
                url + "/v1/score", json={"metric": "sentiment", "texts": ["I am happy and sad. " * 500] * 16},
                timeout=600)))
            row("/v1/score with 16 texts of 10 KB (at the cap): scored, /health answers meanwhile",
                [result["cap"].status_code == 200 and took < 1.0], f"/health {took:.2f} s")
            row("10 MB prompt: 413, /health answers meanwhile", [result["big"].status_code == 413 and took < 1.0],
                f"/health {took:.2f} s")
            outcomes = [httpx.get(url + "/health", headers={"host": h}).status_code == 403
                        for h in ("evil.example", "attacker.test:80", "127.0.0.1.nip.io", "")]
            outcomes += [httpx.get(url + "/health", headers={"host": h}).status_code == 200
                         for h in ("localhost", f"127.0.0.1:{url.rsplit(':', 1)[1]}")]
            row("no token, loopback: foreign Host refused, loopback Host served", outcomes)
            strict = [{"max_tokens": True}, {"max_tokens": "3"}, {"n": "2"}, {"temperature": "1"}, {"stream": "true"},
                      {"seed": 1.5}, {"steering": [{"vector": "up", "multiplier": "2"}]},
                      {"steering": [{"vector": "up", "multiplier": 1e39}]}, {"steering": [{"vector": "up", "layers": [1.0]}]}]
            row("strict types (true, \"3\", 1.5 where an integer goes; 1e39 multipliers)",
                [httpx.post(url + "/v1/chat/completions", json={**body, **f}).status_code == 400 for f in strict])
            probe_openai(url, lm.name)
        # Two rows fill a batch, and the long window makes the second request join the first's batch.
        nan_app = create_app(lm, registry, max_batch=2, batch_window_ms=3000)
        with serve_in_thread(nan_app) as (url, _):
            alone = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]
            outcomes = []
            for _ in range(3):
                time.sleep(0.2)  # the batch counter moves just after a reply goes out
                before = nan_app.state.batcher.batches
                got = {}
                threads = [threading.Thread(target=lambda k=k, b=b: got.__setitem__(
                    k, httpx.post(url + "/v1/chat/completions", json=b, timeout=60).json()))
                    for k, b in (("nan", {**body, "steering": [{"vector": "nan"}]}), ("plain", body))]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                time.sleep(0.2)
                outcomes.append(got["plain"]["choices"][0]["message"] == alone
                                and nan_app.state.batcher.batches == before + 1)
            row("plain request batched beside a NaN-vector request comes back intact", outcomes)

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("steerlab.server").addHandler(handler)
    logging.getLogger("steerlab").setLevel(logging.WARNING)
    with serve_in_thread(create_app(lm, VectorRegistry(lm, {}))):
        pass
    row("start-up warning without a token", [any("without a token" in r.getMessage() for r in records)])


def probe_openai(url: str, model: str) -> None:
    import openai

    api = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "hello"}]
    calls = [dict(stop=None), dict(stop="a"), dict(stop=["a", "b"]), dict(frequency_penalty=1.0),
             dict(presence_penalty=0.5), dict(logprobs=True, top_logprobs=2), dict(seed=3, temperature=1.0),
             dict(n=2, temperature=1.0, seed=1), dict(max_completion_tokens=4), dict(user="u"),
             dict(stream=True), dict(stream=True, logprobs=True, stop=["x"])]
    outcomes = []
    for fields in calls:
        try:
            fields = {"max_tokens": 8, "temperature": 0, **fields}
            if "max_completion_tokens" in fields:
                del fields["max_tokens"]
            reply = api.chat.completions.create(model=model, messages=messages, **fields)
            outcomes.append(bool(list(reply)) if fields.get("stream") else bool(reply.choices))
        except Exception:  # noqa: BLE001 - counted as "other"
            outcomes.append(False)
    try:
        legacy = api.completions.create(model=model, prompt="abc", max_tokens=4, logprobs=2, stop=["q"])
        outcomes.append(bool(legacy.choices[0].logprobs.tokens))
    except Exception:  # noqa: BLE001
        outcomes.append(False)
    row("OpenAI client fields (stop, penalties, logprobs, seed, n, max_completion_tokens, user, stream)", outcomes)
    extra = {"steering": [{"vector": "up", "multiplier": 2}], "include_original": True}
    outcomes = []
    for stream in (False, True):
        reply = api.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=1.0, seed=2, n=2,
                                            stream=stream, extra_body=extra)
        indexes = sorted({c.index for chunk in reply for c in chunk.choices}) if stream else [c.index for c in reply.choices]
        outcomes.append(indexes == [0, 1, 2, 3])
    row("include_original: steered and original as their own choice indexes (plain, streamed)", outcomes)


def probe_threads() -> None:
    lm = tiny_model("llama")
    vector = SteeringVector({1: torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(3)) * 6},
                            VectorMeta.for_model(lm, "caa"))
    config = GenerationConfig(max_new_tokens=10)
    plain = steerlab.generate(lm, ["hello there"], config=config)[0].steered
    outcomes = []
    for _ in range(3):
        results: dict[str, list[str]] = {"plain": []}
        barrier = threading.Barrier(2)

        def plain_run():
            barrier.wait()
            for _ in range(4):
                results["plain"].append(steerlab.generate(lm, ["hello there"], config=config)[0].steered)

        def steered_run():
            barrier.wait()
            for _ in range(4):
                steerlab.generate(lm, ["hello there"], steerlab.SteeringSpec(vector, multiplier=4.0), config=config)

        threads = [threading.Thread(target=plain_run), threading.Thread(target=steered_run)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        outcomes.append(results["plain"] == [plain] * 4)
    row("two threads, one model: the unsteered thread stays unsteered", outcomes)
    outcomes = []
    for bad in (1e39, -1e39, float("nan"), float("inf")):
        try:
            steerlab.steer(lm, vector, multiplier=bad).remove()
            outcomes.append(False)
        except ValueError:
            outcomes.append(True)
    row("multipliers outside float32's finite range refused", outcomes)
    from steerlab.strength import StrengthError, multiplier_for
    vector.meta.residual_norms = {"1": 5.0}
    outcomes = []
    for bad in (1e39, float("nan"), float("inf")):
        try:
            multiplier_for(vector, 1, bad)
            outcomes.append(False)
        except StrengthError:
            outcomes.append(True)
    row("strengths outside float32's finite range refused", outcomes, "strength.py: the lead's part, not on main yet")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="generated cases per fuzzed reader (default 1000)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    started = time.monotonic()
    probe_files(args.cases)
    probe_output_files()
    probe_server()
    probe_threads()
    print("| probe | tried | clear | other | note |\n|---|---|---|---|---|")
    for probe, tried, clear, other, note in ROWS:
        print(f"| {probe} | {tried} | {clear} | {other} | {note} |")
    total = sum(r[1] for r in ROWS)
    print(f"\n{total} inputs in {time.monotonic() - started:.0f} s; other = {sum(r[3] for r in ROWS)}")
    return 0 if all(r[3] == 0 for r in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
