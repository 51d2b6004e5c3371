"""MLflow system metrics on a run addressed by id: the "System metrics" tab of training and sampling runs.

MLflow's fluent ``log_system_metrics`` watches the active run of one process; adm logs to runs by id from Ray Train
workers and Ray Data actors (tracking.py), so each of those starts MLflow's own monitor (SystemMetricsMonitor) on the
run it works for: a thread that samples this machine (CPU, memory, disk, network with psutil; NVIDIA GPUs with pynvml
where present) every `interval` seconds and logs ``system/<name>`` (``system/<node>/<name>`` with a node name).
"""

import warnings

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor


class SystemMetrics:
    """MLflow's system metrics monitor on run `run_id` while this object lives (a `with` block, or until stop()).

    It continues after the run's last logged system step, so a restarted worker group (or a resumed run) logs no step
    twice, and stop() logs a last sample, so a span shorter than the interval is recorded too. `interval` 0: off. A
    monitor that cannot start or stop is a warning, never the failure of the work it watches."""

    def __init__(self, tracking_uri: str, run_id: str, interval: float, node: str | None = None):
        self.run_id, self.monitor = run_id, None
        if interval <= 0:
            return
        try:
            self.monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=True, node_id=node,
                                                tracking_uri=tracking_uri)
            self.monitor.start()
        except Exception as e:  # psutil missing, the server away at this moment
            self.monitor = None
            warnings.warn(f"MLflow system metrics of run {run_id} are off: {type(e).__name__}: {e}", stacklevel=2)

    def stop(self) -> None:
        """End the monitor's thread and log the samples since its last step as one more step."""
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as e:
            warnings.warn(f"the last MLflow system metrics of run {self.run_id} were not logged: "
                          f"{type(e).__name__}: {e}", stacklevel=2)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
