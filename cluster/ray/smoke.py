"""Smoke test + timings for the local Ray cluster started by cluster/ray/up.sh.

    .venv/bin/python cluster/ray/smoke.py [--jobs N] [--no-train] [--json PATH]

1. Jobs API: submits `python -c "import ray; ray.init(); print(ray.nodes())"` N times via
   JobSubmissionClient and measures submit->RUNNING and submit->SUCCEEDED.
2. Ray Train: a 2-worker TorchTrainer (gloo, CPU, resources_per_worker={"CPU": 1},
   placement_strategy="SPREAD") whose workers report their node id/name; checks the two workers ran on
   two distinct nodes, both from inside the workers and from the state API (ray.util.state.list_actors).
   Measures the time from fit() to the first line of the train function (worker group start).
Exit 1 if a check fails. Needs RAY_ADDRESS / RAY_API_SERVER_ADDRESS or the defaults below (and
RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH for a token-auth cluster: `source /tmp/trainctl-ray/env`).
The workers write their results to a temp dir on their own host: all nodes must share a filesystem
there (true for the local cluster and a one-host test SLURM; not for a real multi-host cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

GCS = os.environ.get("RAY_ADDRESS", "127.0.0.1:6379")
API = os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265")
if GCS.startswith("http"):  # RAY_ADDRESS set to the dashboard URL
    API, GCS = GCS, "127.0.0.1:6379"


def check_jobs(n: int) -> dict:
    from ray.job_submission import JobStatus, JobSubmissionClient

    t0 = time.perf_counter()
    client = JobSubmissionClient(API)
    t_client = time.perf_counter() - t0
    runs = []
    for _ in range(n):
        t0 = time.perf_counter()
        sid = client.submit_job(
            entrypoint='python -c "import ray, sys; ray.init(); print(sys.executable); print(ray.nodes())"'
        )
        t_submitted = time.perf_counter() - t0
        t_running = None
        while True:
            st = client.get_job_status(sid)
            if st == JobStatus.RUNNING and t_running is None:
                t_running = time.perf_counter() - t0
            if st.is_terminal():
                break
            time.sleep(0.02)
        t_done = time.perf_counter() - t0
        logs = client.get_job_logs(sid)
        info = client.get_job_info(sid)
        runs.append(
            {
                "submission_id": sid,
                "status": str(st.value),
                "submit_call_s": round(t_submitted, 3),
                "submit_to_running_s": round(t_running, 3) if t_running is not None else None,
                "submit_to_terminal_s": round(t_done, 3),
                "entrypoint_python": next((ln for ln in logs.splitlines() if ln.endswith("python")), None),
                "driver_node_id": (info.driver_node_id or "")[:12],
            }
        )
        print(f"job {sid}: {st.value}; {runs[-1]}", flush=True)
    return {"client_connect_s": round(t_client, 3), "runs": runs}


def train_fn(config):  # runs in each Ray Train worker
    t_first_line = time.time()

    import ray
    import ray.train
    import torch
    import torch.distributed as dist

    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    name = next((n.get("NodeName") for n in ray.nodes() if n["NodeID"] == node_id), None)
    t = torch.ones(1) * (ray.train.get_context().get_world_rank() + 1)
    dist.all_reduce(t)  # the gloo group works across the two raylets
    ray.train.report({"rank": ray.train.get_context().get_world_rank(), "allreduce": float(t.item())})
    # every rank writes one line; the driver reads them back (only rank 0's metrics survive report())
    with open(os.path.join(config["out"], f"rank{ray.train.get_context().get_world_rank()}.json"), "w") as f:
        json.dump(
            {
                "rank": ray.train.get_context().get_world_rank(),
                "node_id": node_id,
                "node_name": name,
                "actor_id": ctx.get_actor_id(),
                "python": sys.executable,
                "allreduce": float(t.item()),
                "t_first_line": t_first_line,
            },
            f,
        )


def check_train() -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.state import list_actors, list_nodes

    t0 = time.perf_counter()
    ray.init(address=GCS, logging_level="WARNING")
    t_init = time.perf_counter() - t0
    out = tempfile.mkdtemp(prefix="trainctl-ray-smoke-")  # same host: every node sees it
    trainer = TorchTrainer(
        train_fn,
        train_loop_config={"out": out},
        scaling_config=ScalingConfig(
            num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}, placement_strategy="SPREAD"
        ),
        run_config=RunConfig(name=f"smoke-{int(time.time())}", storage_path=os.path.join(out, "storage")),
    )
    t_fit = time.time()
    t0 = time.perf_counter()
    result = trainer.fit()
    t_total = time.perf_counter() - t0
    ranks = []
    for r in range(2):
        with open(os.path.join(out, f"rank{r}.json")) as f:
            ranks.append(json.load(f))
    first_line = min(r["t_first_line"] for r in ranks)

    # Which node did each actor run on, according to the state API (dashboard)?
    nodes = {n.node_id: n.node_name for n in list_nodes(address=API)}
    actors = list_actors(address=API, limit=1000, detail=True)
    by_id = {a.actor_id: a for a in actors}
    for r in ranks:
        a = by_id.get(r["actor_id"])
        r["state_api_class"] = a.class_name if a else None
        r["state_api_node_name"] = nodes.get(a.node_id) if a else None
        r["state_api_node_matches"] = bool(a and a.node_id == r["node_id"])
    train_actors = sorted(
        {(a.class_name, nodes.get(a.node_id)) for a in actors if "Train" in a.class_name or "Worker" in a.class_name}
    )
    ray.shutdown()
    shutil.rmtree(out, ignore_errors=True)
    for r in ranks:
        print(
            f"rank {r['rank']}: node {r['node_id'][:12]} ({r['node_name']}), state API says "
            f"{r['state_api_class']} on {r['state_api_node_name']}, python {r['python']}, allreduce {r['allreduce']}",
            flush=True,
        )
    return {
        "ray_init_s": round(t_init, 3),
        "fit_total_s": round(t_total, 3),
        "fit_to_first_train_line_s": round(first_line - t_fit, 3),
        "distinct_nodes": len({r["node_id"] for r in ranks}),
        "ranks": ranks,
        "actors_seen": train_actors,
        "error": repr(result.error) if result.error else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    report: dict = {}
    ok = True
    if args.jobs:
        report["jobs"] = check_jobs(args.jobs)
        ok &= all(r["status"] == "SUCCEEDED" for r in report["jobs"]["runs"])
    if not args.no_train:
        report["train"] = check_train()
        t = report["train"]
        ok &= t["distinct_nodes"] == 2 and t["error"] is None
        ok &= all(r["state_api_node_matches"] and r["allreduce"] == 3.0 for r in t["ranks"])
    print(json.dumps(report, indent=1, default=str))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    print("SMOKE", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
