"""The README's results tables are what the committed results files say (benchmarks/readme_results.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_tables_match_the_committed_results():
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "benchmarks" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    assert module.render(readme) == readme, "README.md is stale: run python benchmarks/readme_results.py"
    for name in module.BLOCKS:  # every block is there and not empty
        start = readme.index(f"<!-- generated:{name} -->")
        assert readme.index(f"<!-- /generated:{name} -->") - start > 200
