"""Bad input is one clear line on stderr with exit code 2; good input loads and merges."""
import pytest

from ggl.cli import train_main
from ggl.config import load_config
from ggl.core.errors import ConfigError


def test_fed_configs_differ_only_in_defence():
    base = load_config("fed_fp32.yaml")
    for name, bits, rounding in [("fed_q8.yaml", 8, "nearest"), ("fed_q4.yaml", 4, "nearest"),
                                 ("fed_q2.yaml", 2, "nearest"), ("fed_q4_stochastic.yaml", 4, "stochastic")]:
        cfg = load_config(name)
        assert [(d.bits, d.rounding, d.range) for d in cfg.defenses] == [(bits, rounding, "global")]
        assert cfg.fl == base.fl and cfg.data == base.data and cfg.model == base.model
    assert base.defenses == []


def test_overrides_win_and_are_typed():
    cfg = load_config("fed_q4.yaml", ["fl.rounds=7", "trainer.devices=2", "defenses.0.bits=3"])
    assert cfg.fl.rounds == 7 and cfg.trainer["devices"] == 2 and cfg.defenses[0].bits == 3


@pytest.mark.parametrize("argv, needle", [
    (["fl.rouns=3"], "unknown config key 'fl.rouns' in section 'fl'; did you mean 'fl.rounds'?"),
    (["dta.name=digits"], "unknown config key 'dta' in the top level; did you mean 'data'?"),
    (["defenses.0.bits=17"], "'defenses[0].bits' = 17 must be in 1..16, or 32 for off"),
    (["defenses.0.rounding=up"], "'defenses[0].rounding' = 'up' is not one of nearest, stochastic"),
    (["fl.client_fraction=1.5"], "'fl.client_fraction' = 1.5 is out of range"),
    (["data.alpha=0"], "'data.alpha' = 0"),
    (["fl.rounds=abc"], "config key 'fl.rounds'"),
    (["trainer.max_epochs=3"], "'trainer.max_epochs' is set by 'fl.rounds"),
    (["trainer.devicez=2"], "did you mean 'trainer.devices'?"),
    (["data.num_clients=100000"], "'data.num_clients' = 100000 exceeds"),
    (["rounds"], "must look like key=value"),
])
def test_bad_input_is_one_line_exit_2(argv, needle, capsys, tmp_path):
    code = train_main(["--config", "fed_q4.yaml", f"output_dir={tmp_path}", "logger.mode=disabled"] + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_missing_config_file_suggests_nearest(capsys):
    assert train_main(["--config", "fed_q5.yaml"]) == 2
    err = capsys.readouterr().err
    assert "config file 'fed_q5.yaml' not found" in err and "did you mean" in err


def test_unknown_defence_and_key_inside_defence():
    with pytest.raises(ConfigError, match="not a known defence; did you mean 'quantize'"):
        load_config("fed_fp32.yaml", ["defenses=[{name: quantise}]"])
    with pytest.raises(ConfigError, match="unknown config key 'defenses\\[0\\].bit' .*did you mean 'defenses\\[0\\].bits'"):
        load_config("fed_fp32.yaml", ["defenses=[{name: quantize, bit: 4}]"])


def test_base_chain_and_yaml_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nseed: 3\n")
    (tmp_path / "b.yaml").write_text("seed: 1\nfl: {rounds: 9}\n")
    cfg = load_config(tmp_path / "a.yaml")
    assert cfg.seed == 3 and cfg.fl.rounds == 9
    (tmp_path / "bad.yaml").write_text("fl: [1, 2\n")
    with pytest.raises(ConfigError, match="could not be read"):
        load_config(tmp_path / "bad.yaml")


def test_unwritable_output_dir_fails_before_training(capsys, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the runs folder should go")
    code = train_main(["--config", "fed_q4.yaml", f"output_dir={blocker / 'runs'}", "logger.mode=disabled",
                       "data.name=digits"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write run results to" in err and "output_dir=" in err
    assert "Traceback" not in err
