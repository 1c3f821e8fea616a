"""What importing the package and building the CLI's parser pull in: no torch for `--help`,
one family's diffusers pipeline for one Sparse* class, and the parser's copies of names that
live behind heavy imports."""

import subprocess
import sys

import pytest

from dit_sparse import cli

HEAVY = ("torch", "diffusers", "transformers", "matplotlib", "triton")


def _imported_after(code: str) -> tuple[list[str], str]:
    """Heavy modules in sys.modules after running `code` in a fresh interpreter, and its stderr."""
    probe = f"{code}\nimport sys\nprint('imported:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    line = proc.stdout.splitlines()[-1]
    assert line.startswith("imported:"), proc.stdout
    return [m for m in line[len("imported:"):].split(",") if m], proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["compare", "--help"], ["bench", "--help"]])
def test_help_imports_no_torch(argv):
    code = f"from dit_sparse.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _imported_after(code)[0] == []


def test_import_dit_sparse_is_light_and_names_resolve():
    assert _imported_after("import dit_sparse\nimport dit_sparse.cli")[0] == []
    import dit_sparse
    from dit_sparse.api import apply

    assert dit_sparse.apply is apply and set(dit_sparse.__all__) <= set(dir(dit_sparse))
    with pytest.raises(AttributeError):
        dit_sparse.no_such_name


def test_one_drop_in_pipeline_imports_only_its_family_quietly():
    imported, err = _imported_after(
        "from dit_sparse.pipelines import SparseWanPipeline\n"
        "import sys\nassert 'diffusers.pipelines.flux.pipeline_flux' not in sys.modules"
    )
    assert "torch" in imported and "torchvision" not in err and err.strip() == ""


def test_every_drop_in_pipeline_resolves():
    import diffusers

    import dit_sparse.pipelines as pipelines

    for name in pipelines.__all__:
        cls = getattr(pipelines, name)
        stock = getattr(diffusers, cls.__mro__[1].__name__)
        assert cls.__name__ == name and cls.__mro__[1] is stock and getattr(pipelines, name) is cls


def test_parser_copies_match_their_sources():
    from dit_sparse import bench_options
    from dit_sparse.bench import kernels as kernel_benchmark
    from dit_sparse.compare import PRESET_NAMES

    assert cli.PRESET_CHOICES == PRESET_NAMES
    assert bench_options.SHAPE_NAMES == tuple(kernel_benchmark.SHAPES)


def _help(*argv) -> str:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    return sub[argv[0]].format_help() if argv else parser.format_help()


def test_help_says_what_presets_do_on_the_cpu_and_what_lpips_needs():
    text = " ".join(_help("generate").split())
    assert "slower than dense" in text and "fast, with the most sparse heads, is the slowest" in text
    text = " ".join(_help("compare").split())
    assert "torchvision" in text and "AlexNet weights" in text
