"""What the Ray cluster offers, for sizing trainers and actors: a worker or actor must fit on one node."""


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))


def largest_node_cpus() -> float:
    """CPUs of the biggest alive node (all CPUs on a one-node cluster)."""
    import ray

    sizes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return float(max(sizes, default=0.0)) or cluster_cpus()
