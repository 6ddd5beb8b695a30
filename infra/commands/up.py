"""`keel up`: start the embedded stack and every Keel process, supervised, until Ctrl-C."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from engine.markets import MarketsConfigError, load_markets
from infra.clickhouse import owner_endpoint
from infra.embedded import port_in_use
from infra.health import HealthCheck
from infra.processes import all_processes
from infra.provision import STEPS
from infra.runstate import AlreadyRunning, RunLock, clear_state, write_state
from infra.settings import Settings
from infra.supervisor import TICK, Supervisor

EXIT_ALREADY_RUNNING = 3
START_TIMEOUT = 120.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", action="store_true",
                        help="also run the demo traffic generator (when registered)")
    parser.add_argument("--timeout", type=float, default=START_TIMEOUT,
                        help="seconds to wait for every component to be healthy")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        load_markets(settings.markets_file)
    except MarketsConfigError as exc:
        print(f"keel up: invalid markets config: {exc}", file=sys.stderr)
        return 1
    try:
        lock = RunLock(settings).acquire()
    except AlreadyRunning as exc:
        print(f"keel up: {exc}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    try:
        return _run_locked(args, settings)
    finally:
        clear_state(settings)
        lock.release()


def _run_locked(args: argparse.Namespace, settings: Settings) -> int:
    specs = all_processes(settings, demo=args.demo)
    busy = _busy_ports(settings)
    if busy:
        print("keel up: " + "; ".join(busy), file=sys.stderr)
        return 1
    began = time.monotonic()
    sup = Supervisor(settings, specs, on_healthy=STEPS,
                     on_change=lambda s: write_state(settings, _state(s, args.demo)))
    sup.install_signal_handlers()
    print(f"keel up: starting on {settings.data_dir} "
          f"({', '.join(s.name for s in specs) or 'external services only'})", flush=True)
    code = 0
    try:
        if not _external_ready(sup, settings, began + args.timeout):
            code = 1
        else:
            code = _supervise(sup, settings, began, args)
    finally:
        sup.stop_all()
        print("keel up: stopped", flush=True)
    return code


def _supervise(sup: Supervisor, settings: Settings, began: float,
               args: argparse.Namespace) -> int:
    announced = False
    while not sup.stopping:
        sup.step()
        if not announced and sup.all_healthy():
            announced = True
            print(_summary(settings, sup, time.monotonic() - began), flush=True)
        if not announced and time.monotonic() - began > args.timeout:
            print(_not_ready(sup, args.timeout), file=sys.stderr, flush=True)
            return 1
        time.sleep(TICK)
    return 0


def _external_ready(sup: Supervisor, settings: Settings, deadline: float) -> bool:
    """Services given by URL: wait until they answer, then provision them once."""
    checks = {"kafka": (not settings.embedded_kafka, HealthCheck("kafka", settings.bootstrap)),
              "postgres": (not settings.embedded_postgres,
                           HealthCheck("postgres", settings.postgres_dsn)),
              "clickhouse": (not settings.embedded_clickhouse,
                             HealthCheck("clickhouse", settings.clickhouse_dsn))}
    for name, (external, check) in checks.items():
        if not external:
            continue
        while True:
            result = check.run(timeout=2.0)
            if result.ok:
                break
            if sup.stopping or time.monotonic() > deadline:
                print(f"keel up: {name} at its configured URL is not healthy: {result.detail}",
                      file=sys.stderr)
                return False
            time.sleep(0.5)
        if name in STEPS:
            STEPS[name](settings)
    return True


def _busy_ports(settings: Settings) -> list[str]:
    wanted = [(settings.embedded_kafka, "kafka", "KEEL_EMBEDDED_KAFKA_PORT",
               settings.embedded_kafka_port),
              (settings.embedded_postgres, "postgres", "KEEL_EMBEDDED_POSTGRES_PORT",
               settings.embedded_postgres_port),
              (settings.embedded_clickhouse, "clickhouse", "KEEL_EMBEDDED_CLICKHOUSE_PORT",
               settings.embedded_clickhouse_port)]
    # A busy port means another stack on another data dir: refuse rather than answer
    # health checks with someone else's broker.
    return [f"port {port} for embedded {name} is already in use (another Keel on a different "
            f"data dir?); set {var}" for on, name, var, port in wanted if on and port_in_use(port)]


def _state(sup: Supervisor, demo: bool) -> dict:
    settings = sup.settings
    return {
        "supervisor_pid": os.getpid(),
        "data_dir": str(settings.data_dir.resolve()),
        "demo": demo,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "endpoints": _endpoints(settings),
        "processes": {
            c.name: {"pid": c.proc.pid if c.proc else None, "service": c.spec.service,
                     "healthy": c.healthy, "restarts": c.restarts, "last_error": c.last_error,
                     "health": c.spec.health.to_json() if c.spec.health else None,
                     "log": str((settings.log_dir / f"{c.name}.log").resolve())}
            for c in sup.children.values()},
    }


def _endpoints(settings: Settings) -> dict:
    return {
        "kafka": settings.bootstrap,
        # A configured URL may carry a password: the state file names it, nothing more.
        "postgres": settings.postgres_dsn if settings.embedded_postgres else "(KEEL_POSTGRES_URL)",
        "clickhouse": (owner_endpoint(settings) if settings.embedded_clickhouse
                       else "(KEEL_CLICKHOUSE_URL)"),
        "metrics_port_base": settings.metrics_port_base,
        "gateway": f"http://{settings.gateway_host}:{settings.gateway_port}",
        "log_dir": str(settings.log_dir.resolve()),
    }


def _summary(settings: Settings, sup: Supervisor, elapsed: float) -> str:
    ep = _endpoints(settings)
    kafka_kind = "embedded tansu, topics in memory" if settings.embedded_kafka else "external"
    ch = (f"{ep['clickhouse']}  (owner of {Path(settings.clickhouse_dsn[7:])})"
          if settings.embedded_clickhouse else ep["clickhouse"])
    keel = [c.name for c in sup.children.values() if not c.spec.service]
    lines = [
        f"keel up: every component healthy in {elapsed:.1f}s",
        f"  kafka       {ep['kafka']}  ({kafka_kind})",
        f"  postgres    {ep['postgres']}",
        f"  clickhouse  {ch}",
        f"  processes   {', '.join(keel) if keel else '(none registered yet)'}",
        f"  metrics     http://127.0.0.1:{settings.metrics_port_base}/metrics and up, "
        "one port per process",
        f"  gateway     {ep['gateway']}",
        f"  logs        {ep['log_dir']}/<process>.log",
        "  keel status shows health; Ctrl-C stops everything",
    ]
    return "\n".join(lines)


def _not_ready(sup: Supervisor, timeout: float) -> str:
    lines = [f"keel up: not every component was healthy after {timeout:.0f}s:"]
    for c in sup.children.values():
        if not (c.healthy and c.alive):
            log_path = sup.log_dir / f"{c.name}.log"
            lines.append(f"  {c.name}: {c.last_error or 'starting'} (log: {log_path})")
            lines.extend(f"    | {line}" for line in _tail(log_path, 5))
    return "\n".join(lines)


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []
