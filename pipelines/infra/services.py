"""Bounded probes of what a command needs from outside, run before any work starts: the Ray cluster that `ray.init()`
would join (Ray itself waits without limit for a GCS that is not there) and the filesystem driver of a URL (s3://
without s3fs fails only when a stage first writes) and an object store's bucket with the credentials at hand. The MLflow
probe is tracking.check_tracking."""

import concurrent.futures
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
    """ray.init() once per process, after the probe; Ray's own logs stay off the console as in `adm run` (unless
    --verbose / ADM_VERBOSE=1)."""
    # here, not at the top: the CLI imports this module for its probes, and `adm --help` must not load Ray
    import ray  # noqa: PLC0415

    from pipelines.infra.console import quiet_ray_data, quiet_ray_init_kwargs, verbose_requested  # noqa: PLC0415

    if not ray.is_initialized():
        check_ray_address()
        verbose = verbose_requested()
        ray.init(**quiet_ray_init_kwargs(verbose))
        if not verbose:
            quiet_ray_data()


def check_url(url: str, what: str) -> None:
    """The filesystem of `url` can be opened here: its protocol is known, its driver package installed and, for an
    object store, its bucket answers with the credentials at hand."""
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
    if protocol in OBJECT_STORES:
        probe_object_store(url, what)


OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")  # URLs whose first path part is a bucket
STORE_TIMEOUT_S = 10.0  # a bucket's metadata comes back in well under a second from a reachable store
CREDENTIALS_HINT = {"s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; AWS_ENDPOINT_URL for an "
                          "S3-compatible store such as MinIO)",
                    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run gcloud auth "
                          "application-default login"}


def probe_object_store(url: str, what: str, timeout: float = STORE_TIMEOUT_S) -> None:
    """The bucket of an object-store URL answers with these credentials, within `timeout`: the metadata of the
    bucket itself (not a listing, which can be long), read in a thread so that a store that does not answer cannot
    hold the command. A path inside the bucket may not exist yet: stages create it."""
    protocol = fsspec.core.split_protocol(url)[0]
    hint = CREDENTIALS_HINT.get(protocol, "check the credentials the fsspec driver reads")
    try:
        fs, root = fsspec.core.url_to_fs(url)
        bucket = root.strip("/").split("/")[0]
        pool = concurrent.futures.ThreadPoolExecutor(1)
        try:
            pool.submit(fs.info, bucket).result(timeout=timeout)
        finally:
            pool.shutdown(wait=False)
    except concurrent.futures.TimeoutError:
        raise UserError(f"{what} {url}: the object store did not answer within {timeout:g} s; check the network and "
                        f"the endpoint, then the credentials ({hint})") from None
    except FileNotFoundError:
        raise UserError(f"{what} {url}: the bucket {bucket!r} does not exist (or these credentials cannot see it); "
                        "create it or fix the URL") from None
    except PermissionError as e:
        raise UserError(f"{what} {url}: access denied ({e}); use credentials that may read and write the bucket "
                        f"({hint})") from None
    except Exception as e:  # the drivers' own errors: botocore's NoCredentialsError, google.auth's, connection errors
        if "credential" in f"{type(e).__name__} {e}".lower():
            raise UserError(f"{what} {url}: no credentials ({type(e).__name__}: {str(e)[:200]}); {hint}") from None
        raise UserError(f"{what} {url}: cannot reach the object store ({type(e).__name__}: {str(e)[:200]}); check "
                        "the network and the endpoint (AWS_ENDPOINT_URL for s3:// on another service)") from None


STORE_DRIVERS = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google", "adlfs", "azure")  # their errors' modules


def store_failed(error: BaseException) -> str | None:
    """What to tell the user when an object-store call failed after the probe (the store went away, credentials
    expired): the drivers raise their own exception types, not OSError. None for any other error."""
    module = type(error).__module__.split(".")[0]
    if module not in STORE_DRIVERS:
        return None
    return (f"the object store failed ({type(error).__name__}: {str(error)[:300]}); check the network, the endpoint "
            "and the credentials, then rerun (a pipeline run continues with adm run --resume RUN_ID)")
