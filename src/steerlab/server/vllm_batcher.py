"""`steerlab serve --engine vllm`: today's API and playground, with vLLM's continuous batching behind them.

`VLLMBatcher` has the server batcher's interface (start / submit / close, the same row events), so the app,
its validation and its response shapes are unchanged. A thread owns the vLLM engine: it adds each new
row as a vLLM request (its steering in `extra_args`, the vectors by content hash), steps the engine, and
streams each row's new text back. Rows join and leave the running batch at every step.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from ..interop.vllm.engine import VLLMEngine
from ..interop.vllm.request import KEY, POSITIONS
from ..models import LoadedModel
from ..vector import content_hash
from .batcher import Delta, Job, JobFailed, JobQueue, RowDone
from .errors import ApiError
from .registry import ResolvedSteering

log = logging.getLogger(__name__)
_ids = itertools.count()


class VLLMBatcher(JobQueue):
    """Runs the server's jobs on a VLLMEngine; one thread steps the engine, rows are independent vLLM requests."""

    def __init__(self, lm: LoadedModel, engine: VLLMEngine):
        super().__init__("steerlab-vllm")
        self.lm, self.engine = lm, engine
        self._live: dict[str, tuple[Job, int, str]] = {}  # request id -> (job, row, text so far)
        self.batches = 0  # engine steps run

    @property
    def running_rows(self) -> int:
        return len(self._live)

    def _work(self) -> None:
        core = self.engine.llm.llm_engine
        while True:
            with self._cond:
                while not self._pending and not self._live and not self._closing:
                    self._cond.wait()
                if self._closing and not self._pending and not self._live:
                    return
                jobs = list(self._pending)
                self._pending.clear()
            for job in jobs:
                self._add(core, job)
            self._cancel(core)
            if not self._live:
                continue
            try:
                outputs = core.step()
            except Exception as exc:  # the engine is gone: fail every running row rather than hang them
                log.exception("vLLM step failed")
                # A step runs every request's rows; its error may be about any of them, so it is not repeated.
                for job in {job for job, _, _ in self._live.values()}:
                    job.emit(
                        JobFailed(
                            f"generation failed: the vLLM engine stopped ({type(exc).__name__}); the server logged why"
                        )
                    )
                self._live.clear()
                continue
            self.batches += 1
            for out in outputs:
                self._deliver(out)

    def _add(self, core, job: Job) -> None:
        added = []
        try:
            for row, plan in enumerate(job.rows):
                request_id = f"steerlab-{next(_ids)}"
                params = self.engine._vllm.SamplingParams(
                    max_tokens=plan.max_tokens,
                    temperature=job.sampling.temperature if job.sampling.do_sample else 0.0,
                    top_p=job.sampling.top_p if job.sampling.do_sample else 1.0,
                    seed=plan.seed,
                    extra_args={KEY: [self._item(s) for s in plan.steering]} if plan.steering else None,
                )
                core.add_request(request_id, {"prompt_token_ids": list(plan.prompt_ids)}, params)
                self._live[request_id] = (job, row, "")
                added.append(request_id)
        except Exception as exc:  # noqa: BLE001 - refused by vLLM's checks (the app's own checks ran before)
            if added:
                core.abort_request(added)
            for request_id in added:
                self._live.pop(request_id, None)
            job.emit(JobFailed(str(exc)))

    def check_steering(self, steering: tuple[ResolvedSteering, ...]) -> None:
        """Conditions, every-layer ablation, role, window and segment positions and length budgets are the HF
        engine's."""
        for i, item in enumerate(steering):
            field = (
                "condition"
                if item.condition is not None
                else "ablate_direction"
                if item.ablate_direction
                else "positions"
                if item.positions not in POSITIONS
                else "reasoning_budget"
                if item.budget is not None
                else None
            )
            if field:
                raise ApiError(
                    400,
                    f"steering[{i}].{field}: not available with --engine vllm (the vLLM plugin "
                    "steers block outputs at absolute positions: positions all, prompt or generated); "
                    "serve with the default engine (hf) for it",
                    param=f"steering[{i}].{field}",
                    code="unsupported_on_engine",
                )

    def _item(self, steering: ResolvedSteering) -> dict[str, Any]:
        sha = content_hash(steering.vector)
        self.engine.add_vector(steering.vector)  # the engine's steer folder holds every served vector by hash
        return {
            "vector": sha,
            "multiplier": steering.multiplier,
            "layers": {str(layer): weight for layer, weight in steering.layers},
            "positions": steering.positions,
            "operator": steering.operator,
        }

    def _cancel(self, core) -> None:
        gone = [rid for rid, (job, _, _) in self._live.items() if job.cancelled.is_set()]
        if gone:
            core.abort_request(gone)
            for rid in gone:
                self._live.pop(rid, None)

    def _deliver(self, out) -> None:
        entry = self._live.get(out.request_id)
        if entry is None:
            return
        job, row, before = entry
        completion = out.outputs[0]
        text = self.lm.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        assert isinstance(text, str)  # one row of ids decodes to one text
        if out.finished:
            self._live.pop(out.request_id, None)
            if text[len(before) :]:
                job.emit(Delta(row, text[len(before) :]))
            reason = "stop" if completion.finish_reason == "stop" else "length"
            # As the HF batcher counts: the end-of-sequence token is not a completion token.
            job.emit(RowDone(row, reason, text, len(completion.token_ids) - (reason == "stop")))
            return
        # Hold back a trailing replacement character: the next token may complete the multi-byte letter.
        stable = text.rstrip("\ufffd")
        if len(stable) > len(before):
            job.emit(Delta(row, stable[len(before) :]))
            self._live[out.request_id] = (job, row, stable)
