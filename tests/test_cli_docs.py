"""What the README and the CLI point a new user to: files that exist, prompts the demo model
knows, and Python snippets whose dit_sparse imports resolve."""

import ast
import importlib
import re
from pathlib import Path

import pytest

from dit_sparse import cli
from dit_sparse.demo import VOCABULARY, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLE_PROMPTS = ROOT / "examples" / "prompts.txt"


def test_prompts_files_named_in_the_docs_exist():
    named = re.findall(r"--prompts (\S+)", README + cli.__doc__)
    assert "examples/prompts.txt" in named
    for path in named:  # "your_..." marks a file of the user's own
        assert path.startswith("your_") or (ROOT / path).is_file(), path


def test_example_prompts_use_only_words_the_demo_model_knows():
    prompts = [line for line in EXAMPLE_PROMPTS.read_text().splitlines() if line.strip()]
    assert prompts
    tokenizer = build_tokenizer()
    for prompt in prompts:
        assert set(prompt.split()) <= set(VOCABULARY), prompt
        assert tokenizer.unk_token_id not in tokenizer(prompt)["input_ids"]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("block", _python_blocks(README), ids=lambda b: b.splitlines()[0][:40])
def test_readme_python_parses_and_its_dit_sparse_imports_resolve(block):
    tree = ast.parse(block)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("dit_sparse"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


def test_readme_shows_the_demo_model_from_python():
    block = next(b for b in _python_blocks(README) if "dit_sparse.demo" in b)
    assert "load_pipeline(" in block and "call_arguments(" in block
