"""Run nnU-Net's console scripts as a user's shell would, with this plugin importable or on a 'stock' machine.

As a helper (imported by the tests):

- :func:`plugin_free_env`: an environment in which Python cannot see this package: the interpreter runs with ``-S``
  (no site processing, so neither ``.pth`` files nor the editable install's import hook run), ``PYTHONPATH`` is a
  folder of links to every entry of this venv's site-packages EXCEPT this package's own (code, dist-info, editable
  hooks), and there is no ``nnUNet_extTrainer``; what a machine with only stock nnU-Net installed looks like;
- :func:`run_console_scripts`: runs several console scripts one after the other in ONE interpreter (each script file
  executed as ``__main__``, exactly what the shell runs), so the start-up (torch, nnU-Net) is paid once per
  environment. nnU-Net's spawned worker processes inherit the interpreter flags and the environment.

As a script (``python [-S] stock_commands.py SPEC.json``) it is that interpreter. Standard library only.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

#: top-level names of this package's files in site-packages (editable or regular install)
PLUGIN_ENTRIES = ("nnunet_unpaired", "nnunet-unpaired", "__editable__.nnunet_unpaired", "__editable___nnunet_unpaired")
#: environment variables a plugin-free run keeps from the caller
KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")


def plugin_free_site(folder: Path) -> Path:
    """A folder of links to this venv's site-packages entries, without this package (see the module docstring)."""
    import site

    folder.mkdir(parents=True, exist_ok=True)
    for site_dir in site.getsitepackages():
        for entry in sorted(os.listdir(site_dir)):
            if entry.startswith(PLUGIN_ENTRIES) or entry.endswith(".pth") or entry == "__pycache__":
                continue
            link = folder / entry
            if not link.exists():
                link.symlink_to(os.path.join(site_dir, entry))
    return folder


def plugin_free_env(site_folder: Path, nnunet_folders: Dict[str, str], extra: Dict[str, str] = None) -> Dict[str, str]:
    env = {k: os.environ[k] for k in KEPT if k in os.environ}
    env.update(nnunet_folders)
    env.update({"PYTHONPATH": str(site_folder), "PYTHONNOUSERSITE": "1", "nnUNet_compile": "false",
                "nnUNet_def_n_proc": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    assert "nnUNet_extTrainer" not in env
    return env


def start_console_scripts(commands: Sequence[dict], env: Dict[str, str], plugin_free: bool = False,
                          cwd: Path = None, timeout: int = 900) -> Callable[[], str]:
    """Start running ``commands`` (dicts: ``cmd`` = [script, args...], optional ``expect_error`` = text the failure
    must show, optional ``env`` = variables set for that command only: variables read while a command runs, such as
    this package's ``nnUNet_unpaired_*`` settings, not nnU-Net's folder variables, which it reads once at import) in
    one interpreter; returns a function that waits for it and returns its output (an AssertionError
    with the output tail when a command failed)."""
    spec = {"bin": str(Path(sys.executable).parent), "commands": list(commands),
            "absent": ["nnunet_unpaired"] if plugin_free else []}
    python = [sys.executable, "-S"] if plugin_free else [sys.executable]
    proc = subprocess.Popen([*python, str(Path(__file__).resolve()), json.dumps(spec)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait() -> str:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"console scripts ran past {timeout} s\n--- output\n{out[-6000:]}")
        if proc.returncode != 0:
            raise AssertionError(f"console scripts exited {proc.returncode}\n--- output\n{out[-6000:]}")
        return out

    wait.kill = proc.kill
    return wait


def run_console_scripts(commands: Sequence[dict], env: Dict[str, str], plugin_free: bool = False,
                        cwd: Path = None, timeout: int = 900) -> str:
    """:func:`start_console_scripts` and wait for it."""
    return start_console_scripts(commands, env, plugin_free, cwd, timeout)()


def _main(spec: dict) -> int:
    import importlib.util

    for name in spec["absent"]:
        if importlib.util.find_spec(name) is not None:
            print(f"=== {name} is importable here (sys.path={sys.path})", flush=True)
            return 3
        print(f"=== {name} is not importable here", flush=True)
    for command in spec["commands"]:
        script, args = os.path.join(spec["bin"], command["cmd"][0]), command["cmd"][1:]
        expected = command.get("expect_error")
        print(f"=== {' '.join(command['cmd'])}", flush=True)
        start = time.time()
        sys.argv = [script, *args]
        saved = {k: os.environ.get(k) for k in command.get("env", {})}
        os.environ.update(command.get("env", {}))
        try:
            runpy.run_path(script, run_name="__main__")
            failure = None
        except SystemExit as e:
            failure = None if e.code in (None, 0) else f"exit status {e.code}"
        except Exception as e:  # noqa: BLE001 (reported, and compared with the expected error)
            failure = f"{type(e).__name__}: {e}"
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if expected is not None:
            if failure is None or expected not in failure:
                print(f"=== expected an error containing {expected!r}, got {failure!r}", flush=True)
                return 1
            print(f"=== failed as expected: {failure[:300]}", flush=True)
        elif failure is not None:
            import traceback

            traceback.print_exc()
            print(f"=== FAILED: {failure}", flush=True)
            return 1
        print(f"=== done {command['cmd'][0]} in {time.time() - start:.1f} s", flush=True)
    return 0


def timings(output: str) -> List[str]:
    return [line[4:] for line in output.splitlines() if line.startswith("=== done")]


if __name__ == "__main__":
    sys.exit(_main(json.loads(sys.argv[1])))
