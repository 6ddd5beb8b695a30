"""`keel status`: the health of every component; exit 0 only when all are healthy."""
from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor

from infra.clickhouse import owner_endpoint
from infra.health import Health, HealthCheck
from infra.runstate import read_state, supervisor_running
from infra.settings import Settings

SERVICES = ("kafka", "postgres", "clickhouse")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per health check")


def run(args: argparse.Namespace, settings: Settings) -> int:
    running = supervisor_running(settings)
    state = read_state(settings) if running else None
    procs = (state or {}).get("processes", {})
    rows = [(name, *_service(name, settings, procs.get(name))) for name in SERVICES]
    rows += [(name, *_keel_process(info))
             for name, info in procs.items() if not info.get("service")]
    # Probes wait on the network; run them side by side so status answers quickly.
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda row: _judge(row, args.timeout), rows))
    healthy = all(r["healthy"] for r in results)
    if args.json:
        print(json.dumps({"supervisor": running, "healthy": healthy, "components": results},
                         indent=2))
    else:
        sup = (f"keel up running (pid {state.get('supervisor_pid')}) on {settings.data_dir}"
               if running and state else f"keel up is not running on {settings.data_dir}")
        print(sup)
        print(_table(results))
    return 0 if healthy else 1


def _service(name: str, settings: Settings, info: dict | None):
    """(pid, restarts, check) for a service; embedded ones must also be our live child."""
    embedded = getattr(settings, f"embedded_{name}")
    if not embedded:
        check = {"kafka": HealthCheck("kafka", settings.bootstrap),
                 "postgres": HealthCheck("postgres", settings.postgres_dsn),
                 "clickhouse": HealthCheck("clickhouse", settings.clickhouse_dsn)}[name]
        return None, None, check, "external"
    if info is None:
        return None, None, None, "embedded, not started"
    check = HealthCheck.from_json(info.get("health"))
    if name == "clickhouse" and check is None:
        check = HealthCheck("http", owner_endpoint(settings) + "/ping")
    return info.get("pid"), info.get("restarts"), check, "embedded"


def _keel_process(info: dict):
    return info.get("pid"), info.get("restarts"), HealthCheck.from_json(info.get("health")), ""


def _judge(row, timeout: float) -> dict:
    name, pid, restarts, check, where = row
    if where == "embedded, not started":
        result = Health(False, "not running (start it with keel up)")
    elif pid is not None and not _alive(pid):
        result = Health(False, f"pid {pid} is not running")
    elif pid is None and where != "external":
        result = Health(False, "not running (waiting to restart)")
    elif check is None:
        result = Health(True, "running")
    else:
        result = check.run(timeout)
    detail = f"{where}: {result.detail}" if where and where != "embedded" else result.detail
    detail = " ".join(detail.split())  # driver errors span lines; the table wants one
    return {"name": name, "healthy": result.ok, "pid": pid, "restarts": restarts,
            "detail": detail}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _table(results: list[dict]) -> str:
    header = ("component", "health", "pid", "restarts", "detail")
    lines = [header] + [(r["name"], "healthy" if r["healthy"] else "UNHEALTHY",
                         str(r["pid"] or "-"), str(r["restarts"] if r["restarts"] is not None
                                                    else "-"), r["detail"])
                        for r in results]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    out = []
    for line in lines:
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line[:4]))
                   + "  " + line[4])
    return "\n".join(out)

