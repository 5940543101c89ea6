"""The transports' caps Ray starts with (gRPC message size, HAProxy's client timeout), and
`serve-app check` when they and a config's max_request_bytes disagree."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from serve_app import container
from serve_app.cli import main
from serve_app.config import IngressSpec
from serve_app.fast_path import (
    FAST_PATH_ENV,
    GRPC_MAX_MESSAGE_BYTES,
    GRPC_MAX_MESSAGE_VAR,
    HAPROXY_CLIENT_TIMEOUT_VAR,
    TRANSPORT_ENV,
    grpc_cap_check,
    serve_env,
)

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
NO_HAPROXY = {"RAY_SERVE_HAPROXY_BINARY_PATH": "/nonexistent/haproxy"}


def _haproxy(tmp_path: Path) -> dict[str, str]:
    binary = tmp_path / "haproxy"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": str(binary)}


def test_grpc_is_capped_with_or_without_haproxy(tmp_path: Path) -> None:
    assert serve_env(NO_HAPROXY) == TRANSPORT_ENV  # Serve's Python proxy: the same gRPC server
    assert serve_env(_haproxy(tmp_path)) == {**TRANSPORT_ENV, **FAST_PATH_ENV}
    # Sized for the default config: every request it admits, answers twice that.
    assert 2 * IngressSpec().max_request_bytes == GRPC_MAX_MESSAGE_BYTES
    assert int(FAST_PATH_ENV[HAPROXY_CLIENT_TIMEOUT_VAR]) > IngressSpec().body_idle_timeout_s


def test_a_users_own_caps_are_kept(tmp_path: Path) -> None:
    mine = {GRPC_MAX_MESSAGE_VAR: str(200 * MiB), HAPROXY_CLIENT_TIMEOUT_VAR: "30"}
    env = serve_env({**_haproxy(tmp_path), **mine})
    assert env[GRPC_MAX_MESSAGE_VAR] == str(200 * MiB)
    assert env[HAPROXY_CLIENT_TIMEOUT_VAR] == "30"
    # The container starts `serve run` with them too.
    started = container.environment({**_haproxy(tmp_path), **mine})
    assert started[GRPC_MAX_MESSAGE_VAR] == str(200 * MiB)
    assert container.environment(NO_HAPROXY)[GRPC_MAX_MESSAGE_VAR] == str(GRPC_MAX_MESSAGE_BYTES)


def test_the_check_fits_the_default_and_says_when_they_disagree() -> None:
    assert grpc_cap_check(NO_HAPROXY, "ingress", 32 * MiB) == []
    (below,) = grpc_cap_check(NO_HAPROXY, "ingress", 100 * MiB)
    assert below.startswith("error: ingress 'ingress': max_request_bytes (104857600)")
    assert f"{GRPC_MAX_MESSAGE_VAR}=209715200" in below  # what to set, not only what is wrong
    (loose,) = grpc_cap_check(NO_HAPROXY, "ingress", 1 * MiB)
    assert loose.startswith("warning:") and f"{GRPC_MAX_MESSAGE_VAR}=2097152" in loose
    unset = {**NO_HAPROXY, GRPC_MAX_MESSAGE_VAR: str(2**31 - 1)}  # Ray's default
    assert grpc_cap_check(unset, "ingress", 32 * MiB)[0].startswith("warning:")
    (junk,) = grpc_cap_check({**NO_HAPROXY, GRPC_MAX_MESSAGE_VAR: "64MiB"}, "ingress", 1024)
    assert junk.startswith("error:") and "not a byte count" in junk


def _config_with(tmp_path: Path, max_request_bytes: int) -> Path:
    document = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    document = copy.deepcopy(document)
    (ingress,) = [a for a in document["applications"] if a["name"] == "ingress"]
    ingress.setdefault("args", {})["max_request_bytes"] = max_request_bytes
    ingress["args"]["max_buffered_bytes"] = max(4 * max_request_bytes, 1024)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_serve_app_check_fails_below_the_cap_and_warns_far_above(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(GRPC_MAX_MESSAGE_VAR, raising=False)
    assert main(["check", str(_config_with(tmp_path, 100 * MiB))]) == 1
    assert "is above RAY_SERVE_GRPC_MAX_MESSAGE_SIZE (67108864)" in capsys.readouterr().err
    # The user raised the cap with the limit: make run keeps their value, and so the check.
    monkeypatch.setenv(GRPC_MAX_MESSAGE_VAR, str(200 * MiB))
    assert main(["check", str(_config_with(tmp_path, 100 * MiB))]) == 0
    monkeypatch.delenv(GRPC_MAX_MESSAGE_VAR)
    assert main(["check", str(_config_with(tmp_path, 4096))]) == 0
    assert "warning: ingress 'ingress'" in capsys.readouterr().err
    assert main(["check", str(ROOT / "serve_config.yaml")]) == 0
    assert capsys.readouterr().err == ""
