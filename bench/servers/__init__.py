"""The servers of the comparison, by name, in the order they run."""

from __future__ import annotations

from bench.servers.base import Server
from bench.servers.flask_gunicorn import FlaskGunicorn
from bench.servers.kserve_peer import KServe
from bench.servers.litserve_peer import LitServe
from bench.servers.mlserver_peer import MLServer
from bench.servers.ours import ServeApp
from bench.servers.triton_peer import Triton

SERVERS: dict[str, Server] = {
    server.name: server
    for server in (ServeApp(), FlaskGunicorn(), MLServer(), LitServe(), KServe(), Triton())
}
OURS = ServeApp.name
BASELINE = FlaskGunicorn.name
PEERS = frozenset(SERVERS) - {OURS, BASELINE}  # the servers from PyPI
