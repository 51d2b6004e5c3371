"""What the Ray cluster offers and what each stage asks of it: a trainer worker or actor must fit on one node."""

import contextlib
import threading
from concurrent.futures import CancelledError, Future

import ray

from components.config import UserError
from components.config.grid import grid_cells
from components.config.kinds import kind as network_kind
from components.config.kinds import preset_kinds
from components.training import ema_initial_share


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


# --- what each stage asks for ----------------------------------------------------------------------------------------
def cpu_slots(cpus: float) -> int:
    """How many CPU trainer workers share `cpus` at once: one per whole CPU, since a worker's torch threads are whole.
    More would run more threads than cores (2 cores, the default run's 3 trainers: three 1-thread workers at once,
    train stage 207 s; two at once and the third when one finished, 165 s, the same weights: bench/RESULTS.md)."""
    return max(1, int(cpus))


def _fixed_cpus(cfgs: dict) -> float:
    return sum(c.cpus_per_worker * c.num_workers for c in cfgs.values() if c.cpus_per_worker > 0)


def cpu_slot_needs(preset, kinds, cluster_cpus: float) -> tuple[int, dict]:
    """(slots, kind -> slots it holds while it trains) for the trainers that share the CPUs out (CPU workers without
    cpus_per_worker): a trainer holds one slot per worker. The driver starts them in `kinds` order as slots free."""
    cfgs = {k: network_kind(k).train_config(preset) for k in kinds}
    slots = cpu_slots(cluster_cpus - _fixed_cpus(cfgs))
    return slots, {k: min(c.num_workers, slots) for k, c in cfgs.items()
                   if not c.use_gpu and c.cpus_per_worker <= 0}


def worker_resources(preset, kinds, cluster_cpus: float, node_cpus: float | None = None) -> dict:
    """CPUs per trainer worker: `cpus_per_worker` where set; otherwise, for CPU workers, the cluster's CPUs shared
    out among the workers that run at once (all of them, or cpu_slots when there are more workers than CPUs), with
    half a CPU left for Ray Data (2 cores, 3 trainers: 0.75 each, two at once), never more than the largest node has,
    since a worker runs on one node; GPU workers take 1 CPU."""
    cfgs = {k: network_kind(k).train_config(preset) for k in kinds}
    slots, needs = cpu_slot_needs(preset, kinds, cluster_cpus)
    workers = min(sum(cfgs[k].num_workers for k in needs), slots)
    left = cluster_cpus - _fixed_cpus(cfgs)
    per_worker = min(max(0.1, (left - 0.5) / workers), node_cpus or cluster_cpus) if workers else 1.0
    return {k: c.cpus_per_worker if c.cpus_per_worker > 0 else 1.0 if c.use_gpu else round(per_worker, 2)
            for k, c in cfgs.items()}


class CpuSlots:
    """The CPU slots of the trainers that share the cluster's CPUs (cpu_slot_needs): each trainer waits, in
    its driver thread, until the trainers before it in `order` have started and it can hold its slots. What happened
    is kept: `waiting` and `holding` now, `started_after[kind]` the trainer whose finish freed the slots a waiting
    trainer started in (None: it started at once); `wait_for` lets a caller block until the gate reaches a state."""

    def __init__(self, slots: int, needs: dict, order):
        self.free, self.needs = slots, needs
        self.queue = [k for k in order if k in needs]
        self.closed = False
        self.waiting, self.holding, self.started_after = set(), set(), {}
        self._last_finished = None
        self._changed = threading.Condition()

    def close(self) -> None:
        """No more starts (Ctrl-C): a trainer still waiting for its slots raises CancelledError instead of starting."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:
        """Block until predicate(self) holds (checked at every change of the gate), or `timeout` seconds pass."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def _can_start(self, kind: str) -> bool:
        return self.queue[0] == kind and self.free >= self.needs[kind]

    @contextlib.contextmanager
    def held(self, kind: str):
        if kind not in self.needs:  # GPU workers, or cpus_per_worker set: Ray places them as asked
            yield
            return
        with self._changed:
            waited = not self._can_start(kind)
            self.waiting.add(kind)
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.closed or self._can_start(kind))
            self.waiting.discard(kind)
            if self.closed:
                self._changed.notify_all()
                raise CancelledError(f"{kind} never started: the stage was stopped while it waited for a CPU slot")
            self.queue.pop(0)
            self.free -= self.needs[kind]
            self.holding.add(kind)
            self.started_after[kind] = self._last_finished if waited else None
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self.free += self.needs[kind]
                self.holding.discard(kind)
                self._last_finished = kind
                self._changed.notify_all()

    def start(self, kind: str, fn, *args) -> Future:
        """fn(*args) in a daemon thread (so an interrupted driver can exit without waiting for it) once `kind` holds
        its slots; its result or exception comes through the Future."""
        future = Future()

        def target():
            try:
                with self.held(kind):
                    future.set_result(fn(*args))
            except BaseException as e:  # handed to the caller through the future
                future.set_exception(e)

        threading.Thread(target=target, name=f"fit-{kind}", daemon=True).start()
        return future


def first_wave(preset, kinds, cluster_cpus: float) -> list:
    """The trainers that start at once; the others wait for CPU slots (cpu_slot_needs)."""
    slots, needs = cpu_slot_needs(preset, kinds, cluster_cpus)
    started, blocked = [], False
    for kind in kinds:
        if kind in needs:
            blocked = blocked or needs[kind] > slots  # in order: no CPU trainer overtakes a waiting one
            if blocked:
                continue
            slots -= needs[kind]
        started.append(kind)
    return started


def trainer_slots(preset, kinds, cluster_cpus: float) -> tuple[CpuSlots, list]:
    """The train stage's CPU slot gate, and the trainers that start at once."""
    return CpuSlots(*cpu_slot_needs(preset, kinds, cluster_cpus), kinds), first_wave(preset, kinds, cluster_cpus)


def train_plan(preset, kinds, cluster_cpus: float) -> dict:
    """What each trainer will ask Ray for (for --dry-run and the logs)."""
    cpus = worker_resources(preset, kinds, cluster_cpus)
    at_once = first_wave(preset, kinds, cluster_cpus)
    out = {}
    for k in kinds:
        cfg = network_kind(k).train_config(preset)
        per_worker = {"CPU": cpus[k], **({"GPU": 1} if cfg.use_gpu else {})}
        out[k] = {"num_workers": cfg.num_workers, "resources_per_worker": per_worker, "steps": cfg.steps,
                  "batch_size_per_worker": cfg.batch_size,
                  "starts": "at once" if k in at_once else "when CPU slots free",
                  **({"ema_init_share": {f"{r:g}": round(ema_initial_share(cfg, r), 4) for r in cfg.ema_rate}}
                     if cfg.ema_rate else {})}
    return out


def stage_resources(preset, cluster_cpus: float) -> dict:
    """What each stage of `adm run` asks Ray for (for --dry-run)."""
    s = preset.sample
    shards = -(-len(grid_cells(s.samplers, s.guidance_scales, s.guidance_intervals)) * s.num_samples // s.batch_size)
    on_cpu = cpu_plan(cluster_cpus, cluster_cpus, None, shards, s.actor_cpus)
    at_most = cpu_plan(cluster_cpus, cluster_cpus, None, 2**31)
    plan = {"ingest": {"driver": "local threads"}, "train": train_plan(preset, preset_kinds(preset), cluster_cpus),
            "sample": {"actors_per_gpu": s.actors_per_gpu, "on_cpu": {"actors": on_cpu[0], "CPU_each": on_cpu[1]}},
            "evaluate": {"actors_per_gpu": 1, "on_cpu": {"actors_at_most": at_most[0], "CPU_each": at_most[1]}},
            "register": {"driver": "MLflow registry calls"}}
    if preset.upsample is not None:  # a cascade: the upsample stage, between sample and evaluate
        u = preset.upsample
        cells = len(u.cells) or 2  # none named: the unguided and the champion cell
        on_cpu = cpu_plan(cluster_cpus, cluster_cpus, None, -(-cells * s.num_samples // u.batch_size), u.actor_cpus)
        plan["upsample"] = {"actors_per_gpu": u.actors_per_gpu, "on_cpu": {"actors": on_cpu[0],
                                                                           "CPU_each": on_cpu[1]}}
    return plan

