"""The playground in real headless Chromium (Debian's package at /usr/bin/chromium, driven by Playwright):
pick a vector, move its slider, generate, see the original and steered outputs stream side by side, chart a
metric across multipliers. The screenshot is kept as test-artifacts/playground.png."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import CHROMIUM
from server_helpers import ARTIFACTS, serve_in_thread, write_real_vectors
from steerlab.conditional import Condition
from steerlab.server.app import create_app
from steerlab.server.registry import VectorRegistry

pytestmark = [pytest.mark.real_model, pytest.mark.browser]

# No sandbox: CI runs as root. No background traffic: the test machine has no network.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 240_000


def test_playground_streams_original_and_steered_side_by_side(smollm2, tmp_path):
    vectors = write_real_vectors(smollm2, tmp_path)
    Condition(vectors["sentiment"].directions[9], 9, 0.05).save(tmp_path / "upbeat.safetensors", smollm2)
    app = create_app(smollm2, VectorRegistry.from_dir(smollm2, tmp_path))
    with serve_in_thread(app) as (url, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(url + "/")
            expect(page.locator("#model")).to_contain_text("SmolLM2-135M-Instruct · 30 layers · 2 vector(s)")
            expect(page.locator("#auth")).to_be_hidden()  # no token is set, so no token box
            row = page.locator(".steer-row").first
            row.locator(".vector").select_option("sentiment")
            expect(row.locator(".mult-value")).to_have_text("2.5")  # the vector's recommended multiplier
            row.locator(".mult").focus()
            page.keyboard.press("ArrowRight")  # one step of 0.5
            expect(row.locator(".mult-value")).to_have_text("3.0")
            expect(page.locator("#steer-summary")).to_have_text("sentiment ×3")
            page.fill("#prompt", "Tell me about your weekend.")
            page.fill("#max-tokens", "16")
            page.click("#generate")
            for pane in ("#out-steered", "#out-original"):
                expect(page.locator(pane)).to_have_attribute("data-state", "done", timeout=WAIT_MS)
            steered = page.locator("#out-steered").text_content()
            original = page.locator("#out-original").text_content()
            chunks = re.fullmatch(r"finish: length · (\d+) chunks", page.locator("#meta-steered").text_content())
            assert chunks and int(chunks.group(1)) > 1  # arrived token by token, not in one piece

            reference = httpx.post(
                url + "/v1/chat/completions",
                timeout=120,
                json={
                    "messages": [{"role": "user", "content": "Tell me about your weekend."}],
                    "max_tokens": 16,
                    "temperature": 0,
                    "steering": [{"vector": "sentiment", "multiplier": 3, "positions": "all"}],
                    "include_original": True,
                },
            ).json()["choices"]
            assert steered == reference[0]["message"]["content"]
            assert original == reference[1]["message"]["content"]
            assert steered and original and steered != original

            page.fill("#sweep-values", "-4,0,4")
            page.locator("#metric").select_option("sentiment")
            page.click("#sweep")
            expect(page.locator("#chart")).to_have_attribute("data-points", "3", timeout=WAIT_MS)
            expect(page.locator("#chart circle")).to_have_count(3)
            expect(page.locator("#error")).to_be_hidden()

            # CAST and every-layer ablation: what the row's controls send (the server side is tested on its own).
            row.locator(".condition").select_option("upbeat")
            expect(page.locator("#steer-summary")).to_have_text("sentiment ×3 if upbeat")
            assert page.evaluate("steering()") == [
                {"vector": "sentiment", "positions": "all", "multiplier": 3, "condition": "upbeat"}
            ]
            row.locator(".operator").select_option("every-layer")
            expect(row.locator(".mult")).to_be_disabled()
            expect(page.locator("#steer-summary")).to_have_text("sentiment ablated at every layer")
            assert page.evaluate("steering()") == [{"vector": "sentiment", "ablate_direction": True}]
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
            assert page_errors == []
        finally:
            browser.close()
