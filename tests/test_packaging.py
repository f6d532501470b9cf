"""What a library in this field ships: its license's text, a changelog, type information, where the project
lives, and examples that the tests run (so that none of them rots). The wheel itself is built and installed
by tests/e2e/test_install.py."""

import re

import tomllib

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_license_file_is_the_license_pyproject_declares():
    assert PROJECT["project"]["license"] == "Apache-2.0"
    assert PROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_changelog_has_an_unreleased_section_and_an_entry_for_this_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    version = PROJECT["project"]["version"]
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings[:2] == ["Unreleased", version]
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, re.M)
    assert f"[{version}]: " in text and "[Unreleased]: " in text  # the headings' links


def test_the_package_is_marked_typed_and_the_marker_ships():
    assert (ROOT / "supervisor" / "py.typed").is_file()
    assert "py.typed" in PROJECT["tool"]["setuptools"]["package-data"]["oomladder"]
    assert "Typing :: Typed" in PROJECT["project"]["classifiers"]


def test_the_project_says_where_it_lives_and_what_it_is_for():
    project = PROJECT["project"]
    assert project["authors"] and {"Homepage", "Source", "Issues", "Changelog"} <= set(project["urls"])
    assert all(url.startswith("https://") for url in project["urls"].values())
    classifiers = project["classifiers"]
    assert "Topic :: Scientific/Engineering :: Artificial Intelligence" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the SPDX expression says it (PEP 639)


def test_every_example_is_run_by_an_end_to_end_test():
    examples = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    assert examples == ["accelerate_loop.py", "lightning_finetune.py", "plain_api.py", "trainer_lora.py",
                        "trl_sft.py"]
    tests = "\n".join(p.read_text() for p in (ROOT / "tests" / "e2e").glob("test_*.py"))
    for name in examples:
        assert re.search(rf'ROOT / "examples" / "{re.escape(name)}"', tests), f"no test runs examples/{name}"
    listed = (ROOT / "examples" / "README.md").read_text()
    assert all(f"`{name}`" in listed for name in examples)
