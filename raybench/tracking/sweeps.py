"""Which sweep a leaderboard shows: complete sweeps only, unless asked.

Every run starts tagged `sweep_complete=no`; the driver sets `yes` on all runs of its (sweep,
method) once every trial ended (raybench.sweep.driver.finish). A sweep stopped by Ctrl-C, SIGTERM,
a crash or a kill keeps `no`, so it is never silently "the latest": the leaderboard names it and
shows the latest complete sweep instead (`--sweep-id` shows it anyway). Runs from before the tag
existed count as complete."""
from __future__ import annotations

from raybench.tracking.store import client, search_runs

COMPLETE_TAG = "sweep_complete"


def is_complete(run) -> bool:
    return run.data.tags.get(COMPLETE_TAG, "yes") != "no"


def mark_complete(uri: str, experiment_id: str, sweep_id: str, method: str) -> int:
    """Tag every run of this sweep and method (finals included) complete; returns how many."""
    c = client(uri)
    runs = search_runs(c, [experiment_id], {"sweep_id": sweep_id, "method": method})
    for run in runs:
        if run.data.tags.get(COMPLETE_TAG) != "yes":
            c.set_tag(run.info.run_id, COMPLETE_TAG, "yes")
    return len(runs)


def _sweeps(runs) -> dict[str, dict]:
    """sweep id -> {"start": its latest run start (ms), "complete": every run of it complete}."""
    out: dict[str, dict] = {}
    for r in runs:
        sid = r.data.tags.get("sweep_id")
        if not sid:
            continue
        entry = out.setdefault(sid, {"start": 0, "complete": True})
        entry["start"] = max(entry["start"], r.info.start_time or 0)
        entry["complete"] = entry["complete"] and is_complete(r)
    return out


def latest_sweep_id(runs, complete_only: bool = True) -> str | None:
    """The sweep whose runs started last (of the complete ones, by default)."""
    sweeps = {k: v for k, v in _sweeps(runs).items() if v["complete"] or not complete_only}
    return max(sweeps, key=lambda k: sweeps[k]["start"]) if sweeps else None


def pick_sweeps(runs, sweep_id: str | None = None, all_sweeps: bool = False) -> tuple[list, list[str]]:
    """(the runs to rank, notes to print). Default: per dataset, its latest complete sweep; a newer
    incomplete one is named in a note. `sweep_id`: that sweep; `all_sweeps`: every sweep."""
    if all_sweeps:
        return list(runs), []
    if sweep_id:
        kept = [r for r in runs if r.data.tags.get("sweep_id") == sweep_id]
        if kept and not all(is_complete(r) for r in kept):
            return kept, [f"sweep {sweep_id} did not complete (interrupted, killed or crashed): its figures "
                          f"cover the trials that ended"]
        return kept, []
    by_dataset: dict[str, list] = {}
    for r in runs:
        by_dataset.setdefault(r.data.tags.get("dataset", "?"), []).append(r)
    kept, notes = [], []
    for dataset, members in sorted(by_dataset.items()):
        chosen = latest_sweep_id(members)
        sweeps = _sweeps(members)
        newer = sorted(k for k, v in sweeps.items() if not v["complete"]
                       and (chosen is None or v["start"] > sweeps[chosen]["start"]))
        for sid in newer:
            notes.append(f"{dataset}: sweep {sid} did not complete (interrupted, killed or crashed) and is not "
                         f"shown; `--sweep-id {sid}` shows what it finished, `--resume --sweep-id {sid}` finishes it")
        kept += [r for r in members if r.data.tags.get("sweep_id") == chosen]
    return kept, notes
