"""What the Ray cluster offers and what each stage asks of it: a trainer worker or actor must fit on one node."""

import ray

from components.config import UserError


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1))


def largest_node_cpus() -> float:
    """CPUs of the biggest alive node (all CPUs on a one-node cluster)."""
    sizes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return float(max(sizes, default=0.0)) or cluster_cpus()


def actor_plan(requested: int | None, pending: int, cpus_per_actor: float | None = None,
               per_gpu: int = 1) -> tuple[int, dict]:
    """How many Ray Data actors and what each asks for: `per_gpu` actors per GPU on GPU clusters unless
    `requested` (more actors than GPUs share them: 1/k GPU each, k actors per GPU), else the CPUs shared out with half
    a CPU left for the driver and Ray Data (one actor per 2 CPUs unless `requested`), at most one node's CPUs;
    `cpus_per_actor` fixes each CPU actor's share (and its torch threads) instead."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        n = max(1, min(requested or gpus * per_gpu, pending))
        packed = -(-n // gpus)  # actors placed per GPU (ceil): one asking 1/k GPU packs k to a GPU, so all get placed
        return n, {"num_gpus": 1 / packed, "num_cpus": 1}
    n, each = cpu_plan(cluster_cpus(), largest_node_cpus(), requested, pending, cpus_per_actor)
    return n, {"num_cpus": each}


def cpu_plan(cpus: float, node_cpus: float, requested: int | None, pending: int,
             cpus_per_actor: float | None = None) -> tuple[int, float]:
    """CPU actors and the CPUs of each: `cpus_per_actor` each, as many as fit, else one actor per 2 CPUs sharing the
    cluster's CPUs with half a CPU left for the driver and Ray Data; never more than one node's CPUs per actor."""
    if cpus_per_actor:
        if cpus_per_actor > node_cpus:
            raise UserError(f"{cpus_per_actor:g} CPUs per actor fit no node of this Ray cluster (the largest has "
                            f"{node_cpus:g}); lower --actor-cpus")
        return max(1, min(requested or max(1, int(cpus // cpus_per_actor)), pending)), cpus_per_actor
    n = max(1, min(requested or int(cpus // 2) or 1, pending))
    return n, min(max(0.5, (cpus - 0.5) / n), node_cpus)
