"""Every command of the README's usage block runs, in-process, on tiny data (extra flags only make it fast)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from prnad.cli import main
from tests.conftest import FAST_TRAIN

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = {
    "train": [*FAST_TRAIN, "--seen-anomalies", "2", "--no-progress"],
    "evaluate": [],
    "calibrate": [],
    "layout-set": ["--per-kind", "2"],
    "predict": [],
    "export": [],
    "synth": ["--image-size", "64", "--seen-anomalies", "2"],
    "demo": ["--iterations", "2", "--image-size", "64", "--no-progress"],
}


def readme_commands() -> list[str]:
    """The `prnad ...` lines of the README's bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("prnad ")]


def test_readme_has_the_issue_commands():
    commands = readme_commands()
    assert "prnad train --data ../shared/data/mvtec_ad/bottle --out runs/bottle --seed 0" in commands
    assert "prnad evaluate runs/bottle --save-maps runs/bottle/maps" in commands
    assert "prnad demo" in commands
    assert "prnad export runs/bottle --format openvino" in commands
    assert any(c.startswith("prnad predict") and "--engine openvino" in c for c in commands)
    assert any(c.startswith("prnad synth --data ../shared/data/mvtec_ad/bottle --textures") for c in commands)


def test_readme_commands_run(tiny_category: Path, textures: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(README.parent / "configs")
    for line in readme_commands():
        line = line.replace("../shared/data/mvtec_ad/bottle", str(tiny_category)).replace(
            "../shared/data/dtd/images", str(textures)
        )
        argv = shlex.split(line)[1:]
        if "--config" in argv:  # the MobileNetV2 weights file may be absent here; the config must still parse
            argv += ["--backbone-weights", "random"]
        argv += FAST[argv[0]] if argv[0] != "train" or "--iterations" not in argv else []
        assert main(argv) == 0, line


def test_readme_states_the_size_of_the_fault_suite():
    source = (README.parent / "tests" / "test_faults.py").read_text()
    count = len(re.findall(r"^def test_", source, flags=re.M))
    cli_doc = README.parent / "docs" / "cli.md"
    stated = re.search(r"The fault suite \(`tests/test_faults.py`\) holds (\d+) cases", cli_doc.read_text())
    assert stated is not None and int(stated.group(1)) == count
