"""Can a Ray cluster ever place a job's workers? Checked before submission: Ray Train would otherwise wait for an
impossible placement forever (submit.py check_cluster, driver.py)."""

from __future__ import annotations

GIB = 2**30


def placement_problem(address: str, per_worker: dict[str, float], workers: int) -> str | None:
    """infeasible() on the cluster's alive nodes, with those nodes named (None: the workers can be placed)."""
    from ray.util.state import list_nodes

    nodes = [(n.node_name or n.node_id[:12], dict(n.resources_total or {}))
             for n in list_nodes(address=address, detail=True, limit=10000, raise_on_missing_output=False)
             if n.state == "ALIVE"]
    why = infeasible([r for _, r in nodes], per_worker, workers)
    return f"{why} (alive nodes: {nodes_text(nodes) or 'none'})" if why else None


def infeasible(nodes: list[dict[str, float]], per_worker: dict[str, float], workers: int) -> str | None:
    """Why `workers` bundles of `per_worker` can never be placed on these nodes' total resources (None: they can).

    Exact for identical bundles: a node holds floor(min over resources of node / bundle) of them.
    """
    fits = 0
    for node in nodes:
        fits += min((int(node.get(k, 0.0) / v + 1e-9) for k, v in per_worker.items() if v > 0), default=workers)
    if fits >= workers:
        return None
    short = []
    for key, each in per_worker.items():
        need, have = each * workers, sum(n.get(key, 0.0) for n in nodes)
        if need > have + 1e-9:
            short.append(f"{amount(key, need)} {key} in all ({workers} x {amount(key, each)}), the cluster has "
                         f"{amount(key, have)}")
    detail = "; ".join(short) if short else (
        f"the totals suffice but no placement fits: {fits} of {workers} workers fit on the nodes")
    return f"needs {workers} workers of {bundle_text(per_worker)}: {detail}"


def amount(key: str, value: float) -> str:
    if key in ("memory", "object_store_memory"):
        return f"{value / GIB:.1f} GiB"
    return f"{value:g}"


def bundle_text(per_worker: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {amount(k, v)}" for k, v in per_worker.items()) + "}"


def nodes_text(nodes: list[tuple[str, dict[str, float]]]) -> str:
    return ", ".join(f"{name} ({bundle_text({k: r.get(k, 0.0) for k in ('CPU', 'GPU', 'memory')})})"
                     for name, r in nodes)
