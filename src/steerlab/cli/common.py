"""What every command shares: one grammar per option (--out, --layers, --model, limits), checks made before
the model loads, the model loader, progress bars and the one-line error type."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

from ..errors import SteerlabError

if TYPE_CHECKING:
    from tqdm import tqdm


class CLIError(SteerlabError):
    """A user-facing error; printed as one line."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (unless its help already names it) and keeps the examples' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {default})"


def command(sub, name: str, help_text: str, example: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser with its example under --help and defaults shown."""
    return sub.add_parser(
        name,
        help=help_text,
        description=description or help_text,
        epilog=f"example:\n  {example}",
        formatter_class=HelpFormatter,
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="HF model folder or .gguf file (default: bundled SmolLM2-135M-Instruct)")
    p.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the model's chat template")
    p.add_argument("--threads", type=at_least_1, help="torch CPU threads (default: torch's choice)")


def at_least_1(text: str) -> int:
    """argparse type: a whole number of at least 1 (`--threads 0` is refused, not read as "torch's choice")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_out_args(p: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    """--out PATH and --overwrite, spelled the same in every command."""
    p.add_argument("--out", required=required, help=what)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


@overload
def check_out_free(path: str | Path, overwrite: bool) -> Path: ...
@overload
def check_out_free(path: None, overwrite: bool) -> None: ...
def check_out_free(path: str | Path | None, overwrite: bool) -> Path | None:
    """Refuse an existing --out before any model work, unless --overwrite."""
    if path is None:
        return None
    out = Path(path)
    if out.exists() and not overwrite:
        raise CLIError(f"{out} already exists; choose another --out or pass --overwrite")
    check_writable(out)
    return out


def check_writable(out: Path, option: str = "--out") -> None:
    """Refuse, before any model work, an output whose folder cannot be created or written (the writer would
    fail only at the end, naming its temporary file)."""
    folder = out.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the writer creates the missing folders below the nearest existing one
    if not folder.is_dir():
        raise CLIError(f"{option} {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"{option} {out}: cannot write in {folder} (permission denied or read-only)")


def add_pair_args(p: argparse.ArgumentParser) -> None:
    """--data FILE, a task's train pairs, or inline --positive/--negative texts (with --prompt), as read by
    pairs_from_args."""
    src = p.add_argument_group("data (one of)")
    src.add_argument(
        "--data", help="pairs file: CAA generate_dataset.json, persona .jsonl, or JSONL {prompt, positive, negative}"
    )
    src.add_argument(
        "--data-task", help="the train pairs of a built-in task (e.g. reasoning-length, sentiment) or a task file"
    )
    p.add_argument(
        "--data-dir", help="the shared data folder for --data-task and named text sets (default: ../shared/data)"
    )
    src.add_argument("--positive", action="append", help="a positive text (repeatable; pairs with --negative)")
    src.add_argument("--negative", action="append", help="a negative text (repeatable)")
    p.add_argument("--prompt", default="", help="prompt shared by inline --positive/--negative texts")
    p.add_argument("--limit", type=int, help="use only the first N pairs of --data or --data-task")


def pairs_from_args(args, *, required: bool = True):
    """The pairs add_pair_args asked for; None when none were given and they are not required."""
    from ..data import load_pairs, pairs_from_texts

    if sum(bool(x) for x in (args.data, args.data_task, args.positive or args.negative)) > 1:
        raise CLIError("give one source of pairs: --data FILE, --data-task TASK or --positive/--negative texts")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be at least 1, got {args.limit}")
    if args.data_task:
        from ..evaluation.tasks import get_task

        return get_task(args.data_task, args.data_dir).train_data(args.data_dir, args.limit)
    if args.data:
        data = load_pairs(args.data)
        return data.subset(range(min(args.limit, len(data))), f" (first {args.limit})") if args.limit else data
    if args.positive or args.negative:
        return pairs_from_texts(args.positive or [], args.negative or [], prompt=args.prompt)
    if required:
        raise CLIError("no data: give --data FILE, --data-task TASK or --positive TEXT --negative TEXT")
    return None


LAYERS_HELP = "15, 12,15, 4-8, all, or with weights 12:0.5,15:1"


@overload
def parse_layers(text: str | None, *, weights: Literal[False], option: str = ...) -> list[int] | None: ...
@overload
def parse_layers(
    text: str | None, *, weights: bool = True, option: str = ...
) -> list[int] | dict[int, float] | None: ...
def parse_layers(
    text: str | None, *, weights: bool = True, option: str = "--layers"
) -> list[int] | dict[int, float] | None:
    """The one --layers grammar: '15', '12,15', '4-8', 'all' (None: every layer) -> a list; '12:0.5,15:1' -> {layer: weight}.

    Commands that build or read layers (not apply them) take no weights and say so.
    """
    if not text or text == "all":
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if any(":" in p for p in parts):
            if not weights:
                raise CLIError(
                    f"{option} {text}: weights (layer:weight) only apply when steering; give layers like 12,15"
                )
            layers = {int(k): float(v) for k, v in (p.split(":", 1) for p in parts)}
            if len(layers) != len(parts):
                raise ValueError
            return layers
        out: list[int] = []
        for part in parts:
            lo, sep, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if sep and lo else [int(part)]
        if len(set(out)) != len(out):
            raise ValueError
        return out
    except ValueError:
        raise CLIError(f"{option} {text}: expected {LAYERS_HELP} (each layer once)") from None


def parse_numbers(text: str | None, option: str) -> list[float] | None:
    """'4' or '-4,4' -> numbers; negatives need '=' (--multipliers=-4,4) for argparse."""
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{option} {text}: expected numbers like 4 or -4,4 (write {option}=-4,4)") from None


def check_at_least(value: int | None, minimum: int, option: str) -> None:
    if value is not None and value < minimum:
        raise CLIError(f"{option} must be at least {minimum}, got {value}")


def load_cli_model(args):
    import torch

    from ..models import load_model

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    print(f"loading {args.model or 'SmolLM2-135M-Instruct (bundled)'} ...", file=sys.stderr)
    return load_model(args.model, use_chat_template=False if args.no_chat else None)


def progress_bar(total: int, desc: str, unit: str = "item") -> tqdm:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


class StageBars:
    """A progress(stage, done, total) callback that shows one bar per stage (with tqdm's time estimate)."""

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.bars:
            self.close()
            self.bars[stage] = progress_bar(total, stage)
        bar = self.bars[stage]
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prompt_lines(option: str, path: str) -> list[str]:
    """The non-blank lines of a prompts file (one prompt per line, UTF-8, a BOM is fine), stripped."""
    from ..textio import read_text

    file = Path(path)
    try:
        if not file.is_file():
            raise CLIError(f"{option} {file}: no such file")
        text = read_text(file, CLIError)
    except OSError as exc:  # a name too long, say
        raise CLIError(f"{option} {file}: cannot read ({exc.strerror or exc})") from None
    except CLIError as exc:  # read_text's message starts with the file; say which option named it
        raise CLIError(f"{option} {exc}" if str(exc).startswith(str(file)) else str(exc)) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += prompt_lines("--prompts-file", args.prompts_file)
    if not prompts:
        raise CLIError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def check_vector_layers(
    vectors: Sequence, layers: list[int] | dict[int, float] | None, option: str = "--layers"
) -> None:
    """Refuse, before the model loads, a layer a vector does not have."""
    if layers is None:
        return
    for vector in vectors:
        missing = [layer for layer in layers if layer not in vector.directions]
        if missing:
            raise CLIError(
                f"{option}: the vector has no direction for layer {missing[0]}; it has layers {vector.layers}"
            )


def one_line(text: str) -> str:
    return " ".join(text.split())
