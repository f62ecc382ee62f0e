"""The command line: bad params stop before any work, overrides are validated, a stage runs."""

import subprocess
import sys

import yaml

from sgid_utils.cli import main

from .conftest import REPO


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "sgid_utils", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_bad_params_stop_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"run": {"name": "x", "dir": "r", "reports_dir": "q"},
                                   "dataset": {"source": "imagefolder", "path": "d"}, "generaton": {}}))
    out = _cli("run", "captioning", "--params", str(bad))
    assert out.returncode == 2
    assert "unknown key 'generaton'" in out.stderr and "Did you mean 'generation'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()
    out = _cli("run", "captioning", "--params", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "Params file not found" in out.stderr


def test_cli_set_overrides_are_validated(tmp_path):
    out = _cli("run", "data", "--params", "params/smoke.yaml", "--run-dir", str(tmp_path / "r"), "--set",
               "generation.strength=3")
    assert out.returncode == 2 and "generation.strength" in out.stderr


def test_cli_rejects_a_malformed_shard(tmp_path):
    out = _cli("run", "data", "--params", "params/smoke.yaml", "--shard", "2")
    assert out.returncode == 2 and "expected I/N" in out.stderr and "Traceback" not in out.stderr


# The two that run stages call the command line's main in this process: a process of their own would spend seconds
# importing torch and the model libraries, while what they test (which stages run, where) is main's.
def test_cli_runs_a_stage(make_params, tmp_path):
    params = make_params("cli")
    assert main(["run", "data", "--params", str(params.source_file), "--run-dir", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "data" / "images.parquet").exists()


def test_cli_options_of_one_kind_of_run_are_refused_elsewhere(tmp_path):
    out = _cli("run", "captioning", "--params", "params/smoke.yaml", "--jobs", "2")
    assert out.returncode == 2 and "--jobs goes with 'run ablations'" in out.stderr
    out = _cli("run", "captioning", "--params", "params/smoke.yaml", "--to-stage", "training")
    assert out.returncode == 2 and "go with 'run all'" in out.stderr
    out = _cli("run", "ablations", "--params", "params/smoke_ablations.yaml", "--jobs", "0")
    assert out.returncode == 2 and "at least 1" in out.stderr
    out = _cli("run", "all", "--params", "params/smoke.yaml", "--from-stage", "training", "--to-stage", "data",
               "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "comes after" in out.stderr
    assert not (tmp_path / "r").exists()  # refused before any work


def test_cli_runs_all_between_two_stages(make_params, capsys):
    params = make_params("span")
    assert main(["run", "all", "--from-stage", "data", "--to-stage", "captioning", "--params",
                 str(params.source_file)]) == 0
    stderr = capsys.readouterr().err
    ran = [line.split()[2].rstrip(":") for line in stderr.splitlines() if line.startswith("[sgid] stage ")]
    assert ran == ["data", "captioning"]
