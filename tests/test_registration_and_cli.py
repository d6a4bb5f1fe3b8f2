"""Trainer registration (nnUNet_extTrainer), packaging of the trainers folder, and the command line."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from nnunet_unpaired.cli import COMMANDS, main
from nnunet_unpaired.registration import env_with_trainers, ext_trainer_folder, is_registered

REPO = Path(__file__).resolve().parents[1]


def test_ext_folder_is_the_repository_trainers_folder_in_editable_installs():
    assert Path(ext_trainer_folder()).resolve() == (REPO / "trainers").resolve()


def test_env_adds_folder_once_and_keeps_other_entries():
    env = env_with_trainers({"nnUNet_extTrainer": "/elsewhere"})
    parts = env["nnUNet_extTrainer"].split(os.pathsep)
    assert parts[0] == "/elsewhere" and ext_trainer_folder() in parts
    assert env_with_trainers(env)["nnUNet_extTrainer"] == env["nnUNet_extTrainer"]
    assert is_registered(env) and not is_registered({})


def test_env_command_prints_a_working_export_line(capsys):
    assert main(["env"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("export nnUNet_extTrainer=")][0]
    assert ext_trainer_folder() in line


LOOKED_UP = ["nnUNetTrainerUnpairedJoint", "nnUNetTrainerUnpairedJointModalityNorm", "nnUNetTrainerVanilla",
             "nnUNetTrainerChannelDropout"]


@pytest.mark.slow
def test_nnunet_lookup_finds_trainers_through_the_variable():
    # one fresh process for all names (each lookup imports the folder anew and evicts it; nnU-Net's own trainer modules,
    # the 10 s part, are imported once)
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            f"for name in {LOOKED_UP!r}:\n    print(name, f(name).__module__)")
    proc = subprocess.run([sys.executable, "-c", code], env=env_with_trainers(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = dict(line.split() for line in proc.stdout.strip().splitlines() if line.startswith("nnUNetTrainer"))
    assert set(found) == set(LOOKED_UP)
    # each class comes from the installed package (picklable for nnU-Net's workers), not from the evicted shim
    assert all(module.startswith("nnunet_unpaired.") for module in found.values()), found


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "nnunet_unpaired").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert "nnunet_unpaired.ext_trainers" in listed


def test_trainer_shims_only_reexport():
    for shim in (REPO / "trainers").glob("*.py"):
        if shim.name == "__init__.py":
            continue
        code = [ln for ln in shim.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
        assert all(ln.startswith(("from nnunet_unpaired", "    ", ")")) for ln in code), shim


def test_non_editable_install_ships_the_trainers_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--target", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shipped = tmp_path / "nnunet_unpaired" / "ext_trainers"
    assert (shipped / "nnUNetTrainerUnpairedJoint.py").is_file()
    code = "import nnunet_unpaired.registration as r; print(r.ext_trainer_folder())"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert Path(out.stdout.strip()).resolve() == shipped.resolve(), out.stderr


def test_cli_lists_commands_and_rejects_unknown(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_script_runs():
    exe = Path(sys.executable).parent / "nnunet_unpaired"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip()


def test_env_check_fails_without_variable():
    exe = Path(sys.executable).parent / "nnunet_unpaired"
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    proc = subprocess.run([str(exe), "env", "--check"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "eval" in proc.stdout


def test_files_sharing_a_session_fixture_form_one_xdist_scope():
    """scripts/test.sh's scheduler (conftest.pytest_xdist_make_scheduler): the files of SHARED_GROUPS are ONE unit of
    work, so they run on one worker and share the joint model; every other file stays its own unit, parametrized ids
    included."""
    import conftest

    scheduler = object.__new__(conftest._shared_file_groups())  # _split_scope reads no state
    scopes = {nodeid: scheduler._split_scope(nodeid) for nodeid in (
        "tests/test_e2e_joint.py::test_predict_each_modality[0]", "tests/test_share_deploy.py::test_x",
        "tests/test_demo.py::test_demo_runs_end_to_end", "tests/test_demo.py::test_other[a::b]")}
    assert set(conftest.SHARED_GROUPS) == {"test_e2e_joint.py", "test_share_deploy.py"}
    assert scopes["tests/test_e2e_joint.py::test_predict_each_modality[0]"] == \
        scopes["tests/test_share_deploy.py::test_x"] == "joint_model"
    assert scopes["tests/test_demo.py::test_demo_runs_end_to_end"] == \
        scopes["tests/test_demo.py::test_other[a::b]"] == "tests/test_demo.py"
