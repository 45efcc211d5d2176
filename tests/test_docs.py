"""The README stays true: its commands match CI and every setting is documented."""

from __future__ import annotations

import importlib
import re

from pydantic_settings import BaseSettings

from eco2.services.registry import SERVICES


def _env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            names.add(str(alias.choices[0]))
        else:
            names.add((prefix + name).upper())
    return names


def _settings_classes() -> list[type[BaseSettings]]:
    from eco2.mesh.envoy import IngressSettings
    from eco2.services.runtime.settings import RuntimeSettings
    from eco2.services.up import UpSettings

    classes = {RuntimeSettings, UpSettings, IngressSettings}
    for target in SERVICES.values():
        module = importlib.import_module(target.partition(":")[0])
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings:
                classes.add(value)
    return sorted(classes, key=lambda c: c.__name__)


def test_every_setting_is_documented(repo_root):
    docs = (repo_root / "README.md").read_text()
    for path in sorted((repo_root / "docs" / "services").glob("*.md")) if (repo_root / "docs" / "services").is_dir() else []:
        docs += path.read_text()
    def documented(env: str) -> bool:
        if env.endswith("_ADDR") and "ECO2_<NAME>_ADDR" in docs:
            return True
        return re.search(rf"\b{re.escape(env)}\b", docs) is not None

    missing = sorted(f"{cls.__name__}.{env}" for cls in _settings_classes() for env in _env_names(cls) if not documented(env))
    assert missing == [], "document these settings in README.md or docs/services/NAME.md: " + ", ".join(missing)


def test_ci_runs_the_readme_test_command(repo_root):
    readme = (repo_root / "README.md").read_text()
    block = re.search(r"## Tests\n```bash\n(.+?)\n```", readme, re.S)
    assert block, "README needs a ## Tests section with the test command"
    command = block.group(1).strip()
    ci = (repo_root / ".ci" / "run").read_text()
    assert command in ci.splitlines(), f"{command!r} must appear verbatim in .ci/run"


def test_readme_has_the_two_setup_commands(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert "pip install -e '.[dev]'" in readme and "eco2 up" in readme
