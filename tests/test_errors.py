"""One error family: every error steerlab raises on purpose derives from SteerlabError, keeps its builtin parent,
and is exported from `steerlab`; the command line prints one line for those and calls anything else a bug."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import steerlab
from steerlab import SteerlabError
from steerlab.cli import main

SRC = Path(steerlab.__file__).parent
PRIVATE = {"_StopForward", "_Stop"}  # control flow inside a forward pass, never raised to a caller
SERVER = {"ApiError"}  # the HTTP server's response type (status + message), not a library refusal


def exception_classes() -> dict[str, tuple[str, str]]:
    """Every class in src/steerlab with an exception among its bases: {class: (module, first base)}."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                if any(b.endswith(("Error", "Exception")) for b in bases):
                    found[node.name] = (module, bases[0])
    return found


def test_every_error_class_is_of_the_family_and_exported():
    classes = exception_classes()
    assert len(classes) > 20
    for name, (module, _) in classes.items():
        if name in PRIVATE | SERVER or name == "SteerlabError":
            continue
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, SteerlabError), f"{module}.{name} does not derive from SteerlabError"
        if module.startswith("steerlab.cli"):
            continue  # the command line sits above the package; its error is not the library's
        assert getattr(steerlab, name, None) is cls and name in steerlab.__all__, f"steerlab does not export {name}"


@pytest.mark.parametrize(
    ("name", "builtin"),
    [
        ("VectorFileError", ValueError),
        ("DatasetError", ValueError),
        ("ConfigError", ValueError),
        ("TaskError", ValueError),
        ("SteeringError", ValueError),
        ("StrengthError", ValueError),
        ("EvaluationError", ValueError),
        ("IncompatibleVectorError", ValueError),
        ("UsageError", ValueError),
        ("ModelLoadError", RuntimeError),
        ("InsufficientMemoryError", RuntimeError),
        ("SteeringRequestError", ValueError),
        ("SteerNotFound", LookupError),
        ("VLLMIncompatible", RuntimeError),
        ("OutputExistsError", FileExistsError),
        ("MissingFileError", FileNotFoundError),
    ],
)
def test_each_error_keeps_its_builtin_parent(name, builtin):
    """`except ValueError` (and the like) written before the family existed still catches each error."""
    cls = getattr(steerlab, name)
    assert issubclass(cls, SteerlabError) and issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("x")


def test_the_cli_calls_a_non_library_exception_a_bug(monkeypatch, capsys):
    """A library error is one line; anything else is one line ending "this is a bug, rerun with --debug", and
    --debug shows the traceback (the exception propagates)."""
    from steerlab.cli import vector

    def broken(args):
        raise KeyError("layer")

    monkeypatch.setattr(vector, "cmd_info", broken)
    assert main(["vector", "info", "x.safetensors"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: KeyError: 'layer'; this is a bug, rerun with --debug"]
    with pytest.raises(KeyError):
        main(["--debug", "vector", "info", "x.safetensors"])


def test_the_cli_prints_a_library_error_as_one_line(monkeypatch, capsys):
    from steerlab.cli import vector

    def refuses(args):
        raise steerlab.VectorFileError("x.safetensors: not a safetensors file\n(detail)")

    monkeypatch.setattr(vector, "cmd_info", refuses)
    assert main(["vector", "info", "x.safetensors"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["error: x.safetensors: not a safetensors file (detail)"]
