"""`adm models` against a real MLflow server: promote and rollback move both networks' aliases and leave records on
the versions; a pair with a missing partner is refused; bad input is an error line, not a traceback."""

import getpass
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def register_pair(client, prefix: str, pipeline_run: str, fid: float, networks=("diffusion", "classifier")) -> None:
    """Versions as a pipeline run registers them: one per network, tagged with the run and the metric."""
    run = client.create_run(client.get_experiment_by_name("models-seed").experiment_id)
    for kind in networks:
        name = f"{prefix}-{kind}"
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        client.create_model_version(name, f"{run.info.artifact_uri}/{kind}_model", run.info.run_id,
                                    tags={"adm.pipeline_run": pipeline_run, "adm.fid_scale_2": str(fid),
                                          "adm.data_fingerprint": f"data-{pipeline_run}"})


def adm(capsys, server, prefix, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["models", *args, "--model-prefix", prefix, "--tracking-uri", server])
    out = capsys.readouterr()
    return code, out.out, out.err


def champions(client, prefix) -> tuple[str, str]:
    return tuple(client.get_model_version_by_alias(f"{prefix}-{k}", "champion").version
                 for k in ("diffusion", "classifier"))


def records(client, name, version) -> list[dict]:
    tags = client.get_model_version(name, version).tags
    return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("adm.move.")]


def test_promote_and_rollback_move_both_aliases_and_leave_records(capsys, mlflow_server):
    client, prefix = MlflowClient(mlflow_server), "mm"
    client.create_experiment("models-seed")
    for i, fid in enumerate((30.0, 20.0, 25.0), start=1):
        register_pair(client, prefix, f"run-{i}", fid)
    started = datetime.now(timezone.utc)
    assert adm(capsys, mlflow_server, prefix, "promote", "1", "--reason", "first")[0] == 0
    assert adm(capsys, mlflow_server, prefix, "promote", "2", "--reason", "better fid")[0] == 0
    assert champions(client, prefix) == ("2", "2")
    code, out, _ = adm(capsys, mlflow_server, prefix, "promote", "3", "--network", "classifier", "--reason", "try 3")
    assert code == 0 and "mm-diffusion: champion v2 -> v3" in out and champions(client, prefix) == ("3", "3")
    assert adm(capsys, mlflow_server, prefix, "rollback", "--reason", "3 was bad")[0] == 0
    assert champions(client, prefix) == ("2", "2")
    assert adm(capsys, mlflow_server, prefix, "rollback", "--reason", "2 as well")[0] == 0
    assert champions(client, prefix) == ("1", "1")  # a second rollback walks further back, not back to 3
    code, _, err = adm(capsys, mlflow_server, prefix, "rollback", "--reason", "once more")
    assert code == 2 and "no recorded earlier champion" in err and "Traceback" not in err
    assert champions(client, prefix) == ("1", "1")

    for kind in ("diffusion", "classifier"):  # v2 gained the alias twice and lost it twice: four records
        moved = records(client, f"{prefix}-{kind}", "2")
        assert [(m["action"], m["from"], m["to"]) for m in moved] == [
            ("promote", "1", "2"), ("promote", "2", "3"), ("rollback", "3", "2"), ("rollback", "2", "1")]
        assert moved[2]["why"] == "3 was bad" and all(m["by"] == getpass.getuser() for m in moved)
        at = [datetime.fromisoformat(m["at"]) for m in moved]
        assert at == sorted(at) and started - timedelta(seconds=1) <= at[0] and at[-1].tzinfo is not None
    assert len(client.search_model_versions(f"name = '{prefix}-diffusion'")) == 3  # nothing deleted

    code, out, _ = adm(capsys, mlflow_server, prefix, "list", "--json")
    listed = json.loads(out)
    rows = {r["version"]: r for r in listed[f"{prefix}-diffusion"]}
    assert code == 0 and [v for v, r in rows.items() if r["champion"]] == ["1"]
    assert rows["2"]["metrics"] == {"fid@2": 20.0} and rows["2"]["data_fingerprint"] == "data-run-2"
    assert rows["2"]["last_move"]["action"] == "rollback"
    code, out, _ = adm(capsys, mlflow_server, prefix, "show", "3", "--network", "classifier")
    shown = json.loads(out)
    assert code == 0 and shown["partners"] == {f"{prefix}-diffusion": "3"} and len(shown["moves"]) == 2


def test_promote_without_partner_and_bad_input_are_refused(capsys, mlflow_server):
    client, prefix = MlflowClient(mlflow_server), "mp"
    if client.get_experiment_by_name("models-seed") is None:
        client.create_experiment("models-seed")
    register_pair(client, prefix, "run-a", 10.0)
    register_pair(client, prefix, "run-b", 5.0, networks=("diffusion",))  # its classifier was never registered
    assert adm(capsys, mlflow_server, prefix, "promote", "1", "--reason", "start")[0] == 0
    code, _, err = adm(capsys, mlflow_server, prefix, "promote", "2", "--reason", "lone")
    assert code == 2 and "registered no mp-classifier version" in err and "nothing was moved" in err
    assert champions(client, prefix) == ("1", "1") and len(records(client, f"{prefix}-diffusion", "2")) == 0
    for name, args, message in (
            (prefix, ("promote", "9", "--reason", "x"), "mp-diffusion has no version 9; its versions are 1, 2"),
            (prefix, ("promote", "1", "--reason", " "), "--reason is empty"),
            ("nobody", ("show", "1"), "no registered model 'nobody-diffusion'"),
            ("nobody", ("rollback", "--reason", "x"), "nobody-diffusion has no champion")):
        code, _, err = adm(capsys, mlflow_server, name, *args)
        assert code == 2 and message in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as refused:  # argparse's own refusal, before any work
        adm(capsys, mlflow_server, prefix, "show", "mp-diffusion")
    assert refused.value.code == 2 and "'mp-diffusion' is not a version number" in capsys.readouterr().err
    # a prefix that holds nothing: the message names the sets the registry does hold
    for args in (("show", "1"), ("list",)):
        code, _, err = adm(capsys, mlflow_server, "nobody", *args)
        held = err.split("this registry holds the sets ", 1)[-1].split(":")[0].split(", ")
        assert code == 2 and "mp" in held, err
    code, _, err = adm(capsys, "http://127.0.0.1:9", prefix, "list")
    assert code == 2 and "unreachable" in err


def test_registry_of_a_sqlite_store_opened_in_the_process(capsys, tmp_path):
    """`make run`'s ./mlflow.db is opened in the process, and that store hands out version numbers as ints (MLflow
    3.17), where a server sends strings: registering a logged model from a process that logged none (a resumed run
    whose train stage had finished), `adm models show/promote` and init_from=models:/NAME/VERSION work there too."""
    import mlflow
    import torch

    from components.config import to_dict
    from components.config.presets import get_preset
    from components.training import Learner
    from pipelines.infra.init_from import _pin
    from pipelines.infra.tracking import Tracker

    uri, before = f"sqlite:///{tmp_path}/mlflow.db", mlflow.get_tracking_uri()
    tracker, preset = Tracker(uri), get_preset("smoke")
    try:
        for i, kind in enumerate(("diffusion", "classifier", "diffusion", "classifier")):
            learner = Learner(kind, preset, torch.device("cpu"), seed=i)
            folder = tmp_path / f"net{i}"
            learner.save(folder, config={"kind": kind, "preset": to_dict(preset)})
            run_id = tracker.start_run("sq-seed", f"train-{kind}")
            weights = folder / ("ema_0.99.safetensors" if learner.ema else "model.safetensors")
            model_uri = tracker.log_network(run_id, f"{kind}_model", weights, folder / "model.json")
            # another process: its MLflow default store is not this one
            mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")
            version = tracker.register(model_uri, f"sq-{kind}", run_id, tags={"adm.pipeline_run": f"p{i // 2}"})
            assert version == str(i // 2 + 1)
    finally:
        mlflow.set_tracking_uri(before)
    assert not (tmp_path / "elsewhere.db").exists()
    assert [v.version for v in tracker.model_versions("sq-diffusion")] in (["1", "2"], ["2", "1"])

    code, out, err = adm(capsys, uri, "sq", "show", "1")
    assert code == 0 and json.loads(out)["version"] == "1", err
    code, out, err = adm(capsys, uri, "sq", "promote", "2", "--reason", "sqlite")
    assert code == 0, err
    assert tracker.alias_version("sq-classifier", "champion").version == "2"
    code, out, err = adm(capsys, uri, "sq", "show", "9")
    assert code != 0 and "sq-diffusion has no version 9; its versions are 1, 2" in err and "Traceback" not in err
    assert _pin("models:/sq-diffusion/1", "sq-diffusion", uri).uri == "models:/sq-diffusion/1"
    assert _pin("models:/sq-diffusion/latest", "sq-diffusion", uri).uri == "models:/sq-diffusion/2"


# --- a sqlite store of this process, as `make run` leaves one ---------------------------------------------------------
def sqlite_registry(tmp_path, prefix: str, tags_of: list[dict]) -> tuple[MlflowClient, str]:
    """A sqlite store whose PREFIX-diffusion and PREFIX-classifier have one version per entry of `tags_of`, each
    pair registered by its own pipeline run (pipeline run p1, p2, ...) with those tags."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_experiment("models-seed")
    for i, extra in enumerate(tags_of, start=1):
        register_pair(client, prefix, f"p{i}", 0.0)
        for kind in ("diffusion", "classifier"):
            client.delete_model_version_tag(f"{prefix}-{kind}", str(i), "adm.fid_scale_2")
            for key, value in extra.items():
                client.set_model_version_tag(f"{prefix}-{kind}", str(i), key, value)
    return client, uri


def test_list_and_show_give_the_metric_of_a_champion_chosen_at_the_best_scale(capsys, tmp_path):
    """evaluate.champion_scale=auto registers the metric as adm.<metric>_best_scale and the scale as adm.best_scale
    (pipelines/stages/register.py): both show, as they do for a fixed scale."""
    client, uri = sqlite_registry(tmp_path, "ba", [{"adm.fid_best_scale": "12.5", "adm.best_scale": "4"},
                                                   {"adm.fid_scale_2": "20"}])
    assert adm(capsys, uri, "ba", "promote", "1", "--reason", "auto")[0] == 0
    code, out, err = adm(capsys, uri, "ba", "list", "--json")
    rows = {r["version"]: r for r in json.loads(out)["ba-diffusion"]}
    assert code == 0, err
    assert (rows["1"]["metrics"], rows["1"]["scale"], rows["1"]["best_scale"]) == ({"fid@4": 12.5}, "4", "4")
    assert (rows["2"]["metrics"], rows["2"]["scale"], rows["2"]["best_scale"]) == ({"fid@2": 20.0}, "2", None)
    code, out, err = adm(capsys, uri, "ba", "list")
    lines = [x for x in out.splitlines() if x.lstrip("* ").startswith("v1 ")]  # of each network
    assert code == 0 and len(lines) == 2 and all("fid@4=12.5 (best scale)" in x for x in lines), out
    assert "fid@2=20 " in out and "fid@2=20 (best" not in out
    code, out, err = adm(capsys, uri, "ba", "show", "1", "--network", "classifier")
    shown = json.loads(out)
    assert code == 0 and (shown["metrics"], shown["best_scale"]) == ({"fid@4": 12.5}, "4")


def pair(client, prefix) -> tuple[str, str]:
    """champions() as strings: a sqlite store opened in the process gives version numbers as ints."""
    return tuple(map(str, champions(client, prefix)))


def test_promoting_the_champion_again_changes_and_records_nothing(capsys, tmp_path):
    client, uri = sqlite_registry(tmp_path, "sv", [{"adm.fid_scale_2": "3"}, {"adm.fid_scale_2": "2"}])
    assert adm(capsys, uri, "sv", "promote", "1", "--reason", "first")[0] == 0
    code, out, err = adm(capsys, uri, "sv", "promote", "1", "--reason", "again")
    assert code == 0, err
    assert "sv-diffusion: v1 is already champion; nothing changed" in out and "v1 -> v1" not in out
    assert pair(client, "sv") == ("1", "1")
    for kind in ("diffusion", "classifier"):
        assert [(m["from"], m["to"]) for m in records(client, f"sv-{kind}", "1")] == [(None, "1")]
    code, out, err = adm(capsys, uri, "sv", "list", "--json")
    assert all(r["last_move"] is None or r["last_move"]["why"] == "first" for r in json.loads(out)["sv-diffusion"])


def test_rollbacks_walk_back_through_the_history(capsys, tmp_path):
    """promote v1, v2, v3, then rollback twice: v2, then v1 (not back to v3); a third has nothing left. A version
    promoted again after a rollback is walked back from its latest promotion."""
    client, uri = sqlite_registry(tmp_path, "rw", [{"adm.fid_scale_2": str(f)} for f in (4, 3, 2, 1)])
    for version in ("1", "2", "3"):
        assert adm(capsys, uri, "rw", "promote", version, "--reason", f"to {version}")[0] == 0
    walked = []
    for _ in range(2):
        code, out, err = adm(capsys, uri, "rw", "rollback", "--reason", "back")
        assert code == 0, err
        walked.append(pair(client, "rw"))
    assert walked == [("2", "2"), ("1", "1")]
    code, _, err = adm(capsys, uri, "rw", "rollback", "--reason", "more")
    assert code == 2 and "no recorded earlier champion" in err and pair(client, "rw") == ("1", "1")
    for version in ("4", "2", "4"):  # history now 1, 4, 2, 4: back to 2, then 4, then 1
        assert adm(capsys, uri, "rw", "promote", version, "--reason", f"to {version}")[0] == 0
    walked = []
    for _ in range(3):
        assert adm(capsys, uri, "rw", "rollback", "--reason", "back")[0] == 0
        walked.append(pair(client, "rw")[0])
    assert walked == ["2", "4", "1"]


def test_a_closed_stdout_ends_adm_models_list_quietly(tmp_path):
    """`adm models list | head`: once the reader has gone, adm stops without a word on stderr and with the status a
    shell gives a command that SIGPIPE ended (141), as other command-line tools do. The pipe's reader is closed before
    adm writes, so the test does not depend on how fast `head` is."""
    _, uri = sqlite_registry(tmp_path, "bp", [{"adm.fid_scale_2": "1"}] * 3)
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", "models", "list", "--model-prefix", "bp",
                               "--tracking-uri", uri], stdout=write, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path, timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert not any(s in done.stderr for s in ("Broken pipe", "BrokenPipeError", "Traceback")), done.stderr
