"""The command line: every command and option explained with its default, errors as exit code 1 with a message,
and the library importable beside a project's own ``models``."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from peftcore.cli import main, parse, parser


def test_errors_exit_1_with_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert "peftcore info: error:" in capsys.readouterr().err


@pytest.mark.parametrize("own", ["models.py", "models/__init__.py"])
def test_the_library_and_the_cli_work_beside_a_projects_own_models(own, tmp_path):
    """Projects have a models.py or models/ of their own; peftcore's models install as peftcore.models, so neither
    shadows them nor is shadowed (the working directory comes first on sys.path, as in any script)."""
    (tmp_path / own).parent.mkdir(exist_ok=True)
    (tmp_path / own).write_text("raise ImportError('the project's own models were imported')\n")
    library = subprocess.run([sys.executable, "-c", "from peftcore.models import BertModel; import peftcore.cli"],
                             cwd=tmp_path, capture_output=True, text=True)
    assert library.returncode == 0, library.stderr
    cli = subprocess.run([sys.executable, "-m", "peftcore.cli", "--help"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert cli.returncode == 0 and "convert" in cli.stdout, cli.stderr


def all_commands() -> dict[str, argparse.ArgumentParser]:
    return parser()._subparsers._group_actions[0].choices


def test_help_gives_every_option_a_meaning_and_its_default(capsys):
    for name, command in all_commands().items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            assert action.help, (name, action.dest)
            default = action.default
            if default is not None and default is not False and default != argparse.SUPPRESS:
                assert f"(default: {default})" in text, (name, action.dest)
            elif action.dest not in ("help", "bf16", "overwrite") and (action.option_strings or action.nargs == "*"):
                assert "default: " in " ".join(action.help.split()), (name, action.dest)


def test_top_level_help_lists_every_subcommand_and_version_exists(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    printed = " ".join(capsys.readouterr().out.split())
    for choice in parser()._subparsers._group_actions[0]._choices_actions:
        assert f" {choice.dest} {' '.join(choice.help.split())}" in printed, choice.dest
    assert set(all_commands()) == {"convert", "info", "embed", "finetune", "compare", "predict", "merge"}
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == "peftcore 0.1.0"


def test_compare_and_finetune_write_to_different_default_directories():
    assert parse(["compare"]).out == "out/compare" and parse(["finetune"]).out == "out/finetune"
