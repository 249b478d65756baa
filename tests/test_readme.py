"""The README's two set-up commands and the CI script agree."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    cmds = _setup_commands()
    assert len(cmds) == 2, cmds
    assert all("\n" not in c for c in cmds)
    assert cmds[0].startswith("pip install -e . && incdet ")
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = _setup_commands()[1]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci


def test_main_job_subcommand_exists():
    from incdet.cli import main
    import pytest

    verb = _setup_commands()[0].split("&& incdet ", 1)[1].split()[0]
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
