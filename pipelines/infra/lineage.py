"""Where a registered model came from, as a retraining cycle compares it: the dataset's fingerprint (recorded by
ingest), the code version and the config hash (both here). Equal all three, and a retraining cycle has nothing to do."""

import hashlib
from importlib.metadata import PackageNotFoundError, version

from components.config import Preset, to_dict
from components.config.kinds import KINDS
from pipelines import PROJECT_ROOT
from pipelines.infra.storage import digest


def config_hash(preset: Preset) -> str:
    """The resolved config's hash, where training starts from (train_<kind>.init_from) left out: a retraining cycle's
    warm start from the champion is the cycle's choice, not a change of config, and the next cycle compares this hash
    with the champion's."""
    values = {name: v for name, v in to_dict(preset).items() if v is not None}  # no cascade: the hash as before it
    for section in (k.train_section for k in KINDS.values() if k.train_section in values):
        values[section] = {k: v for k, v in values[section].items() if k != "init_from"}
    return digest({"stage": "config", **values})[:16]


def code_version() -> str:
    """adm-pipeline's version and a digest of its Python sources (components/ and pipelines/, every sub-package)."""
    sources = hashlib.sha256()
    for path in sorted(p for folder in ("components", "pipelines") for p in (PROJECT_ROOT / folder).rglob("*.py")):
        sources.update(path.relative_to(PROJECT_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        release = version("adm-pipeline")
    except PackageNotFoundError:
        release = "unknown"
    return f"{release}+{sources.hexdigest()[:12]}"
