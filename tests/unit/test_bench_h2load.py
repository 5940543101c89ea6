"""The h2load gRPC generator's pure parts: the body's gRPC frame, the command line (exactly C
calls in flight), h2load's output and log read into the result dict, and compare's choice
of generator. No server and no h2load run: the samples below were captured from h2load
1.52.0 against a grpc.aio echo server (``bench.grpc_floor --serve grpc``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench import compare, grpc_load

# h2load -D 2 -c 1 -m 8 --log-file ... posting a 383-byte message to /bench.Echo/Echo.
OK_STDOUT = """starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 3079.00 req/s, 1.31MB/s
requests: 6158 total, 6166 started, 6158 done, 6158 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 6158 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 2.62MB (2742355) total, 18.11KB (18549) headers (space savings 96.28%), 2.28MB (2389304) data
                     min         max         mean         sd        +/- sd
time for request:      339us     47.20ms      2.58ms      3.04ms    95.23%
time for connect:       71us        71us        71us         0us   100.00%
time to 1st byte:     4.21ms      4.21ms      4.21ms         0us   100.00%
req/s           :    3078.74     3078.74     3078.74        0.00   100.00%
"""  # noqa: E501 - h2load's own line

# The first ten rows of that run's --log-file (start us, status, us to the end of the
# answer), and a failed stream (status -1) that must not count as a latency.
LOG = """1796621039356934\t200\t4005
1796621039356937\t200\t4049
1796621039356937\t200\t4051
1796621039356938\t200\t4055
1796621039356939\t200\t4055
1796621039356940\t200\t4055
1796621039356941\t200\t4056
1796621039356941\t200\t4461
1796621039361009\t200\t695
1796621039361010\t200\t1063
1796621039361011\t-1\t30000123
"""

# The same load on a method the server lacks: every answer a 200 with grpc-status 12
# (UNIMPLEMENTED) in its trailers, and no DATA at all.
UNIMPLEMENTED_STDOUT = """finished in 1.00s, 1661.00 req/s, 88.88KB/s
requests: 1661 total, 1665 started, 1661 done, 1661 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 1661 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 88.88KB (91010) total, 56.82KB (58180) headers (space savings 56.22%), 0B (0) data
"""

# Nothing listening on the port: h2load still exits 0.
REFUSED_STDOUT = """finished in 1.00s, 0.00 req/s, 0B/s
requests: 0 total, 0 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
"""


def test_h2load_output_becomes_the_python_generators_result() -> None:
    result = grpc_load.parse_h2load(OK_STDOUT, "", 0, LOG, client_cpu_s=0.25, answer_bytes=383)
    python_keys = set(grpc_load.summarize([0.001], Counter(), [], 1.0))
    assert python_keys <= set(result)
    assert result["ok"] and result["errors"] == 0 and result["non_ok"] == {}
    assert (result["requests"], result["duration_s"]) == (6158, 2.0)
    assert result["rps"] == result["ok_rps"] == pytest.approx(3079.0)
    assert result["client_cpu_s"] == 0.25
    # Ten 2xx rows, sorted: 695 1063 4005 4049 4051 4055 4055 4055 4056 4461 us; the p-th
    # percentile is the value at index int(p / 100 * 10), as the Python generator takes it.
    latency = result["latency_ms"]
    assert (latency["p50"], latency["p75"], latency["p90"], latency["p99"]) == (
        4.055,
        4.055,
        4.461,
        4.461,
    )
    assert latency["max"] == 4.461  # not the failed stream's 30 s
    assert latency["mean"] == pytest.approx(3.4545, abs=1e-3)
    assert result["h2load"]["data_bytes"] == 6158 * (383 + 5)


def test_both_generators_take_percentiles_the_same_way() -> None:
    seconds = [0.004, 0.001, 0.003, 0.002, 0.010]
    python = grpc_load.summarize(seconds, Counter(), [], 1.0)["latency_ms"]
    log = "".join(f"1\t200\t{round(s * 1e6)}\n" for s in seconds)
    h2load = grpc_load.parse_h2load(OK_STDOUT, "", 0, log)["latency_ms"]
    assert h2load == python


def test_grpc_errors_answered_200_are_found_by_their_missing_message() -> None:
    blind = grpc_load.parse_h2load(UNIMPLEMENTED_STDOUT, "", 0, "")
    assert blind["ok"]  # h2load itself sees 1661 good answers
    result = grpc_load.parse_h2load(UNIMPLEMENTED_STDOUT, "", 0, "", answer_bytes=383)
    assert not result["ok"] and result["errors"] == 1661 and result["ok_rps"] == 0.0
    assert result["non_ok"] == {"NO_MESSAGE": 1661}
    assert "grpc-status" in result["non_ok_sample"]
    assert "1661 error(s)" in result["failure"]


def test_http_and_stream_failures_are_counted_by_kind() -> None:
    stdout = OK_STDOUT.replace(
        "requests: 6158 total, 6166 started, 6158 done, 6158 succeeded, 0 failed, 0 errored,"
        " 0 timeout",
        "requests: 100 total, 104 started, 100 done, 90 succeeded, 10 failed, 4 errored, 1 timeout",
    ).replace("status codes: 6158 2xx, 0 3xx, 0 4xx, 0 5xx", "status codes: 90 2xx, 0 3xx, 6 4xx")
    result = grpc_load.parse_h2load(stdout, "", 0, LOG)
    assert result["non_ok"] == {"HTTP_4xx": 6, "STREAM_ERROR": 3, "TIMEOUT": 1}
    assert result["errors"] == 10 and result["requests"] == 100 and not result["ok"]
    assert result["ok_rps"] == pytest.approx(90 / 2.0)


def test_nothing_answered_or_no_summary_fails() -> None:
    refused = grpc_load.parse_h2load(REFUSED_STDOUT, "", 0, "", answer_bytes=383)
    assert not refused["ok"] and refused["failure"] == "no call completed"
    broken = grpc_load.parse_h2load("", "invalid URI: x\n", 1, "")
    assert not broken["ok"] and broken["failure"] == "h2load exit 1: invalid URI: x"


def test_durations_in_milliseconds_are_read() -> None:
    stdout = OK_STDOUT.replace("finished in 2.00s,", "finished in 9.58ms,")
    assert grpc_load.parse_h2load(stdout, "", 0, LOG)["duration_s"] == 0.01  # 9.58 ms


def test_the_body_is_one_uncompressed_length_prefixed_message() -> None:
    assert grpc_load.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    message = bytes(range(256)) * 2
    frame = grpc_load.grpc_frame(message)
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == 512 and frame[5:] == message


@pytest.mark.parametrize(
    ("concurrency", "channels", "expected"),
    [(64, 1, (1, 64)), (64, 4, (4, 16)), (1, 1, (1, 1)), (1, 2, (1, 1)), (16, 16, (16, 1))],
)
def test_exactly_c_calls_in_flight(concurrency: int, channels: int, expected: tuple) -> None:
    connections, streams = grpc_load.streams_per_connection(concurrency, channels)
    assert (connections, streams) == expected and connections * streams == concurrency


def test_uneven_connections_are_refused() -> None:
    with pytest.raises(ValueError, match="divides"):
        grpc_load.streams_per_connection(64, 3)


def test_h2load_command_line(tmp_path: Path) -> None:
    request = grpc_load.Request(
        "127.0.0.1:9000", grpc_load.INFER, b"x", metadata=(("x-trace", "1"),)
    )
    body, log = tmp_path / "b", tmp_path / "l"
    argv = grpc_load.h2load_argv("/usr/bin/h2load", request, 64, 14.6, 2, body, log)
    assert argv[0] == "/usr/bin/h2load"
    assert argv[-1] == "http://127.0.0.1:9000/inference.GRPCInferenceService/ModelInfer"
    for arg in ("--duration=15", "--clients=2", "--max-concurrent-streams=32", "--threads=1"):
        assert arg in argv
    assert f"--data={body}" in argv and f"--log-file={log}" in argv
    headers = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--header"]
    assert headers == ["content-type: application/grpc", "te: trailers", "x-trace: 1"]


def test_run_h2load_refuses_other_hosts() -> None:
    request = grpc_load.Request("10.0.0.1:9000", grpc_load.INFER, b"x")
    with pytest.raises(ValueError, match="non-loopback"):
        grpc_load.run_h2load(request, 1, 1)


# --- bench.compare's choice of generator ------------------------------------------------------


def test_h2load_is_the_default_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_load, "h2load_path", lambda: "/usr/bin/h2load")
    assert compare.parse_args([]).grpc_load == "h2load"
    assert compare.parse_args(["--grpc-load", "python"]).grpc_load == "python"


def test_missing_h2load_falls_back_to_python_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(grpc_load, "h2load_path", lambda: None)
    assert compare.parse_args([]).grpc_load == "python"
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "h2load is not installed" in said[0]
    with pytest.raises(SystemExit):  # asked for by name: no silent fallback
        compare.parse_args(["--grpc-load", "h2load"])


def test_h2load_needs_channels_that_divide_every_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(grpc_load, "h2load_path", lambda: "/usr/bin/h2load")
    with pytest.raises(SystemExit):
        compare.parse_args(["--grpc-channels", "3"])
    assert compare.parse_args(["--grpc-channels", "3", "--grpc-load", "python"])


def test_the_settings_name_the_generator_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_load, "h2load_version", lambda: "h2load nghttp2/1.52.0")
    assert grpc_load.describe("h2load").startswith("h2load nghttp2/1.52.0 (closed loop")
    assert grpc_load.describe("python") == grpc_load.PYTHON_DESCRIPTION
