"""Plugins are named, never found: only the shipped modules of ggl/defenses/ and ggl/attack/attackers/
load, a user's defence or attacker comes in through the config's ``plugins:`` or an entry point
(``ggl.defenses`` / ``ggl.attackers``), and a broken or clashing plugin is one line, exit 2, at every
entry point (train.py, attack.py, python -m ggl.sweep, python -m ggl.report)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ggl.core.plugins as plugins
from ggl.attack.attackers import SHIPPED as SHIPPED_ATTACKERS, _REGISTRY as ATTACKERS, available_attackers
from ggl.cli import attack_main, train_main
from ggl.core.errors import ConfigError, UserError
from ggl.defenses import REGISTRY as DEFENCES, SHIPPED as SHIPPED_DEFENCES
from ggl.report.build import main as report_main
from ggl.sweep.main import main as sweep_main

ROOT = Path(__file__).resolve().parent.parent
MACHINERY = {"defenses": {"__init__", "base", "accounting"}, "attack/attackers": {"__init__", "base", "portfolio"}}
DUP_DEFENCE = "from ggl.defenses import Defense, register\n\n@register\nclass Clip(Defense):\n    name: str = 'clip'\n"
DUP_ATTACKER = ("from dataclasses import dataclass\nfrom ggl.attack.attackers import register\n"
                "from ggl.attack.attackers.base import Attacker\n\n@register('ggl-l2')\n@dataclass\nclass L2(Attacker):\n"
                "    pass\n")


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A folder on sys.path for plugin modules; the registries, the loaded set and sys.modules restored."""
    defences, attackers, loaded = DEFENCES.snapshot(), ATTACKERS.snapshot(), set(plugins._loaded)
    modules = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    yield tmp_path
    DEFENCES.restore(defences)
    ATTACKERS.restore(attackers)
    plugins._loaded.clear()
    plugins._loaded.update(loaded)
    for name in set(sys.modules) - modules:
        if not name.startswith(("ggl", "torch", "numpy", "lightning", "pytorch_lightning")):
            del sys.modules[name]


def entry_point(folder: Path, group: str, module: str, source: str) -> None:
    """An installed package (a .dist-info on sys.path) declaring ``module`` in entry-point ``group``."""
    (folder / f"{module}.py").write_text(source)
    info = folder / f"{module}_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{module} = {module}\n")


def one_line(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------------------ shipped modules only
@pytest.mark.parametrize("folder, shipped", [("defenses", SHIPPED_DEFENCES), ("attack/attackers", SHIPPED_ATTACKERS)])
def test_the_shipped_list_names_every_module_of_the_folder(folder, shipped):
    """The one list of what loads. A new attacker file (grid_observed.py ...) fails here until it is listed."""
    here = {p.stem for p in (ROOT / "ggl" / folder).glob("*.py")}
    assert set(shipped) <= here, f"listed but missing in ggl/{folder}: {sorted(set(shipped) - here)}"
    assert here - MACHINERY[folder] == set(shipped), \
        f"ggl/{folder} holds modules not in its SHIPPED list: {sorted(here - MACHINERY[folder] - set(shipped))}"


def test_a_stray_file_or_package_in_the_plugin_folders_never_runs(tmp_path):
    """Before: pkgutil.iter_modules imported every .py file and sub-package there, on every run (even
    ``python -m ggl.sweep FILE --list``)."""
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    strays = [ROOT / "ggl" / "defenses" / "zz_stray_test.py", ROOT / "ggl" / "attack" / "attackers" / "zz_stray_test.py"]
    package = ROOT / "ggl" / "defenses" / "zz_stray_pkg_test"
    try:
        for path in strays:
            path.write_text(code)
        package.mkdir()
        (package / "__init__.py").write_text(code)
        out = subprocess.run([sys.executable, "-m", "ggl.sweep", "configs/sweep_tiny.yaml", "--list",
                              f"output_dir={tmp_path / 'runs'}"], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=300)
    finally:
        for path in strays + [package / "__init__.py"]:
            path.unlink(missing_ok=True)
        if package.exists():
            package.rmdir()
    assert out.returncode == 0, out.stderr[-2000:]
    assert not marker.exists(), marker.read_text()


# ------------------------------------------------------------------------------------------ named plugins
def test_the_example_defense_and_attacker_load_as_config_plugins(sandbox, make_cfg):
    sandbox.joinpath("my_defense.py").write_text((ROOT / "examples" / "my_defense.py").read_text())
    sandbox.joinpath("my_attacker.py").write_text((ROOT / "examples" / "my_attacker.py").read_text())
    with pytest.raises(ConfigError, match="not a known defence"):
        make_cfg("defenses=[{name: threshold, tau: 0.5}]")
    cfg = make_cfg("plugins=[my_defense, my_attacker]", "defenses=[{name: threshold, tau: 0.5}]")
    assert cfg.defenses[0].label == "thr0.5" and "prior-best-of-n" in available_attackers()


def test_an_entry_point_plugin_loads_without_a_config_key(sandbox, make_cfg):
    entry_point(sandbox, "ggl.defenses", "ep_threshold", (ROOT / "examples" / "my_defense.py").read_text())
    cfg = make_cfg("defenses=[{name: threshold, tau: 0.25}]")
    assert cfg.defenses[0].label == "thr0.25"


@pytest.mark.parametrize("value, needle", [("[no_such_plugin_mod]", "no module named 'no_such_plugin_mod'"),
                                           ("['not a module']", "is not a dotted module name"),
                                           ("[my..mod]", "is not a dotted module name")])
def test_a_missing_or_malformed_plugin_name_is_one_line(sandbox, make_cfg, value, needle):
    with pytest.raises(UserError, match=needle) as err:
        make_cfg(f"plugins={value}")
    assert "plugins[0]" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ broken plugins
BROKEN = {"syntax": ("x = 1\ndef f(:\n", "line 2", "SyntaxError"),
          "import": ("import os\nimport no_such_dependency_xyz\n", "line 2", "no module named 'no_such_dependency_xyz'"),
          "raises": ("import os\n\nraise RuntimeError('boom')\n", "line 3", "RuntimeError: boom"),
          "exits": ("import sys\nsys.exit(0)\n", "line 2", "SystemExit: code 0")}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_plugin_is_one_line_naming_its_file_and_line(sandbox, capsys, kind):
    source, line, what = BROKEN[kind]
    (sandbox / f"broken_{kind}.py").write_text(source)
    rc = train_main(["--config", "fed_q4.yaml", f"plugins=[broken_{kind}]"])
    err = one_line(capsys, rc, f"broken_{kind}.py, {line}", "plugins[0]")
    assert what.lower() in err.lower()


def test_a_broken_plugin_through_train_py_is_no_traceback(sandbox):
    (sandbox / "broken_plugin.py").write_text("def f(:\n")
    out = subprocess.run([sys.executable, "train.py", "--config", "fed_q4.yaml", "plugins=[broken_plugin]"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "broken_plugin.py, line 1" in out.stderr and len(out.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ a name twice
def _sweep_file(folder: Path) -> Path:
    text = (ROOT / "configs" / "sweep_tiny.yaml").read_text().replace("configs/sweep_tiny.yaml", "x.yaml")
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind, source, needle", [
    ("ggl.defenses", DUP_DEFENCE, "two defences are registered as 'clip': ggl.defenses.clip.Clip and dup_ep.Clip"),
    ("ggl.attackers", DUP_ATTACKER, "two attackers are registered as 'ggl-l2': "
                                    "ggl.attack.attackers.ggl_latent.GGLAttacker and dup_ep.L2")])
def test_a_name_registered_twice_is_one_line_at_every_entry_point(sandbox, capsys, kind, source, needle):
    entry_point(sandbox, kind, "dup_ep", source)
    runs = {"train.py": lambda: train_main(["--config", "fed_q4.yaml"]),
            "attack.py": lambda: attack_main([]),
            "ggl.sweep": lambda: sweep_main([str(_sweep_file(sandbox)), "--list", f"output_dir={sandbox / 'runs'}"]),
            "ggl.report": lambda: report_main([str(sandbox)])}
    for name, run in runs.items():
        one_line(capsys, run(), needle)
