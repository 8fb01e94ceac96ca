"""The vLLM plugin's own errors, in a module that imports nothing heavy (no vLLM, no custom op), so that
`steerlab` exports them beside the rest of its error family."""

from __future__ import annotations

from ...errors import SteerlabError


class VLLMIncompatible(SteerlabError, RuntimeError):
    """The installed vLLM is not one the plugin supports, or lacks a name the plugin needs."""


class EngineUnavailable(SteerlabError, RuntimeError):
    """vLLM cannot be used here; the message says what to install."""


class SteerNotFound(SteerlabError, LookupError):
    """A request named a steer the folder does not hold (or holds in a form vLLM cannot apply)."""


class SteeringNotApplied(SteerlabError, RuntimeError):
    """A planned layer's op did not run in the forward: the step's text would have been unsteered."""
