"""Rebuild the knowledge base (chat and scan) from the Eco² reference data (a development step).

    python -m eco2.services.knowledge.build /path/to/shared/reference-data/eco2

The product reads only the files written here (rules.json, prices.yaml, taxonomy.yaml); it
never reads the reference-data folder at run time. Facts are copied, not edited: see SOURCES.md
for provenance (eco2-team/backend, MIT). The reference's character_names.yaml is not copied:
the characters are CharacterService's catalog (services/character/migrations).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def build(reference: Path, out: Path = HERE) -> dict:
    documents = []
    for path in sorted(reference.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        documents.append({"file": path.stem, **doc})
    rules = {
        "source": "eco2-team/backend@4c3eebb3 apps/chat_worker/infrastructure/assets/data/source (MIT)",
        "documents": documents,
    }
    (out / "rules.json").write_text(json.dumps(rules, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    taxonomy = {
        **yaml.safe_load((reference / "item_class_list.yaml").read_text(encoding="utf-8")),
        **yaml.safe_load((reference / "situation_tags.yaml").read_text(encoding="utf-8")),
    }
    (out / "taxonomy.yaml").write_text(
        "# item_class_list.yaml + situation_tags.yaml of eco2-team/backend@4c3eebb3 (MIT)\n"
        + yaml.safe_dump(taxonomy, allow_unicode=True, sort_keys=False),
        encoding="utf-8",
    )
    shutil.copyfile(reference / "recyclable_prices.yaml", out / "prices.yaml")
    return {"documents": len(documents)}


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
