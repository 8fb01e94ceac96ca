"""Where to steer by chat role and between marker tokens, read from token ids alone.

Roles come from the model's own chat template: a conversation is rendered with a marker as every
message's content and tokenized, which gives the template's token segments around each message
(headers, footers, the generation prompt). A prompt's ids are then matched against those segments;
what lies between them is each message's content. So "user" selects exactly the tokens of the user
messages' contents, "system" those of the system message (or of the default system text a template such
as SmolLM2's or Qwen2.5's writes when none is given: it has the shape of a system message), and "assistant" those of earlier assistant messages plus every position from the last prompt
token on (the answer being written). Windows select the tokens after an opening marker and before the
next closing one (e.g. `<think>` .. `</think>`), in the prompt and in generated text, the markers
themselves excluded; markers are matched as the tokens they encode to on their own. A segment "until:MARKER"
is the reasoning part of an answer: every position from the last prompt token on, up to the generated token
that completes MARKER (the answer marker, e.g. "The answer is"), which and whatever follows it are left
alone; the marker is found in the decoded generated text, so however the tokenizer splits it in context.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import SteerlabError, UsageError

ROLES = ("system", "user", "assistant")
FIXED = ("all", "prompt", "generated", *ROLES)  # besides windows (between:OPEN:CLOSE) and segments (until:MARKER)
MARK = "zqxjk"
# Conversation shapes a prompt is matched against, longest first: a multi-turn prompt also fits a one-turn shape
# (its later turns would read as the first turn's content), never the other way round.
SHAPES: tuple[tuple[str, ...], ...] = (
    ("system", "user", "assistant", "user", "assistant", "user"),
    ("user", "assistant", "user", "assistant", "user"),
    ("system", "user", "assistant", "user"),
    ("user", "assistant", "user"),
    ("system", "user"),
    ("user",),
)


class TemplateError(SteerlabError, ValueError):
    """The chat template (or a prompt) cannot be split into role segments."""


def check_positions(positions: str) -> str:
    """`positions` if steerlab can steer there, else one error listing what it can (the one rule for every path)."""
    if positions in FIXED or parse_window(positions) is not None or parse_until(positions) is not None:
        return positions
    raise UsageError(
        f"positions must be one of {', '.join(FIXED)}, between:OPEN:CLOSE or until:MARKER; got '{positions}'"
    )


def parse_window(positions: str) -> tuple[str, str] | None:
    """("<think>", "</think>") for "between:<think>:</think>", else None."""
    if not positions.startswith("between:"):
        return None
    parts = positions.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise UsageError(f"a window is written between:OPEN:CLOSE (e.g. between:<think>:</think>); got '{positions}'")
    return parts[1], parts[2]


def parse_until(positions: str) -> str | None:
    """ "The answer is" for "until:The answer is", else None."""
    if not positions.startswith("until:"):
        return None
    marker = positions[len("until:") :]
    if not marker.strip():
        raise UsageError(f"a segment is written until:MARKER (e.g. until:The answer is); got '{positions}'")
    return marker


def marker_end(tokenizer, ids: Sequence[int], start: int, marker: str, scanned: int | None = None) -> int | None:
    """The absolute position of the first token at or after `start` whose text completes `marker` (None while
    it has not appeared). A token completes it when the last few tokens up to it decode to a text containing
    it; `scanned` (a position already searched) lets a caller resume without changing the answer."""
    window = len(marker) + 4  # tokens enough to hold the marker: each decodes to at least one character
    for end in range(max(start, scanned + 1 if scanned is not None else start), len(ids)):
        if marker in tokenizer.decode(list(ids[max(start, end - window) : end + 1])):
            return end
    return None


def template_segments(tokenizer, shape: Sequence[str]) -> list[list[int]]:
    """Token ids the chat template puts before, between and after the messages of `shape` (len(shape) + 1)."""
    messages = [{"role": role, "content": MARK} for role in shape]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - templates raise on shapes they refuse (e.g. no system role)
        raise TemplateError(f"the chat template cannot render {list(shape)}: {exc}") from None
    spans, start = [], 0
    while (at := text.find(MARK, start)) >= 0:
        spans.append((at, at + len(MARK)))
        start = at + len(MARK)
    if len(spans) != len(shape):
        raise TemplateError(f"the chat template does not copy message contents verbatim ({len(spans)} of {len(shape)})")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    segments: list[list[int]] = [[] for _ in range(len(shape) + 1)]
    for token, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=False):
        if any(begin <= a and b <= end for begin, end in spans):
            continue  # the marker's own tokens
        if any(a < end and b > begin for begin, end in spans):
            raise TemplateError("the chat template's tokens merge with message contents; roles cannot be located")
        segments[sum(end <= a for _, end in spans)].append(token)
    return segments


def _find(ids: Sequence[int], part: Sequence[int], start: int) -> int:
    n = len(part)
    for i in range(start, len(ids) - n + 1):
        if list(ids[i : i + n]) == list(part):
            return i
    return -1


def match_roles(ids: Sequence[int], shape: Sequence[str], segments: list[list[int]]) -> list[str | None] | None:
    """Per token, the role whose message content holds it (None for template tokens), or None if `ids` is not
    this shape."""
    first, last = segments[0], segments[-1]
    if (
        list(ids[: len(first)]) != first
        or len(ids) < len(first) + len(last)
        or list(ids[len(ids) - len(last) :]) != last
    ):
        return None
    labels: list[str | None] = [None] * len(ids)
    pos = len(first)
    for k, role in enumerate(shape):
        if k + 1 < len(shape):
            end = _find(ids, segments[k + 1], pos)
            if end < 0 or end > len(ids) - len(last):
                return None
        else:
            end = len(ids) - len(last)
            if end < pos:
                return None
        labels[pos:end] = [role] * (end - pos)
        pos = end + len(segments[k + 1])
    return labels


def prompt_roles(tokenizer, ids: Sequence[int], cache: dict | None = None) -> list[str | None]:
    """The role of each prompt token (see the module doc); raises if the prompt follows none of SHAPES."""
    cache = {} if cache is None else cache
    for shape in SHAPES:
        if shape not in cache:
            try:
                cache[shape] = template_segments(tokenizer, shape)
            except TemplateError:
                cache[shape] = None
        if cache[shape] is not None and (labels := match_roles(ids, shape, cache[shape])) is not None:
            return labels
    raise TemplateError("the prompt does not follow the model's chat template (role positions need templated prompts)")


def marker_ids(tokenizer, marker: str) -> list[int]:
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UsageError(f"the marker {marker!r} encodes to no tokens")
    return list(ids)


def window_flags(ids: Sequence[int], open_ids: Sequence[int], close_ids: Sequence[int]) -> list[bool]:
    """Per token: inside a window, after the last token of an opening marker and before a closing marker."""
    flags = [False] * len(ids)
    inside, i, n = False, 0, len(ids)
    while i < n:
        if not inside and list(ids[i : i + len(open_ids)]) == list(open_ids):
            inside, i = True, i + len(open_ids)
            continue
        if inside and list(ids[i : i + len(close_ids)]) == list(close_ids):
            inside, i = False, i + len(close_ids)
            continue
        flags[i] = inside
        i += 1
    return flags
