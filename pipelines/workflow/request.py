"""What `adm run` and `adm retrain` are asked to do, and every check that runs before the first stage."""

import os
from dataclasses import dataclass

from components.config import Preset
from components.config.kinds import KINDS
from components.config.validation import preset_problems, raise_problems
from components.images import DataError
from pipelines.infra.init_from import resolve_inits
from pipelines.infra.services import check_ray_address, check_url
from pipelines.infra.storage import absolute, check_writable
from pipelines.infra.tracking_checks import check_tracking, resolve_tracking_uri
from pipelines.stages.sources import local_folder


@dataclass
class RunRequest:
    preset: Preset
    data: str | None = None  # ingest source (default: the preset's), e.g. fashion-mnist, shapes, a folder URL
    workdir: str = "adm-work"
    tracking_uri: str | None = None
    experiment: str = "adm"
    force: bool = False
    resume: str | None = None  # pipeline run id to continue
    register: bool = True
    model_prefix: str | None = None  # registered model names: <prefix>-diffusion, <prefix>-classifier
    parent_run_id: str | None = None  # e.g. the `adm retrain` cycle that runs this pipeline
    source_fingerprint: str | None = None  # content of the source (retrain): new content => a new ingest
    from_scratch: bool = False  # retrain: random weights even when the champion could be the starting point

    def __post_init__(self):
        # recorded with the run and handed to Ray workers, which do not share this process's working directory
        self.workdir = absolute(self.workdir)

    @property
    def prefix(self) -> str:
        return self.model_prefix or f"adm-{self.preset.name}"

    @property
    def source(self) -> str:
        return self.data or self.preset.data.source


def check_config(req: RunRequest) -> None:
    """Every config error, all at once (what `adm submit` checks locally: the services are the cluster's)."""
    problems = preset_problems(req.preset)
    if not req.source:
        problems.append(f"preset {req.preset.name} names no data source; pass --data SOURCE")
    raise_problems(problems)


def check_request(req: RunRequest, writes: bool = True) -> None:
    """Everything a run here needs, before the first stage starts: the config, then bounded probes of the services
    (the tracking store or server, the Ray cluster of RAY_ADDRESS, the work dir's and source's filesystems, a local
    source folder's existence) and the weights that trainers start from (train_<kind>.init_from: found, pinned and
    fitting the preset's networks). With `writes` (not for --dry-run, which writes nothing), a local work dir is made
    and written to once."""
    check_config(req)
    check_tracking(resolve_tracking_uri(req.tracking_uri))
    resolve_inits(req.preset, KINDS, resolve_tracking_uri(req.tracking_uri), req.prefix)  # the warm starts' weights
    check_ray_address()
    check_url(req.workdir, "--workdir")
    check_url(req.source, "--data")
    check_source_folder(req.source)
    if writes and ("://" not in req.workdir or req.workdir.startswith("file://")):
        check_writable(req.workdir, "work dir", "--workdir")


def check_source_folder(spec: str) -> None:
    """A source folder on this machine (an image folder, fashion-mnist:DIR) that is not there: refused before any
    stage starts, instead of inside the ingest stage. Remote URLs are probed by check_url."""
    folder = local_folder(spec)
    if folder is not None and not os.path.isdir(folder):
        raise DataError(f"--data {spec}: the folder {folder} does not exist or is not a folder; pass an existing "
                        "folder (an image folder has one sub-folder per class), fashion-mnist or shapes")
