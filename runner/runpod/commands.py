"""The runner's commands' RunPod parts: the live GPU table, and reconciling pods before a command.

Everything heavy is imported inside the functions: ``runner.cli`` imports this module only when a
RunPod key is set, and ``--help`` never."""

from __future__ import annotations

import json as jsonlib
import sys

#: Commands that reconcile RunPod pods with the state first (every command that reads or runs jobs).
RECONCILING = ("submit", "status", "list", "logs", "cancel", "watch", "cost", "resume")


def print_live_gpus(json: bool) -> None:
    """RunPod's live catalog: memory, on-demand and spot prices, minimum bid and stock (cached a minute)."""
    from runner.runpod.errors import RunPodError
    from runner.runpod.live_catalog import live_offers, rows

    try:
        offers, fetched = live_offers()
    except RunPodError as e:
        print(f"error: could not read RunPod's GPU catalog: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    table_rows = rows(offers)
    if json:
        print(jsonlib.dumps(table_rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from runner.view import ago

    table = Table(box=None, header_style="bold", title_justify="left",
                  title=f"RunPod GPU types (USD per GPU-hour, the lower of the two clouds; fetched {ago(fetched)})")
    for col in ("alias", "RunPod id", "VRAM", "on-demand", "spot", "min bid", "stock"):
        table.add_column(col, justify="left" if col in ("alias", "RunPod id", "stock") else "right")

    def money(value: float | None) -> str:
        return "-" if value is None else f"${value:.3f}"

    for r in table_rows:
        table.add_row(r["alias"] or "-", r["id"], f"{r['vram_gb']} GB", money(r["on_demand_per_hour"]),
                      money(r["spot_per_hour"]), money(r["minimum_bid_per_hour"]), r["stock"] or "-")
    Console(highlight=False, soft_wrap=True).print(table)


def reconcile_pods() -> None:
    """Terminate RunPod pods of ours that no active attempt owns (a runner killed at the wrong moment,
    an attempt whose pod outlived it) and say so on stderr. Only when a RunPod key is set and this
    state has ever launched a pod; RunPod being unreachable never stops the command."""
    from runner import paths
    from runner.runpod import configured

    if not configured() or not paths.db_path().exists() or not (paths.state_dir() / "runpod-owner").exists():
        return
    from runner.runpod.client import RunPodClient
    from runner.runpod.errors import RunPodError
    from runner.runpod.names import owner_id
    from runner.runpod.reconcile import reconcile
    from runner.state import State

    state = State(paths.db_path())
    try:
        reconcile(state, RunPodClient(), owner_id(), lambda message: print(f"runpod: {message}", file=sys.stderr))
    except RunPodError as e:
        print(f"runpod: could not check for pods left running ({e}); the next command tries again", file=sys.stderr)
    finally:
        state.close()
