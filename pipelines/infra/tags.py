"""The MLflow tag protocol: every ``adm.*`` tag that caching, resume, retraining and the registry read back.

These names are a contract with runs already in users' tracking stores: rename one and old runs stop being reused,
resumed or compared. Write and read them only through this module.

| tag | on | value |
| --- | --- | --- |
| adm.pipeline | pipeline run | preset name (marks an `adm run` parent run) |
| adm.stage | stage run, and the training and cell runs under it | ingest, train, sample, evaluate, register |
| adm.stage_key | stage run | hash of the stage's config section and its inputs' fingerprints (the cache key) |
| adm.outputs | stage run | JSON of what the stage produced (URLs, run ids), or @adm_outputs.json (see IN_FILE) |
| adm.reused_from | stage run | the run whose outputs a cached stage reused |
| adm.network | training run | diffusion, classifier or evaluator |
| adm.model_uri | training run | the logged model (models:/m-...) |
| adm.checkpoint | training run | the final checkpoint folder (with keep_best: the best evaluated one) |
| adm.worker | training run | host and pid of its rank-0 Ray Train worker (updated when the worker group restarts) |
| adm.started_after | training run | the trainer whose finish freed the CPU slot this one waited for |
| adm.resumed_from_step | training run | the checkpoint step a restarted worker group (or resumed run) went on from |
| adm.data_fingerprint | training run, model version, retrain cycle | the dataset's content hash |
| adm.code_version | model version, retrain cycle | package version + digest of components/ and pipelines/ |
| adm.config_hash | model version, retrain cycle | hash of the resolved config |
| adm.pipeline_run | model version, retrain cycle | the pipeline run that registered it; that the cycle ran |
| adm.<metric>_scale_<s> | model version | the champion metric at the champion scale |
| adm.<metric>_best_scale | model version | with evaluate.champion_scale=auto: the metric at the grid's best scale |
| adm.best_scale | model version | ... and that scale (`adm sample` samples a models:/ reference there by default) |
| adm.samples_npz | sampling run (one cell) | URL of that cell's samples |
| adm.unconditional | diffusion training run | true when it has the null class of classifier-free guidance |
| adm.best_step | training run | keep_best: the step of the checkpoint it reported (lowest eval_score) |
| adm.cell | cell run (sample-<cell>, evaluate-<cell>) | its key, `<sampler>/[<method>_]scale_<s>[_sigma_<lo>-<hi>]` |
| adm.retrain_cycle | retrain cycle run | preset name |
| adm.decision, adm.reason | retrain cycle run, model version | skipped, promoted, kept or failed; why |
| adm.ended_by | any run | who ended a run its driver left open (the sentinel) |
| adm.init_from | training run, model version | the weights training started from, pinned (models:/NAME/VERSION) |
| adm.parent_version | training run, model version | NAME/VERSION of the registered version it started from |
| adm.move.<UTC time> | model version | JSON of one alias move: action, alias, by (user), at (UTC), why, other version |
| adm.registered.<network> | pipeline run | the version registered for the network and whether it became champion |
| mlflow.note.content | pipeline and stage runs | MLflow's run description: the report, what the stage produced |
"""


PIPELINE = "adm.pipeline"
STAGE = "adm.stage"
STAGE_KEY = "adm.stage_key"
OUTPUTS = "adm.outputs"
REUSED_FROM = "adm.reused_from"
NETWORK = "adm.network"
MODEL_URI = "adm.model_uri"
CHECKPOINT = "adm.checkpoint"
WORKER = "adm.worker"
RESUMED_FROM_STEP = "adm.resumed_from_step"
STARTED_AFTER = "adm.started_after"
DATA_FINGERPRINT = "adm.data_fingerprint"
CODE_VERSION = "adm.code_version"
CONFIG_HASH = "adm.config_hash"
PIPELINE_RUN = "adm.pipeline_run"
SAMPLES_NPZ = "adm.samples_npz"
CELL = "adm.cell"
UNCONDITIONAL = "adm.unconditional"
BEST_STEP = "adm.best_step"
BEST_SCALE = "adm.best_scale"
RETRAIN_CYCLE = "adm.retrain_cycle"
DECISION = "adm.decision"
REASON = "adm.reason"
ENDED_BY = "adm.ended_by"
INIT_FROM = "adm.init_from"
PARENT_VERSION = "adm.parent_version"
MOVE = "adm.move."  # + UTC time: one record per alias move (adm models, the register stage), never rewritten
REGISTERED = "adm.registered"  # pipeline run: "NAME vN (champion|kept)" per network, as adm.registered.<network>
DESCRIPTION = "mlflow.note.content"  # MLflow's own tag: the run's description in the UI (Markdown)
JOB_COMMAND = "adm.command"  # Ray job metadata (not an MLflow tag): the adm sub-command a job runs

# what a retraining cycle compares with the champion's model version to decide whether anything changed
WATCHED = (DATA_FINGERPRINT, CODE_VERSION, CONFIG_HASH)


def champion_metric(metric: str, scale) -> str:
    """The model-version tag holding `metric` at guidance scale `scale`, e.g. adm.fid_scale_4; at the best scale of
    the grid (evaluate.champion_scale=auto) adm.fid_best_scale, so champions chosen that way compare with each other."""
    return f"adm.{metric}_best_scale" if scale == "auto" else f"adm.{metric}_scale_{scale:g}"


def stage_of(run) -> str | None:
    return run.data.tags.get(STAGE)


# MLflow cuts tag values at 8,000 characters (a grid of 20 cells' evaluated rows is longer): longer outputs go to this
# artifact of the stage run, and the tag holds IN_FILE instead (not JSON, so never taken for outputs)
OUTPUTS_FILE = "adm_outputs.json"
IN_FILE = f"@{OUTPUTS_FILE}"
TAG_LIMIT = 5000


def short(name: str) -> str:
    """adm.code_version -> code_version (how retraining names what changed)."""
    return name.removeprefix("adm.")
