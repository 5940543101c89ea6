"""The test fleet: the default models plus models that exercise the protocols, deployed once.

Registered as a pytest plugin (see tests/conftest.py) so every integration module shares one
deployment of the ``fleet`` application at ``/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray import serve

from tests.helpers import TFSERVING_TESTDATA, wait_for
from tests.integration.conftest import deploy_and_wait

MAX_REQUEST_BYTES = 1024 * 1024
WORKING_MODELS = (
    "digits",
    "minilm",
    "tiny-gpt2",
    "half-plus-two",
    "two-versions",
    "multi",
    "sentiment",
    "Ingress",
)


def build_multi_io_savedmodel(root: Path) -> Path:
    """A SavedModel with FP32, INT64 and string inputs and outputs, written by TF itself."""
    import tensorflow as tf

    class MultiIO(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 2], tf.float32, name="x"),
                tf.TensorSpec([None], tf.int64, name="k"),
                tf.TensorSpec([None], tf.string, name="who"),
            ]
        )
        def serve(self, x: Any, k: Any, who: Any) -> dict[str, Any]:
            return {
                "total": tf.reduce_sum(x, axis=1) * tf.cast(k, tf.float32),
                "k_twice": k * 2,
                "greeting": tf.strings.join(["hello ", who]),
            }

    module = MultiIO()
    path = root / "multi" / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path.parent


def build_tiny_classifier(root: Path, minilm: Path) -> Path:
    """A small BERT text classifier (random weights) with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm / "1", local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(0)
    path = root / "sentiment" / "1"
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path.parent


def fleet_args(repo: Path, extra: Path, broken: Path) -> dict[str, Any]:
    def model(name: str, framework: str, uri: Path, **more: Any) -> dict[str, Any]:
        return {"name": name, "framework": framework, "uri": str(uri), **more}

    slow_batches = {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}
    small = {"num_cpus": 0.25}
    return {
        "models": [
            model("digits", "tensorflow", repo / "digits", batching=slow_batches, resources=small),
            model(
                "minilm",
                "transformers",
                repo / "minilm",
                task="feature-extraction",
                batching=slow_batches,
                resources=small,
            ),
            model(
                "tiny-gpt2",
                "transformers",
                repo / "tiny-gpt2",
                task="text-generation",
                batching={"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
                resources=small,
            ),
            model(
                "half-plus-two",
                "tensorflow",
                TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu",
                resources=small,
            ),
            model(
                "two-versions",
                "tensorflow",
                TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions",
                resources=small,
            ),
            model("multi", "tensorflow", extra / "multi", resources=small),
            model(
                "sentiment",
                "transformers",
                extra / "sentiment",
                task="text-classification",
                resources=small,
            ),
            model("broken", "tensorflow", broken, resources=small),
        ],
        "ingress": {"max_request_bytes": MAX_REQUEST_BYTES},
    }


@pytest.fixture(scope="session")
def fleet(serve_url: str, model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The fleet deployed from a Serve config; ``broken`` has a corrupted model.keras."""
    extra = tmp_path_factory.mktemp("extra_models")
    build_multi_io_savedmodel(extra)
    build_tiny_classifier(extra, model_repo / "minilm")
    broken = tmp_path_factory.mktemp("broken")
    (broken / "1").mkdir()
    (broken / "1" / "model.keras").write_bytes(b"this is not a keras archive")
    args = fleet_args(model_repo, extra, broken)
    # One model cannot load, so the application as a whole reports DEPLOY_FAILED.
    deploy_and_wait("fleet", args, expect=("DEPLOY_FAILED",))
    wait_for(
        lambda: all(
            serve.status().applications["fleet"].deployments[name].status.value == "HEALTHY"
            for name in WORKING_MODELS
        ),
        180,
        "the working models to be HEALTHY",
    )
    return {"url": serve_url, "args": args}
