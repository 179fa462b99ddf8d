"""The wheel as a user gets it: built, installed non-editable into a fresh venv, core first.

A web app whose own top-level `config` package, `worker.py` and `producer.py` sit next to it
must import batchrelay's public API without either shadowing the other, and the core must not
pull in Flower or a web server. The `[worker]` extra is then added to the same venv (tests run
in file order: the core tests assert that no extra is present, so a reordering fails loudly).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "sk-packaging-secret-0123456789"
PROVIDERS = json.dumps(
    [{"name": "emu", "base_url": "http://127.0.0.1:9/v1", "api_key": SECRET_KEY, "models": ["*"]}]
)
# Modules only an extra may bring; none is in a core install.
EXTRA_MODULES = (
    "flower",
    "fastapi",
    "uvicorn",
    "starlette",
    "redbeat",
    "standardwebhooks",
    "aiohttp",
    "uvloop",
)

pytestmark = pytest.mark.timeout(600)


@dataclass
class Venv:
    wheel: Path
    root: Path
    app: Path

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def run(
        self, *args: str, redis_url: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command from the app's directory, with only the settings a deployment sets."""
        env = _clean_env() | {"BATCHRELAY_PROVIDERS": PROVIDERS}
        if redis_url is not None:
            env["BATCHRELAY_REDIS_URL"] = redis_url
        proc = subprocess.run(
            args, cwd=self.app, env=env, capture_output=True, text=True, timeout=120
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def python(self, script: str, redis_url: str | None = None) -> dict:
        """Run `script` in the venv from the app's directory; it prints one JSON object."""
        proc = self.run(self.bin("python"), "-c", textwrap.dedent(script), redis_url=redis_url)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def pip_install(self, requirement: str) -> None:
        subprocess.run(
            [self.bin("python"), "-m", "pip", "install", "-q", requirement],
            env=_clean_env(),
            check=True,
            capture_output=True,
            timeout=600,
        )


def _clean_env() -> dict[str, str]:
    """This process's environment without its venv, its import path or any batchrelay setting."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    return {
        k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("BATCHRELAY_")
    }


def _copy_sources(dest: Path) -> None:
    """Copy what the build reads, so building leaves nothing in the working tree."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dest.mkdir()
    for name in ("pyproject.toml", project["project"]["readme"]):
        shutil.copy2(ROOT / name, dest / name)
    for folder in set(project["tool"]["setuptools"]["package-dir"].values()):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))


def _write_app(app: Path) -> None:
    """A web app whose own modules are named like batchrelay's sub-packages."""
    (app / "config").mkdir(parents=True)
    (app / "config" / "__init__.py").write_text('DATABASE = "app.db"\n')
    (app / "worker.py").write_text('def work() -> str:\n    return "the app\'s worker"\n')
    (app / "producer.py").write_text('def produce() -> str:\n    return "the app\'s producer"\n')


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("packaging")
    _copy_sources(base / "src")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(base / "dist"), "src"],
        cwd=base,
        env=_clean_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (base / "dist").glob("batchrelay-*.whl")
    subprocess.run(
        [sys.executable, "-m", "venv", str(base / "venv")],
        env=_clean_env(),
        check=True,
        timeout=120,
    )
    _write_app(base / "app")
    env = Venv(wheel=wheel, root=base / "venv", app=base / "app")
    env.pip_install(str(wheel))
    return env


# Imports the public API next to the app's own modules and reports where each came from.
IMPORTS = """
    import importlib.resources, importlib.util, json, sys, sysconfig
    from pathlib import Path

    from batchrelay import AsyncBatchRelay, BatchRelay, BatchRelayError, CeleryTask, Webhook
    import config, producer, worker

    site = Path(sysconfig.get_paths()["purelib"])
    report = {
        "app_modules": [m.__file__ for m in (config, producer, worker)],
        "app_values": [config.DATABASE, producer.produce(), worker.work()],
        "site_top_level": sorted(
            p.name for p in site.iterdir() if p.name in ("config", "producer", "worker", "emulator")
        ),
        "installed": [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is not None],
        "imported": sorted(m for m in EXTRA_MODULES if m in sys.modules),
        "batchrelay_in_site": Path(sys.modules["batchrelay"].__file__).is_relative_to(site),
        "lua": importlib.resources.files("batchrelay.producer").joinpath("relay.lua").is_file(),
    }
"""


def _check_app_untouched(report: dict, app: Path) -> None:
    assert report["app_modules"] == [
        str(app / "config" / "__init__.py"),
        str(app / "producer.py"),
        str(app / "worker.py"),
    ]
    assert report["app_values"] == ["app.db", "the app's producer", "the app's worker"]
    assert report["site_top_level"] == []
    assert report["batchrelay_in_site"] and report["lua"]


def test_wheel_installs_one_top_level_name_and_ships_relay_lua(venv: Venv) -> None:
    names = zipfile.ZipFile(venv.wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"batchrelay", "batchrelay-0.1.0.dist-info"}
    assert "batchrelay/producer/relay.lua" in names
    top_level = zipfile.ZipFile(venv.wheel).read("batchrelay-0.1.0.dist-info/top_level.txt")
    assert top_level.decode().split() == ["batchrelay"]


def test_core_install_submits_beside_the_apps_own_modules(venv: Venv, redis_url: str) -> None:
    report = venv.python(
        f"EXTRA_MODULES = {EXTRA_MODULES!r}\n"
        + textwrap.dedent(IMPORTS)
        + textwrap.dedent("""
            relay = BatchRelay.from_env()
            rid = relay.submit(
                "/v1/chat/completions",
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                callback=CeleryTask("app.tasks.done"),
            )
            report["state"] = relay.status(rid).state
            print(json.dumps(report))
        """),
        redis_url=redis_url,
    )
    _check_app_untouched(report, venv.app)
    assert report["installed"] == [], "the core install pulled in an extra's module"
    assert report["imported"] == []
    assert report["state"] == "pending"


@pytest.mark.parametrize(
    ("command", "extras"),
    [
        ("emulator", "emulator"),
        ("status", "worker"),
        ("flush", "worker"),
        ("batches list", "worker"),
        ("dead-letters list", "worker"),
        ("dev", "worker,emulator"),
        ("demo", "worker,emulator"),
        ("serve", "api"),
    ],
)
def test_core_cli_names_the_missing_extra(
    venv: Venv, redis_url: str, command: str, extras: str
) -> None:
    proc = venv.run(venv.bin("batchrelay"), *command.split(), redis_url=redis_url, check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("batchrelay: this command needs ")
    assert line.endswith(f"pip install 'batchrelay[{extras}]'")


def test_worker_extra_loads_the_celery_app_from_the_app_directory(
    venv: Venv, redis_url: str
) -> None:
    venv.pip_install(f"{venv.wheel}[worker]")
    report = venv.python(
        f"EXTRA_MODULES = {EXTRA_MODULES!r}\n"
        + textwrap.dedent(IMPORTS)
        + textwrap.dedent("""
            import batchrelay.worker.tasks
            from batchrelay.worker.celery import app

            report["tasks"] = sorted(t for t in app.tasks if t.startswith("batchrelay."))
            report["include"] = list(app.conf.include)
            print(json.dumps(report))
        """),
        redis_url=redis_url,
    )
    _check_app_untouched(report, venv.app)
    assert report["installed"] == ["redbeat", "standardwebhooks", "aiohttp", "uvloop"]
    assert "batchrelay.aggregate" in report["tasks"]
    assert report["include"] == ["batchrelay.worker.tasks"]

    # `report` loads the app without contacting the broker.
    celery = venv.run(venv.bin("celery"), "-A", "batchrelay.worker", "report", redis_url=redis_url)
    assert "include: ['batchrelay.worker.tasks']" in celery.stdout
    assert SECRET_KEY not in celery.stdout + celery.stderr

    status = venv.run(venv.bin("batchrelay"), "status", "--json", redis_url=redis_url)
    assert json.loads(status.stdout)["groups"] is not None
    emulator = venv.run(venv.bin("batchrelay"), "emulator", redis_url=redis_url, check=False)
    assert emulator.returncode == 1
    assert emulator.stderr.strip().endswith("pip install 'batchrelay[emulator]'")


def test_flower_extra_brings_the_worker_extra(venv: Venv) -> None:
    """`celery -A batchrelay.worker flower` loads the worker's app, so it needs `[worker]` too."""
    metadata = zipfile.ZipFile(venv.wheel).read("batchrelay-0.1.0.dist-info/METADATA").decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    flower = [r for r in requires if 'extra == "flower"' in r]
    assert any(r.startswith("Requires-Dist: batchrelay[worker]") for r in flower), flower
