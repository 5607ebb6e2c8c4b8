"""Hostile input to train.py / attack.py: one line on stderr naming the key or file and the fix, exit
code 2, no traceback, no run folder; Ctrl-C says how to resume (exit 130); one set of config defaults;
a script given another job's config refuses it; model.checkpoint is honoured; the package declares
and caps what it imports and ships its configs; one round numbering."""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ggl.cli import attack_main, train_main
from ggl.config import CONFIG_DIR, Config, _read_yaml, load_config, resolve_config_path
from ggl.core.errors import UserError

REPO = Path(__file__).resolve().parent.parent
TINY = ["logger.mode=disabled", "data.name=digits", "data.num_clients=4", "fl.local_epochs=1", "fl.rounds=2",
        "fl.eval_every=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


def _fails_cleanly(code: int, capsys, runs: Path, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert not runs.exists() or not any(runs.rglob("*")), f"run folder left behind: {list(runs.rglob('*'))}"
    return err


# ------------------------------------------------------------------------------- 1. tracebacks -> one line
@pytest.mark.parametrize("override, needle", [
    ("seed=-1", "'seed' = -1 must be in 0..4294967295"),
    (f"seed={2**32}", "'seed' = 4294967296 must be in 0..4294967295"),
    ("data.split_seed=-5", "'data.split_seed' = -5 must be in 0.."),
    ("seed=" + "9" * 30, "'seed' = 999999999999"),
    ("seed=" + "1" * 5000, "'seed' = 111111111111...(5000 characters) is too large"),
    ("fl.rounds=" + "7" * 1000, "'fl.rounds' = 777777777777...(1000 characters) is too large"),
    ("trainer.devices=0", "'trainer.devices' = 0 must be 1 or more"),
    ("trainer.num_nodes=0", "'trainer.num_nodes' = 0 must be 1 or more"),
    ("trainer.accelerator=tpu", "config section 'trainer' (trainer.accelerator='tpu'"),
    ("trainer.precision=7", "Precision 7 is invalid"),
    ("torch_threads=0", "'torch_threads' = 0 must be >= 1"),
])
def test_bad_values_are_one_line_and_leave_no_run_folder(override, needle, capsys, tmp_path):
    runs = tmp_path / "runs"
    code = train_main(["--config", "fed_q4.yaml", f"output_dir={runs}", *TINY, override])
    _fails_cleanly(code, capsys, runs, needle)


def test_thousand_digit_integer_in_a_file(capsys, tmp_path):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("base: " + str(CONFIG_DIR / "_fed_base.yaml") + "\nseed: " + "1" * 5000 + "\n")
    code = train_main(["--config", str(cfg), f"output_dir={tmp_path / 'runs'}", *TINY])
    err = _fails_cleanly(code, capsys, tmp_path / "runs", str(cfg), "integers must fit in 64 bits")
    assert "set_int_max_str_digits" not in err  # Python's advice is not the fix here


@pytest.fixture
def fresh_dataset_cache():
    from ggl.data import sources

    sources._cached.cache_clear()
    yield
    sources._cached.cache_clear()


@pytest.mark.parametrize("content", ["truncated", "crafted"])
def test_damaged_dataset_cache_is_one_clear_error(content, tmp_path, fresh_dataset_cache):
    from ggl.data.sources import load_dataset

    cache = tmp_path / "ggl_mnist_32.pt"
    good = {"images": torch.zeros(4, 1, 32, 32, dtype=torch.uint8), "labels": torch.tensor([0, 1, 2, 3]),
            "num_classes": 10}
    torch.save(good, cache)
    assert len(load_dataset("mnist", str(tmp_path))) == 4  # a good cache loads
    sources_cache_clear()
    if content == "truncated":
        cache.write_bytes(cache.read_bytes()[:200])
    else:  # right keys, wrong contents: float images, a label beyond num_classes
        torch.save({"images": torch.rand(4, 1, 32, 32), "labels": torch.tensor([0, 1, 2, 30]), "num_classes": 10}, cache)
    with pytest.raises(UserError, match=rf"dataset cache '{re.escape(str(cache))}' .*delete it and run again"):
        load_dataset("mnist", str(tmp_path))


def sources_cache_clear():
    from ggl.data import sources

    sources._cached.cache_clear()


def _truth(tmp_path, **changes) -> Path:
    from ggl.audit.truth import FORMAT

    blob = {"obs_id": "x", "dataset": {"name": "digits"}, "indices": torch.tensor([3, 5]),
            "labels": torch.tensor([1, 2]), "round": 0, "client_id": 0, "format": FORMAT, **changes}
    path = tmp_path / "truth.pt"
    torch.save(blob, path)
    return path


def _evaluator():
    from ggl.audit.evaluate import Evaluator

    ev = Evaluator.__new__(Evaluator)  # ground-truth checks need no LPIPS network
    ev._data_cache = {}
    return ev


def test_ground_truth_negative_unknown_and_out_of_range_indices(tmp_path):
    from ggl.audit.truth import GroundTruth

    gt, images = _evaluator().truth(_truth(tmp_path), "x")
    assert images.shape == (2, 1, 32, 32) and gt.indices.tolist() == [3, 5]
    with pytest.raises(UserError, match="dataset index -1 is negative"):  # -1 would pick the last image
        GroundTruth.load(_truth(tmp_path, indices=torch.tensor([3, -1])))
    with pytest.raises(UserError, match="unknown key 'victim'"):
        GroundTruth.load(_truth(tmp_path, victim=3))
    with pytest.raises(UserError, match=r"dataset index 99999 is out of range for 'digits' \(1797 images\)"):
        _evaluator().truth(_truth(tmp_path, indices=torch.tensor([3, 99999])), "x")
    with pytest.raises(UserError, match="its dataset config does not fit"):
        _evaluator().truth(_truth(tmp_path, dataset={"name": "digits", "colour": 1}), "x")


def test_all_nan_observation_is_refused_not_scored(tmp_path):
    from _attack_fixtures import make_observation
    from ggl.attack.observation import Observation

    obs = make_observation(torch.rand(1, 1, 32, 32), torch.tensor([3]))
    good = obs.save(tmp_path / "good.pt")
    assert Observation.load(good).batch_size == 1
    obs.update = [torch.full_like(t, float("nan")) for t in obs.update]
    bad = obs.save(tmp_path / "nan.pt")
    with pytest.raises(UserError, match=r"its update holds \d+ NaN/Inf of \d+ values; nothing to attack"):
        Observation.load(bad)


# ------------------------------------------------------------------------------- 2. Ctrl-C
def test_ctrl_c_prints_the_resume_command_and_it_resumes(tmp_path, capsys, monkeypatch):
    from ggl.fl.module import FedAvgModule

    runs = tmp_path / "runs"
    argv = ["--config", "fed_fp32.yaml", f"output_dir={runs}", *TINY]
    real_step = FedAvgModule.training_step

    def interrupted_in_round_2(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(FedAvgModule, "training_step", interrupted_in_round_2)
    assert train_main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    run_dir = (runs / "fed_fp32" / "latest").resolve()
    command = shlex.split(err[-1].split("interrupted; resume with: ", 1)[1])
    assert command[:2] == ["python", "train.py"] and command[-1] == f"resume={run_dir}"

    monkeypatch.setattr(FedAvgModule, "training_step", real_step)
    assert train_main(command[2:]) == 0, capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["final"]["rounds"] == 2 and [h["round"] for h in results["history"]] == [1, 2]


def test_ctrl_c_before_training_says_start_again(tmp_path, capsys, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("ggl.jobs.federation.FederatedDataModule.setup", interrupt)
    assert train_main(["--config", "fed_q4.yaml", f"output_dir={tmp_path}", *TINY]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("interrupted before training started; start again with: python train.py --config fed_q4.yaml")


# ------------------------------------------------------------------------------- 3. defaults
def test_empty_config_file_is_an_error(tmp_path, capsys):
    for text in ("", "# only a comment\n", "{}\n"):
        (tmp_path / "empty.yaml").write_text(text)
        code = train_main(["--config", str(tmp_path / "empty.yaml"), f"output_dir={tmp_path / 'runs'}"])
        _fails_cleanly(code, capsys, tmp_path / "runs", "is empty")


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_schema_defaults_are_the_documented_base_values():
    documented = dict(_leaves(OmegaConf.to_container(_read_yaml(CONFIG_DIR / "_fed_base.yaml"))))
    schema = dict(_leaves(OmegaConf.to_container(OmegaConf.structured(Config))))
    differ = {k: (v, schema.get(k, "<not in schema>")) for k, v in documented.items() if schema.get(k, object()) != v}
    assert not differ, f"_fed_base.yaml (documented) vs schema default: {differ}"
    # and a minimal federation file runs on exactly those values
    assert load_config(CONFIG_DIR / "fed_fp32.yaml") == load_config(None, ["task=fedavg"])


@pytest.mark.parametrize("yaml_file, section", [("attack.yaml", "attack"), ("gan_mnist.yaml", "gan")])
def test_attack_and_gan_schema_defaults_are_their_documented_values(yaml_file, section):
    """One set of defaults: a config that omits a key gets what the shipped YAML documents."""
    documented = dict(_leaves(OmegaConf.to_container(_read_yaml(CONFIG_DIR / yaml_file))[section]))
    schema = dict(_leaves(OmegaConf.to_container(OmegaConf.structured(Config))[section]))
    assert {k: (v, schema.get(k)) for k, v in documented.items() if schema.get(k, object()) != v} == {}
    assert set(schema) <= set(documented), f"undocumented {section} keys: {set(schema) - set(documented)}"


# ------------------------------------------------------------------------------- 4. one job, its configs
def test_attack_py_refuses_a_federation_config(tmp_path, capsys):
    code = attack_main(["--config", "fed_q4.yaml", f"output_dir={tmp_path / 'runs'}"])
    _fails_cleanly(code, capsys, tmp_path / "runs", "config 'fed_q4.yaml' has task: fedavg, a job for train.py",
                   "python train.py --config fed_q4.yaml", "attack.yaml", "source=runs/fed_q4/latest")


def test_train_py_refuses_an_attack_config(tmp_path, capsys):
    code = train_main(["--config", "attack.yaml", f"output_dir={tmp_path / 'runs'}"])
    _fails_cleanly(code, capsys, tmp_path / "runs", "a job for attack.py, not train.py", "fed_q4.yaml")


@pytest.mark.parametrize("main, own, other", [(train_main, ["fed_q4.yaml", "gan_mnist.yaml"], "attack.yaml"),
                                              (attack_main, ["attack.yaml", "attack_adam.yaml"], "fed_q4.yaml")])
def test_help_shows_own_examples_and_configs(main, own, other, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    examples, configs = out.split("examples:", 1)[1].split("configs (", 1)
    script = "train.py" if main is train_main else "attack.py"
    assert all(line.strip().startswith(f"python {script}") for line in examples.strip().splitlines())
    assert all(name in configs for name in own) and other not in configs and "sweep" not in configs
    assert other not in out  # not even as the --config example


# ------------------------------------------------------------------------------- 5. model.checkpoint
def test_model_checkpoint_is_the_starting_state(make_cfg, tmp_path):
    from lightning.pytorch.callbacks import Callback

    from ggl.jobs.federation import run_federation
    from ggl.models import build_model

    start = build_model("cnn", 1, 10, seed=123).state_dict()
    torch.save(start, tmp_path / "start.pt")

    class FirstWeights(Callback):
        def on_train_start(self, trainer, module):
            self.state = {k: v.clone() for k, v in module.model.state_dict().items()}

    seen = FirstWeights()
    cfg = make_cfg(f"model.checkpoint={tmp_path / 'start.pt'}", "fl.rounds=1")
    run_federation(cfg, extra_callbacks=[seen])
    assert all(torch.equal(seen.state[k], v) for k, v in start.items())


@pytest.mark.parametrize("make, needle", [
    (None, "no such file"),
    (lambda p: p.write_text("not weights"), "could not be read as weights"),
    (lambda p: torch.save(__import__("ggl.models", fromlist=["x"]).build_model("lenet", 1, 10).state_dict(), p),
     "does not fit model.name=cnn: it lacks parameter"),
    (lambda p: torch.save(__import__("ggl.models", fromlist=["x"]).build_model("cnn", 1, 7).state_dict(), p),
     "is (7,"),
])
def test_bad_model_checkpoint_is_one_line_before_any_run_folder(make, needle, tmp_path, capsys):
    path = tmp_path / "start.pt"
    if make is not None:
        make(path)
    code = train_main(["--config", "fed_fp32.yaml", f"output_dir={tmp_path / 'runs'}", *TINY, f"model.checkpoint={path}"])
    _fails_cleanly(code, capsys, tmp_path / "runs", "model.checkpoint", needle)


# ------------------------------------------------------------------------------- 6. packaging
IMPORT_TO_DIST = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow"}


def _third_party_imports() -> set:
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for path in (REPO / "ggl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names} - stdlib - {"ggl", "__future__"}
    return found


def test_pyproject_declares_and_caps_what_ggl_imports():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # + the optional integrations (ggl.flower imports flwr only when that extra is installed)
    deps = project["dependencies"] + project["optional-dependencies"]["flower"]
    parsed = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower().replace("_", "-"): d for d in deps}
    missing = {m for m in _third_party_imports() if IMPORT_TO_DIST.get(m, m).lower() not in parsed}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
    uncapped = [d for d in deps if "<" not in d or ">=" not in d]
    assert not uncapped, f"every dependency needs a floor and a cap: {uncapped}"
    for name in ("torch", "torchvision"):  # a major cap, not one patch release
        assert not re.search(r"<=\s*\d", parsed[name]), parsed[name]


def test_bare_config_name_resolves_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("fed_q4") == CONFIG_DIR / "fed_q4.yaml"
    with pytest.raises(UserError, match="is a folder; give one YAML file"):
        resolve_config_path(str(tmp_path))


def test_installed_wheel_finds_its_configs_anywhere(tmp_path):
    """Build the wheel, unpack it (no checkout beside it), load a bare config name from another folder."""
    pytest.importorskip("setuptools")
    import shutil

    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "ggl", "configs", "checkpoints"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, source / part, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / part).is_dir() else {}))
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(source)], capture_output=True, text=True)
    if build.returncode:
        pytest.skip(f"cannot build a wheel offline here: {build.stderr[-300:]}")
    import zipfile

    site = tmp_path / "site"
    zipfile.ZipFile(next(wheel_dir.glob("ggl-*.whl"))).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("from ggl.config import load_config; c = load_config('fed_q4.yaml'); "
            "print(c.defenses[0].bits, c.fl.rounds)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.split() == ["4", "20"]


# ------------------------------------------------------------------------------- 8. threads
def test_torch_threads_applies_to_the_federation(make_cfg, tmp_path, monkeypatch, capsys):
    from ggl.fl.module import FedAvgModule

    seen = []
    real_step = FedAvgModule.training_step

    def step(self, batch, batch_idx):
        seen.append(torch.get_num_threads())
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(FedAvgModule, "training_step", step)
    before = torch.get_num_threads()
    try:
        assert train_main(["--config", "fed_fp32.yaml", f"output_dir={tmp_path}", *TINY, "torch_threads=1"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]


def test_openmp_threads_wait_passively_unless_the_user_says_otherwise():
    code = "import ggl, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True).stdout.strip()
    assert run(env) == "PASSIVE"
    assert run({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_wheel_package_list_is_every_ggl_package():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ggl").rglob("__init__.py")}
    assert listed - {"ggl.configs", "ggl.checkpoints"} == found


# ------------------------------------------------------------------------------- 7. one round numbering
# Round r names the state after r completed rounds (0 = the initial model): history/results "round",
# the logged "round" metric, audit.rounds (a capture at round r uses the global model after r rounds),
# checkpoint roundNNNN.ckpt and the W&B step.
@pytest.fixture(scope="module")
def two_round_run(tmp_path_factory):
    from lightning.pytorch.loggers import WandbLogger

    from ggl.jobs.federation import run_federation

    tmp = tmp_path_factory.mktemp("rounds")
    logged = []
    real = WandbLogger.log_metrics

    def record(self, metrics, step=None):
        logged.append((step, dict(metrics)))
        return real(self, metrics, step)

    WandbLogger.log_metrics = record
    try:
        cfg = load_config("fed_fp32.yaml", [f"output_dir={tmp}", *TINY, "logger.mode=offline", "audit.rounds=[1]",
                                            "audit.num_images=1"])
        res = run_federation(cfg)
    finally:
        WandbLogger.log_metrics = real
    return res, Path(res["run_dir"]), logged


def test_history_results_and_audit_count_completed_rounds(two_round_run):
    from ggl.attack.observation import Observation
    from ggl.audit.truth import GroundTruth

    res, run_dir, logged = two_round_run
    assert [h["round"] for h in res["history"]] == [1, 2] and res["final"]["rounds"] == 2
    assert sorted(m["round"] for _, m in logged if "round" in m) == [1.0, 2.0]
    obs_files = list((run_dir / "audit" / "observations").rglob("*.pt"))
    assert [p.name for p in obs_files] == ["r0001_b000.pt"]
    assert Observation.load(obs_files[0]).round == 1
    assert GroundTruth.load(run_dir / "audit" / "ground_truth" / "r0001_b000.pt").round == 1


def test_checkpoint_names_count_completed_rounds(two_round_run):
    _, run_dir, _ = two_round_run
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("round*.ckpt")) == ["round0002.ckpt"]


def test_wandb_step_counts_completed_rounds(two_round_run):
    _, _, logged = two_round_run
    assert all(step == int(m["round"]) for step, m in logged if "round" in m)
