"""The project's command line: ``serve-app check``, ``serve-app kuberay render | apply |
status``, ``serve-app import-tfserving``.

Thin on purpose: parsing and printing here, the work in ``serve_app.kuberay``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from serve_app.fast_path import grpc_cap_check
from serve_app.fleet_file import check_fleet
from serve_app.kuberay import cluster, kustomize
from serve_app.kuberay.diff import object_diff
from serve_app.kuberay.render import RenderError, render_all, stale_files, write_rendered
from serve_app.kuberay.status import assess, describe, summary
from serve_app.tfserving_import import ImportRefused, import_tfserving, render

DEFAULT_NAME = "serve-app"
NOT_READY = 3  # `kuberay status`: the RayService exists but is not ready (or failed)
INTERRUPTED = 130  # Ctrl+C, as a shell reports SIGINT


class InputError(ValueError):
    """A file named on the command line cannot be used."""


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 1 on an expected failure (message on stderr), 2 on usage,
    3 when ``kuberay status`` finds the service not ready, 130 on Ctrl+C."""
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted{getattr(args, 'interrupted_hint', '')}", file=sys.stderr)
        return INTERRUPTED
    except (
        cluster.ClusterError,
        kustomize.KustomizeError,
        RenderError,
        InputError,
        ImportRefused,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _check(args: argparse.Namespace) -> int:
    try:
        document = yaml.safe_load(args.config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read {args.config}: {exc}") from None
    fleet = check_fleet(document)
    for problem in fleet.problems:
        print(f"error: {problem}", file=sys.stderr)
    # The environment Ray would start with here (make run's), against each ingress's limits.
    lines = [
        line
        for ingress, size in fleet.max_request_bytes.items()
        for line in grpc_cap_check(dict(os.environ), ingress, size)
    ]
    for line in lines:
        print(line, file=sys.stderr)
    if fleet.problems or any(line.startswith("error:") for line in lines):
        return 1
    print(
        f"{args.config}: ok ({len(fleet.ingresses)} ingress, {len(fleet.models)} models,"
        f" {len(fleet.pools)} pools)"
    )
    return 0


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
        cluster.require_rayservice_fields(api)
    dry_run = args.dry_run or args.diff
    applied = cluster.apply_objects(
        api, objects, args.namespace, dry_run=dry_run, force_conflicts=args.force_conflicts
    )
    if args.diff:
        diffs = [object_diff(a) for a in applied if a.action != "unchanged"]
        sys.stdout.write("".join(diffs) if diffs else "no changes\n")
        return 0
    for item in applied:
        print(f"{item.label} {item.action}{' (server dry run)' if dry_run else ''}", flush=True)
    if dry_run:
        return 0
    for item in (a for a in applied if a.kind == "RayService"):
        if args.wait_s > 0:
            args.interrupted_hint = (
                f": stopped waiting; the RayService keeps rolling out"
                f" (check: serve-app kuberay status -n {item.namespace} --name {item.name})"
            )
            current = cluster.wait_until_ready(
                api,
                item.name,
                item.namespace,
                args.wait_s,
                args.poll_s,
                lambda line: print(line, flush=True),
            )
        else:
            current = cluster.get_rayservice(api, item.name, item.namespace)
        print(describe(current, cluster.cluster_pods(api, current)))
    return 0


def _status(args: argparse.Namespace) -> int:
    api = cluster.connect(args.kubeconfig, args.context)
    cluster.require_rayservice_crd(api)
    rayservice = cluster.get_rayservice(api, args.name, args.namespace)
    pods = cluster.cluster_pods(api, rayservice)
    if args.output == "json":
        print(json.dumps(summary(rayservice, pods), indent=2))
    else:
        print(describe(rayservice, pods))
    return 0 if assess(rayservice).phase == "ready" else NOT_READY


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


def _import_tfserving(args: argparse.Namespace) -> int:
    model_config = _read_text(args.model_config)
    batching = _read_text(args.batching_config) if args.batching_config else None
    imported = import_tfserving(model_config, batching, args.file_system_poll_wait_seconds)
    text = render(imported, Path(args.model_config).name, args.http_port, args.grpc_port)
    for note in imported.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(text)
        print(f"{args.out}: written ({len(imported.args['models'])} models)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _read_text(filename: str) -> str:
    try:
        return Path(filename).read_text()
    except OSError as exc:
        raise InputError(f"cannot read {filename}: {exc.strerror}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve-app", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check", help="validate a fleet file (serve_config.yaml) as a whole, strictly"
    )
    check.add_argument("config", nargs="?", type=Path, default=Path("serve_config.yaml"))
    check.set_defaults(handler=_check)
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
        help="server-side apply an overlay's objects, wait until the RayService is ready",
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
    check = apply.add_mutually_exclusive_group()
    check.add_argument(
        "--dry-run",
        action="store_true",
        help="let the API server check and merge everything, store nothing (dryRun=All)",
    )
    check.add_argument(
        "--diff",
        action="store_true",
        help="print what the apply would change (live vs the server's dry run); apply nothing",
    )
    apply.add_argument(
        "--force-conflicts",
        action="store_true",
        help="take over fields that another field manager (kubectl edit, ...) changed",
    )
    apply.set_defaults(handler=_apply)

    status = actions.add_parser(
        "status",
        parents=[connection],
        help="print the RayService's Serve application status; exit 0 only when ready",
        description="Exit status: 0 ready, 3 not ready (or an application failed), 1 error.",
    )
    status.add_argument("--name", default=DEFAULT_NAME, help="RayService name (%(default)s)")
    status.add_argument("-n", "--namespace", default=DEFAULT_NAME, help="(%(default)s)")
    status.add_argument(
        "-o", "--output", choices=["text", "json"], default="text", help="(%(default)s)"
    )
    status.set_defaults(handler=_status)
    _add_import_tfserving(commands)
    return parser


def _add_import_tfserving(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "import-tfserving",
        help="turn a TF Serving model config (and batching parameters) into a serve_config.yaml",
    )
    command.add_argument(
        "--model-config",
        required=True,
        metavar="FILE",
        help="TF Serving's --model_config_file (a model_config_list text proto)",
    )
    command.add_argument(
        "--batching-config",
        metavar="FILE",
        help="TF Serving's --batching_parameters_file (BatchingParameters text proto)",
    )
    command.add_argument(
        "--file-system-poll-wait-seconds",
        type=float,
        default=1.0,
        help="TF Serving's flag of that name: how often to look for new versions; 0: never"
        " (%(default)s, TF Serving's default)",
    )
    command.add_argument(
        "--http-port", type=int, default=8000, help="http_options.port (%(default)s)"
    )
    command.add_argument(
        "--grpc-port",
        type=int,
        default=9000,
        help="grpc_options.port: TF Serving's gRPC services (%(default)s; TF Serving's --port)",
    )
    command.add_argument("-o", "--out", metavar="FILE", help="write here (default: stdout)")
    command.set_defaults(handler=_import_tfserving)


if __name__ == "__main__":
    sys.exit(main())
