"""Bounded probes of what a command needs from outside, run before any work starts: the Ray cluster that `ray.init()`
would join (Ray itself waits without limit for a GCS that is not there) and the filesystem driver of a URL (s3://
without s3fs fails only when a stage first writes). The MLflow probe is tracking.check_tracking."""

import os
import socket

import fsspec

from components.config import UserError

PROBE_TIMEOUT_S = 3.0  # a live service on a reachable host answers a TCP connect in milliseconds


def check_ray_address(address: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """The cluster `address` (default: $RAY_ADDRESS) names accepts connections, or a UserError naming it and the fix;
    no address, `auto` or `local` start or find a local instance and need no probe."""
    name = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address in ("", "auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{name}={address} is not HOST:PORT (e.g. 10.0.0.5:6379, or ray://HOST:10001); fix it or "
                        "unset it to run on a local Ray instance")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"no Ray cluster answers at {name}={address} ({e.strerror or type(e).__name__}); start it "
                        "(ray start --head on that host) or unset RAY_ADDRESS to run on a local Ray instance") from None


def connect_ray() -> None:
    """ray.init() once per process, after the probe."""
    import ray

    if not ray.is_initialized():
        check_ray_address()
        ray.init()


def check_url(url: str, what: str) -> None:
    """The filesystem of `url` can be opened here: its protocol is known and its driver package installed."""
    protocol = fsspec.core.split_protocol(url)[0] if "://" in url else None
    if protocol is None:
        return
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as e:
        raise UserError(f"{what} {url} needs a package that is not installed ({e}); install it, e.g. pip install "
                        "s3fs for s3://, gcsfs for gs://") from None
    except ValueError:
        raise UserError(f"{what} {url}: unknown protocol {protocol!r}; use a local folder or a URL fsspec knows "
                        "(s3://, gs://, file://)") from None
