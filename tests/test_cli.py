import subprocess
import sys

from blockmae.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for words, _, _ in COMMANDS:
        assert words[0] in out


def test_unknown_command_exits_non_zero():
    proc = subprocess.run([sys.executable, "-m", "blockmae", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr
