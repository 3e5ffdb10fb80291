"""The ``eta1`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import timezone

from elastic_transport import TransportError
from elasticsearch import ApiError

from sidecar.errors import SidecarError

log = logging.getLogger("sidecar")

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config file, or the old service's INI file (default: built-in defaults)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level for stderr (default: INFO)")


def _setup(args: argparse.Namespace):
    from sidecar.config import load_config
    from sidecar.logsetup import setup_logging

    config = load_config(args.config)
    setup_logging(args.log_level, config.secrets())
    return config


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon."""
    from sidecar.daemon import Daemon
    from sidecar.esclient import make_client

    config = _setup(args)
    es = make_client(config.cluster)
    daemon = Daemon(config, es, dry_run=args.dry_run)
    daemon.install_signal_handlers()
    server = None
    if config.api.enabled and not args.until_idle:
        from sidecar.api import start_background_server

        server = start_background_server(config, es, daemon.metrics, detector_source=lambda: daemon.detector)
    try:
        totals = daemon.run(until_idle=args.until_idle)
    finally:
        if server is not None:
            server.shutdown()
    print(f"this run: flows read: {totals.flows}, unusable: {totals.unusable}, alerts written: "
          f"{totals.alerts_created}, already present: {totals.alerts_existing}, dead-lettered: {totals.dead_lettered}")
    if args.dry_run:
        print(f"alerts a real run would write: {sum(totals.by_signature.values())} (nothing was stored)")
        for signature, count in sorted(totals.by_signature.items(), key=lambda item: (-item[1], item[0])):
            print(f"{count:8d}  {signature}")
    elif args.until_idle:
        _print_alert_index_summary(es, config)
    return EXIT_OK


def _print_alert_index_summary(es, config) -> None:
    """Print the alerts stored in the alert indices by signature (they include earlier runs)."""
    from sidecar.alerts import alert_template

    pattern = alert_template(config.alerts.index)["index_patterns"][0]
    try:
        es.indices.refresh(index=pattern, allow_no_indices=True, ignore_unavailable=True)
        response = es.search(
            index=pattern, size=0, allow_no_indices=True, ignore_unavailable=True,
            aggs={"signatures": {"terms": {"field": "alert.signature", "size": 100}}},
        )
    except (TransportError, ApiError) as error:
        log.warning("could not summarise the alerts in %s: %s", pattern, error)
        return
    buckets = response.get("aggregations", {}).get("signatures", {}).get("buckets", [])
    total = sum(bucket["doc_count"] for bucket in buckets)
    print(f"alerts stored in {pattern}: {total}")
    for bucket in buckets:
        print(f"{bucket['doc_count']:8d}  {bucket['key']}")


def cmd_scan(args: argparse.Namespace) -> int:
    """Run detection once over one index and window."""
    from sidecar.esclient import make_client
    from sidecar.metrics import Metrics
    from sidecar.pipeline import load_detector, make_sink
    from sidecar.scan import run_scan, terminal_progress
    from sidecar.timeutil import parse_time

    config = _setup(args)
    try:
        start = parse_time(args.start, default_tz=timezone.utc)
        end = parse_time(args.end, default_tz=timezone.utc)
    except ValueError as error:
        raise SidecarError(f"--start/--end: {error}") from None
    if start >= end:
        raise SidecarError(f"--start {args.start} is not before --end {args.end}; swap them")
    from sidecar.api_validation import check_index_name

    check_index_name(args.index)
    es = make_client(config.cluster)
    if not es.indices.exists(index=args.index, allow_no_indices=False, ignore_unavailable=False):
        raise SidecarError(f"index {args.index!r} not found; list flow indices with GET _cat/indices/{config.source.index}")
    detector = load_detector(config)
    report = run_scan(
        es, config, detector, make_sink(es, dry_run=args.dry_run), Metrics(),
        index=args.index, start=start, end=end,
        keep_documents=config.api.max_alerts_returned if args.json else 0,
        progress=terminal_progress(),
    )
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
        return EXIT_OK
    print(f"flows read: {report.flows}, unusable: {report.unusable}, alerts: {report.alerts} "
          f"({report.alerts_created} new, {report.alerts_existing} already present)")
    for signature, count in sorted(report.by_signature.items(), key=lambda item: (-item[1], item[0])):
        print(f"{count:8d}  {signature}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Load everything, connect, and check the model's features against the source mapping."""
    from sidecar.check import run_check

    config = _setup(args)
    return EXIT_OK if run_check(config, out=sys.stdout) else EXIT_PROBLEM


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate rules (all problems at once) and, if given, the model."""
    from sidecar.config import load_config
    from sidecar.rules import load_rules

    config = load_config(args.config)
    rules_path = args.rules or str(config.resolve(config.rules))
    problems = 0
    try:
        rules = load_rules(rules_path, collect_errors=True)
    except SidecarError as error:
        print(error)
        return EXIT_PROBLEM
    print(f"{rules_path}: {len(rules.rules)} rules OK")
    model_path = args.model or str(config.resolve(config.model))
    try:
        from sidecar.model import load_model

        model = load_model(model_path)
        rules.check_classes(model.classes)
        print(f"{model_path}: {len(model.features)} features, classes {list(model.classes)}; every class has a rule")
    except SidecarError as error:
        print(error)
        problems += 1
    return EXIT_OK if problems == 0 else EXIT_PROBLEM


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the HTTP API."""
    from sidecar.api import serve

    if args.port is not None and not 0 <= args.port <= 65535:
        raise SidecarError(f"--port {args.port} is not a TCP port; use 1-65535, or 0 for any free port")
    config = _setup(args)
    return serve(config, host=args.host, port=args.port)


def _delegate(module: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        import importlib

        return int(importlib.import_module(module).main(list(argv)) or 0)

    return run


# Subcommands whose modules parse their own arguments.
DELEGATED = {
    "load": ("sidecar.loader", "bulk-load CICFlowMeter CSV files into a flow index"),
    "train": ("convert.train", "train the XGBoost model on labelled flows"),
    "convert": ("convert.export", "export an XGBoost model to ONNX, checking parity first"),
}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="eta1", description="Detect network attacks in flow records stored in Elasticsearch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon: poll flows, classify, write alerts, checkpoint")
    _add_common(run)
    run.add_argument("--until-idle", action="store_true", help="exit after the first polling cycle that finds no new flows")
    run.add_argument("--dry-run", action="store_true", help="classify and log, but write no alerts")
    run.set_defaults(handler=cmd_run)

    scan = sub.add_parser("scan", help="detect once over one index and time window, then exit")
    _add_common(scan)
    scan.add_argument("--index", required=True, help="flow index to read")
    scan.add_argument("--start", required=True, help="window start, ISO-8601 (no offset means UTC)")
    scan.add_argument("--end", required=True, help="window end (exclusive), ISO-8601")
    scan.add_argument("--dry-run", action="store_true", help="write no alerts")
    scan.add_argument("--json", action="store_true", help="print the report and alert documents as JSON")
    scan.set_defaults(handler=cmd_scan)

    check = sub.add_parser("check", help="load config, model and rules, connect, check the index mapping")
    _add_common(check)
    check.set_defaults(handler=cmd_check)

    validate = sub.add_parser("validate", help="validate rules.yaml (every problem at once) and the model")
    validate.add_argument("--config", "-c", help="config file naming the rules and model paths")
    validate.add_argument("--rules", help="rules file (default: from the config)")
    validate.add_argument("--model", help="ONNX model (default: from the config)")
    validate.set_defaults(handler=cmd_validate)

    serve = sub.add_parser("serve", help="serve the on-demand detection HTTP API")
    _add_common(serve)
    serve.add_argument("--host", help="listen address (default: api.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: api.port, 5000)")
    serve.set_defaults(handler=cmd_serve)

    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the eta1 command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        try:
            return _delegate(DELEGATED[argv[0]][0])(argv[1:])
        except SidecarError as error:
            print(f"eta1 {argv[0]}: error: {error}", file=sys.stderr)
            return EXIT_PROBLEM
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except SidecarError as error:
        from sidecar.logsetup import MASK

        print(f"eta1 {args.command}: error: {MASK.mask(str(error))}", file=sys.stderr)
        return EXIT_PROBLEM
    except (TransportError, ApiError) as error:
        from sidecar.logsetup import MASK

        print(f"eta1 {args.command}: error: Elasticsearch request failed: {MASK.mask(str(error))}; "
              "check cluster.hosts, credentials and that the cluster is up (eta1 check)", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
