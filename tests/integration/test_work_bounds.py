"""Work before bounds, on real Ray Serve: a request of long prompts is tokenized off the
replica's event loop, so the replica keeps answering (status, statistics, Serve's health
check) while it runs.

One application of its own (``bounds``): the tiny GPT-2 alone, behind an ingress that takes
bodies of several MiB.
"""

from __future__ import annotations

import random
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.helpers import wait_for
from tests.integration.conftest import deploy_and_wait, undeploy

pytestmark = pytest.mark.integration

APP = "bounds"
# tiny-gpt2's context is 256 tokens; a prompt of more characters than 100 per token of
# context is refused before tokenizing, so each prompt stays just below that cut.
PROMPT_CHARS = 25_000
PROMPTS = 320  # about 8 MB of text: seconds of tokenizing on these cores


@pytest.fixture(scope="module")
def url(serve_url: str, model_repo: Path):
    args = {
        "models": [
            {
                "name": "tiny-gpt2",
                "framework": "transformers",
                "uri": str(model_repo / "tiny-gpt2"),
                "task": "text-generation",
                "resources": {"num_cpus": 0.5},
            }
        ],
        "ingress": {"num_cpus": 0.25, "max_request_bytes": 16 * 1024 * 1024},
    }
    deploy_and_wait(APP, args)
    yield f"{serve_url}/{APP}"
    undeploy(APP)


def _prompts() -> list[str]:
    """Distinct prompts of words the tokenizer has never seen (many tokens each)."""
    rng = random.Random(25)
    letters = string.ascii_letters
    prompts = []
    for _ in range(PROMPTS):
        words, size = [], 0
        while size < PROMPT_CHARS - 12:
            word = "".join(rng.choices(letters, k=rng.randint(3, 10)))
            words.append(word)
            size += len(word) + 1
        prompts.append(" ".join(words))
    return prompts


def test_a_request_of_long_prompts_does_not_block_the_replicas_event_loop(url) -> None:
    body = {
        "inputs": [{"name": "text", "shape": [PROMPTS], "datatype": "BYTES", "data": _prompts()}]
    }
    stats_url = f"{url}/v2/models/tiny-gpt2/stats"
    assert requests.get(stats_url, timeout=30).json()["coalescing"]["ongoing"] == 0

    with ThreadPoolExecutor(1) as pool:
        big = pool.submit(
            requests.post,
            f"{url}/v2/models/tiny-gpt2/infer",
            json=body,
            headers={"X-Request-Timeout-Seconds": "240"},
            timeout=300,
        )
        # The replica answers its statistics while it holds the big request (``ongoing``):
        # with the prompts tokenized on its event loop, no call could be answered until
        # they all were, and the request had left by then.
        seen_inside: list[dict] = []

        def answered_while_busy() -> bool:
            if big.done():
                return True
            stats = requests.get(stats_url, timeout=120).json()
            if stats["coalescing"]["ongoing"] >= 1 and not big.done():
                seen_inside.append(stats)
            return bool(seen_inside)

        wait_for(answered_while_busy, 280, "the statistics or the big request's answer", 0.1)
        answer = big.result()

    # Every prompt has more tokens than the context: refused by the model's own check.
    assert answer.status_code == 400, answer.text
    assert "exceeds the model's context" in answer.json()["error"]
    assert seen_inside, "the replica answered nothing while it tokenized the prompts"
    # And the model still serves.
    small = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Once"]}]}
    assert requests.post(f"{url}/v2/models/tiny-gpt2/infer", json=small, timeout=60).ok
