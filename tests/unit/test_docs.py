"""The docs stay true without services: a short README, every setting documented by its
environment variable, every page of the MkDocs nav present, the client example extractable."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README_MAX_LINES = 160


def nav_pages(node) -> list[str]:
    """Every file the nav names (nested sections included); external links are not pages."""
    if isinstance(node, str):
        return [] if "://" in node else [node]
    if isinstance(node, dict):
        return [page for value in node.values() for page in nav_pages(value)]
    if isinstance(node, list):
        return [page for item in node for page in nav_pages(item)]
    return []


def mkdocs_config() -> dict:
    # yaml.safe_load: mkdocs.yml has no Python tags; a test must not need mkdocs itself.
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): depth belongs in docs/"
    )


def test_every_setting_is_documented_by_its_environment_variable():
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix, "Settings lost its env prefix"
    text = (DOCS / "configuration.md").read_text()
    missing = [
        f"{prefix}{name}".upper()
        for name in Settings.model_fields
        if f"`{prefix}{name}`".upper() not in text.upper()
    ]
    assert not missing, f"docs/configuration.md does not name {', '.join(missing)}"


def test_every_nav_page_exists():
    config = mkdocs_config()
    docs_dir = ROOT / config.get("docs_dir", "docs")
    pages = nav_pages(config["nav"])
    assert pages, "mkdocs.yml has no nav"
    missing = [page for page in pages if not (docs_dir / page).is_file()]
    assert not missing, f"mkdocs.yml names pages that do not exist: {', '.join(missing)}"


def test_every_page_is_in_the_nav():
    pages = set(nav_pages(mkdocs_config()["nav"]))
    orphans = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    orphans = [p for p in orphans if p not in pages]
    assert not orphans, f"pages missing from the mkdocs.yml nav: {', '.join(orphans)}"


def test_the_client_example_is_one_python_block():
    # tests/e2e/test_readme_client.py runs this block against a real stack.
    text = (DOCS / "client.md").read_text()
    assert text.count("<!-- client-example:start -->") == 1
    assert text.count("<!-- client-example:end -->") == 1
    block = re.search(
        r"<!-- client-example:start -->\s*```python\n(.*?)```\s*<!-- client-example:end -->",
        text,
        re.S,
    )
    assert block, "docs/client.md lost its client example"
    compile(block.group(1), "docs/client.md", "exec")


def documented_order_fields() -> list[str]:
    text = (DOCS / "operating" / "watch.md").read_text()
    table = text.split("<!-- order-json-fields:start -->")[1].split(
        "<!-- order-json-fields:end -->"
    )
    return re.findall(r"^\| `([a-z_]+)` \|", table[0], re.M)


def order_details_keys() -> tuple[list[str], set[str]]:
    """The keys of the dict `order_details` returns, and of its timeline rows, read from the
    source (no database needed)."""
    import ast

    tree = ast.parse((ROOT / "choreo" / "app" / "queries.py").read_text())
    func = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "order_details"
    )
    (returned,) = [
        n.value
        for n in ast.walk(func)
        if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict)
    ]
    assert isinstance(returned, ast.Dict)
    top = [k.value for k in returned.keys if isinstance(k, ast.Constant)]
    rows = {
        k.value
        for d in ast.walk(func)
        if isinstance(d, ast.Dict)
        and any(isinstance(k, ast.Constant) and k.value == "what" for k in d.keys)
        for k in d.keys
        if isinstance(k, ast.Constant)
    }
    return top, rows


def test_choreo_order_json_fields_are_documented_each_and_in_order():
    top, rows = order_details_keys()
    assert documented_order_fields() == top
    text = (DOCS / "operating" / "watch.md").read_text()
    timeline_row = next(r for r in text.splitlines() if r.startswith("| `timeline` |"))
    assert rows == {"at", "service", "what", "detail"}
    assert all(f"`{k}`" in timeline_row for k in rows)
