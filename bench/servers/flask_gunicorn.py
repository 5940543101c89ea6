"""The tutorial baseline: Flask, model loaded at start, gunicorn with 2 workers x 4 threads.

Why these counts: gunicorn's docs suggest a few workers per core and Cloud Run's Flask
sample runs ``--workers 1 --threads 8``; one worker per core (2 here) with 4 threads each
(gthread: keep-alive, and a slow request does not block the worker's other connections)
is the middle of what tutorials ship. Each worker loads its own copy of the model and
predicts every request on its own: no batching. Frameworks keep their default threads
(2 each), so under load 2 workers x 4 threads compete for the 2 cores, as in the tutorial.
"""

from __future__ import annotations

from pathlib import Path

from bench.servers.base import VENVS, Endpoint, Server, instance, key_extract

WORKERS = 2
THREADS = 4


class FlaskGunicorn(Server):
    """Flask + gunicorn."""

    name = "flask"
    port = 8101
    venv = VENVS / "flask"
    packages = ("flask", "gunicorn", "tensorflow-cpu", "torch", "transformers", "numpy")
    configured_as = (
        f"gunicorn --workers {WORKERS} --threads {THREADS} (gthread), each worker loads the"
        " model at start"
    )
    batching = "none (one model call per request)"

    def argv(self, model: str, workdir: Path) -> list[str]:
        """gunicorn serving ``bench.servers.apps.flask_app:app``."""
        return [
            str(self.python().parent / "gunicorn"),
            f"--workers={WORKERS}",
            f"--threads={THREADS}",
            f"--bind=127.0.0.1:{self.port}",
            "--timeout=120",  # a model load on 2 busy cores must not trip the worker timeout
            "bench.servers.apps.flask_app:app",
        ]

    def endpoints(self, model: str) -> list[Endpoint]:
        """``POST /predict {"instances": [x]}`` -> ``{"predictions": [y]}``."""
        body = {"instances": [instance(model)]}
        return [Endpoint(self.name, "json", "/predict", body, key_extract("predictions", 0))]
