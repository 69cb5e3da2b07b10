"""The command line's manners: --version, help on every api flag, --set errors that blame the flag,
"did you mean" for misspelt keys, and Ctrl-C naming the run directory to resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import main
from services.local import LocalExecutor

CONFIG = "prompts: p.jsonl\nactor: {model: tiny}\nrefiner: {model: tiny}\n"


def _config(tmp_path: Path, text: str = CONFIG) -> Path:
    (tmp_path / "p.jsonl").write_text('{"prompt": "Say hi."}\n')
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_version_and_api_help(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("spar ") and len(out.split()) == 2
    with pytest.raises(SystemExit):
        main(["api", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--host HOST address to listen on" in help_text and "--port PORT TCP port" in help_text


def test_a_set_error_blames_the_flag_and_suggests_the_key(tmp_path, capsys) -> None:
    config = _config(tmp_path)
    runs = tmp_path / "runs"
    code = main(
        ["run", str(config), "--runs-dir", str(runs), "--set", "search.branchng=3", "--set", "judge.votes=0"]
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and not runs.exists()
    assert "--set search.branchng=3: search.branchng: unknown key (did you mean 'branching'?)" in err
    assert "--set judge.votes=0: judge.votes: Input should be greater than or equal to 1" in err
    assert str(config) not in err  # the file is fine: nothing blames it


def test_a_misspelt_yaml_key_names_the_file_and_the_right_key(tmp_path, capsys) -> None:
    config = _config(tmp_path, CONFIG + "train_actor: {lerning_rate: 1.0e-6}\nsampel: {}\n")
    assert main(["run", str(config), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{config}: invalid run configuration" in err
    assert "train_actor.lerning_rate: unknown key (did you mean 'learning_rate'?)" in err
    assert "sampel: unknown key (did you mean 'sample'?)" in err
    assert "--set" not in err


def test_an_error_prints_its_brackets_literally(tmp_path, capsys) -> None:
    """Messages suggest YAML such as ``roles: [actor]``: the console must not take it for markup."""
    config = _config(tmp_path, CONFIG + "sample: {num_responses: [3]}\nhub: {repo_id: me/spar}\n")
    assert main(["run", str(config), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "(roles: [actor])" in err
    assert "sample.num_responses" in err and "[3]" in err


def test_ctrl_c_prints_the_resume_command_with_the_real_run_dir(tmp_path, capsys, monkeypatch) -> None:
    def interrupted(self) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalExecutor, "run", interrupted)
    runs = tmp_path / "runs"
    code = main(
        ["run", str(_config(tmp_path)), "--runs-dir", str(runs), "--run-id", "ctrl-c", "--no-progress"]
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 130
    assert (runs / "ctrl-c").is_dir() and f"continue with `spar run --resume {runs / 'ctrl-c'}`" in err
    assert "RUN_DIR" not in err
