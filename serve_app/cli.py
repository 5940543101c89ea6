"""The project's command line: ``serve-app kuberay render | apply | status``.

Thin on purpose: parsing and printing here, the work in ``serve_app.kuberay``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from serve_app.kuberay import cluster, kustomize
from serve_app.kuberay.render import RenderError, render_all, stale_files, write_rendered
from serve_app.kuberay.status import describe

DEFAULT_NAME = "serve-app"


class InputError(ValueError):
    """A file named on the command line cannot be used."""


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 1 on an expected failure (message on stderr), 2 on usage."""
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except (cluster.ClusterError, kustomize.KustomizeError, RenderError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _render(args: argparse.Namespace) -> int:
    rendered = render_all(args.config, args.kuberay_dir)
    if args.check:
        stale = stale_files(rendered)
        for path in stale:
            print(
                f"stale: {os.path.relpath(path)} (run: serve-app kuberay render)", file=sys.stderr
            )
        return 1 if stale else 0
    written = set(write_rendered(rendered))
    for item in rendered:
        where = os.path.relpath(item.path)
        print(f"{where}: {'written' if item.path in written else 'up to date'}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    if args.kustomize:
        _refuse_stale_render(args)
        objects = kustomize.build(args.kustomize)
    else:
        objects = _read_manifests(args.filename)
    api = cluster.connect(args.kubeconfig, args.context)
    if any(o.get("kind") == "RayService" for o in objects):
        cluster.require_rayservice_crd(api)
    for line in cluster.apply_objects(api, objects, args.namespace):
        print(line, flush=True)
    for rayservice in (o for o in objects if o.get("kind") == "RayService"):
        name = rayservice["metadata"]["name"]
        namespace = rayservice["metadata"].get("namespace") or args.namespace or "default"
        if args.wait_s > 0:
            current = cluster.wait_until_ready(
                api, name, namespace, args.wait_s, args.poll_s, lambda line: print(line, flush=True)
            )
        else:
            current = cluster.get_rayservice(api, name, namespace)
        print(describe(current))
    return 0


def _status(args: argparse.Namespace) -> int:
    api = cluster.connect(args.kubeconfig, args.context)
    cluster.require_rayservice_crd(api)
    print(describe(cluster.get_rayservice(api, args.name, args.namespace)))
    return 0


def _refuse_stale_render(args: argparse.Namespace) -> None:
    """Applying an overlay whose generated Serve config lags serve_config.yaml would deploy a
    fleet that differs from the one that runs locally: refuse, and say how to fix it."""
    kuberay_dir = Path(args.kuberay_dir).resolve()
    if not Path(args.kustomize).resolve().is_relative_to(kuberay_dir):
        return
    stale = stale_files(render_all(args.config, kuberay_dir))
    if stale:
        names = ", ".join(str(p) for p in stale)
        raise RenderError(f"{names} differ from {args.config}: run `serve-app kuberay render`")


def _read_manifests(filename: str) -> list[dict]:
    """The objects in a YAML stream (``-`` for stdin)."""
    try:
        text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
        return [doc for doc in yaml.safe_load_all(text) if doc]
    except OSError as exc:
        raise InputError(f"cannot read {filename}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{filename}: not valid YAML: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve-app", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    kuberay = commands.add_parser("kuberay", help="deploy to Kubernetes with KubeRay")
    actions = kuberay.add_subparsers(required=True, metavar="ACTION")

    sources = argparse.ArgumentParser(add_help=False)
    sources.add_argument(
        "--config",
        type=Path,
        default=Path("serve_config.yaml"),
        help="the Serve config, single source of serveConfigV2 (%(default)s)",
    )
    sources.add_argument(
        "--kuberay-dir",
        type=Path,
        default=Path("kuberay"),
        help="the kustomize tree with serve-overrides.yaml files (%(default)s)",
    )
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    connection.add_argument("--context", help="kubeconfig context (default: the current one)")

    render = actions.add_parser(
        "render", parents=[sources], help="write serveConfigV2 patches from the Serve config"
    )
    render.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a generated file is stale"
    )
    render.set_defaults(handler=_render)

    apply = actions.add_parser(
        "apply",
        parents=[sources, connection],
        help="create or patch the RayService, wait until it is ready",
    )
    what = apply.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "-k",
        "--kustomize",
        type=Path,
        metavar="DIR",
        help="a kustomize directory, e.g. kuberay/overlays/prod",
    )
    what.add_argument("-f", "--filename", metavar="FILE", help="rendered manifests ('-': stdin)")
    apply.add_argument("-n", "--namespace", help="for objects that name none")
    apply.add_argument(
        "--wait-s",
        type=float,
        default=1200,
        help="seconds to wait until ready (new GPU nodes take minutes); 0: do not wait"
        " (%(default)s)",
    )
    apply.add_argument("--poll-s", type=float, default=5, help=argparse.SUPPRESS)
    apply.set_defaults(handler=_apply)

    status = actions.add_parser(
        "status", parents=[connection], help="print the RayService's Serve application status"
    )
    status.add_argument("--name", default=DEFAULT_NAME, help="RayService name (%(default)s)")
    status.add_argument("-n", "--namespace", default=DEFAULT_NAME, help="(%(default)s)")
    status.set_defaults(handler=_status)
    return parser


if __name__ == "__main__":
    sys.exit(main())
