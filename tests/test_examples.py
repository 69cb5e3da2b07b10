"""Every shipped example config validates, and its prompt file exists (what a newcomer runs first)."""

from pathlib import Path

import pytest

from services.runs import load_config_file

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"demo.yaml", "tiny.yaml", "tiny_iopo.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path: Path) -> None:
    config = load_config_file(path)
    assert Path(config.prompts).is_file(), f"{path.name}: prompts file {config.prompts} is missing"
    if config.init is not None:
        for data in (config.init.actor_data, config.init.refiner_data):
            assert data is None or Path(data).is_file(), f"{path.name}: init data {data} is missing"
