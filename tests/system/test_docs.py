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
    for path in (
        sorted((repo_root / "docs" / "services").glob("*.md")) if (repo_root / "docs" / "services").is_dir() else []
    ):
        docs += path.read_text()

    def documented(env: str) -> bool:
        if env.endswith("_ADDR") and "ECO2_<NAME>_ADDR" in docs:
            return True
        return re.search(rf"\b{re.escape(env)}\b", docs) is not None

    missing = sorted(
        f"{cls.__name__}.{env}" for cls in _settings_classes() for env in _env_names(cls) if not documented(env)
    )
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


def test_doc_links_and_adr_references_resolve(repo_root):
    """Every relative link of the Markdown docs names a file that exists, and every ADR a doc
    (`ADR NNNN`, `docs/adr/NNNN`) or a module (`docs/adr/NNNN`) refers to exists."""
    adrs = {path.name[:4] for path in (repo_root / "docs" / "adr").glob("[0-9][0-9][0-9][0-9]-*.md")}
    docs = [repo_root / "README.md", *sorted((repo_root / "docs").rglob("*.md"))]
    code = [
        path
        for folder in ("services", "gateway", "mesh", "bench", "tests")
        for path in sorted((repo_root / folder).rglob("*.py"))
        if "node_modules" not in path.parts
    ]
    broken = []
    for path in docs:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not target.startswith(("http://", "https://", "mailto:")) and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(repo_root)}: link {target}")
        for number in re.findall(r"\bADRs? ([0-9]{4})\b", text):
            if number not in adrs:
                broken.append(f"{path.relative_to(repo_root)}: ADR {number}")
    for path in docs + code:
        for number in re.findall(r"docs/adr/([0-9]{4})", path.read_text()):
            if number not in adrs:
                broken.append(f"{path.relative_to(repo_root)}: docs/adr/{number}")
    assert broken == [], "references to files or ADRs that do not exist: " + "; ".join(broken)
