"""The status page in a real browser: headless Chromium (Debian's package) runs its script
against the shared fleet and the DOM it renders shows every model and the broken one's reason.

``make test`` installs no system package: without Chromium on PATH this test is skipped, saying
why. CI (``.ci/run``) installs Chromium first (``tests/browser/install_chromium.sh``), so it runs
there.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest
import requests

from tests.helpers import wait_for

MODELS = ("digits", "minilm", "tiny-gpt2", "half-plus-two", "two-versions", "sentiment")
# Headless, no sandbox (root in CI), nothing fetched from Google; the page's timers run in
# virtual time, so a few refreshes happen within the budget without waiting for them.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=8000",
)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Skipped before the fleet starts: Chromium is a system package that `make test` does not install.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium is not installed (no `chromium` on PATH): the status page's browser"
        " test needs it; install it with `bash tests/browser/install_chromium.sh` (as root,"
        " Debian's package), as .ci/run does",
    ),
]


def rendered_dom(url: str) -> str:
    """The DOM after the page's script ran, as Chromium serializes it."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


class Sections(HTMLParser):
    """The text of each element with a ``data-model`` attribute, and of ``#notice``."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, list[str]] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, the section it opens)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        key = found.get("data-model") or ("#notice" if found.get("id") == "notice" else None)
        if key is not None:
            self.text[key] = []
        self._open.append((tag, key))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, key in self._open:
            if key is not None:
                self.text[key].append(data)

    def of(self, key: str) -> str:
        return " ".join(" ".join(self.text.get(key, [])).split())


def test_the_page_renders_the_fleet_and_a_failed_models_reason(fleet: dict) -> None:
    url = fleet["url"]
    reason = requests.get(f"{url}/v1/models/broken", timeout=60).json()["error"]

    # The page shows the replicas' reports as soon as the JSON has them.
    def reported() -> bool:
        data = requests.get(f"{url}/fleet", timeout=60).json()
        return all(m["versions"] for m in data["models"] if m["name"] in MODELS)

    wait_for(reported, 60, "the models' replica reports")

    sections = Sections()
    sections.feed(rendered_dom(f"{url}/"))
    rendered = [k for k in sections.text if k != "#notice"]
    assert set(MODELS) | {"broken"} <= set(rendered), (rendered, sections.of("#notice"))
    for name in MODELS:
        text = sections.of(name)
        assert text.startswith(name) and "serving" in text and "HEALTHY" in text, text
        assert "AVAILABLE" in text, text  # its versions' table
    broken = sections.of("broken")
    assert "unavailable" in broken and "DEPLOY_FAILED" in broken, broken
    assert " ".join(reason.split()) in broken, (reason, broken)
    assert sections.of("#notice") == ""  # no error shown
