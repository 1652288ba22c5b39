"""The Lean project scaffold: it matches the image and never overwrites anything."""

from __future__ import annotations

import tomllib
from dataclasses import replace

from atp_notebook.images import DEFAULT_IMAGE, Image
from atp_notebook.project import MATHLIB_GIT, ensure_project, has_project, package_name, scaffold


def test_scaffold_pins_the_images_toolchain_and_mathlib(tmp_path):
    made = scaffold(tmp_path / "lean_workdir", DEFAULT_IMAGE)
    root = tmp_path / "lean_workdir"
    assert made.written == (".atpignore", ".gitignore", "lakefile.toml", "lean-toolchain")
    assert (root / "lean-toolchain").read_text() == "leanprover/lean4:v4.26.0\n"
    lakefile = tomllib.loads((root / "lakefile.toml").read_text())
    assert lakefile["name"] == "lean_workdir"
    assert lakefile["require"] == [{"name": "mathlib", "git": MATHLIB_GIT, "rev": "v4.26.0"}]
    ignored = (root / ".gitignore").read_text().splitlines()
    assert ".lake/" in ignored and ".atp/" in ignored
    assert (root / ".atpignore").read_text() == ".atp/\n"  # run logs stay out of sync
    text = made.describe()
    assert "toolchain leanprover/lean4:v4.26.0" in text and "Mathlib v4.26.0" in text and DEFAULT_IMAGE.tag in text


def test_an_image_without_pins_gets_an_unpinned_project(tmp_path):
    made = scaffold(tmp_path, Image("custom:latest"))
    assert "lean-toolchain" not in made.written and not (tmp_path / "lean-toolchain").exists()
    assert "rev" not in tomllib.loads((tmp_path / "lakefile.toml").read_text())["require"][0]
    assert made.describe().startswith("Created a Lean project in ") and "custom:latest:" in made.describe()


def test_existing_files_are_never_overwritten(tmp_path):
    (tmp_path / "lean-toolchain").write_text("leanprover/lean4:v4.9.0\n")
    (tmp_path / ".gitignore").write_text("mine\n")
    made = scaffold(tmp_path, DEFAULT_IMAGE)
    assert made.written == (".atpignore", "lakefile.toml")
    assert (tmp_path / "lean-toolchain").read_text() == "leanprover/lean4:v4.9.0\n"
    assert (tmp_path / ".gitignore").read_text() == "mine\n"


def test_ensure_project_leaves_an_existing_project_alone(tmp_path):
    (tmp_path / "lakefile.lean").write_text("import Lake\n")
    assert has_project(tmp_path)
    assert ensure_project(tmp_path, DEFAULT_IMAGE) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lakefile.lean"]
    fresh = tmp_path / "fresh"
    assert ensure_project(fresh, replace(DEFAULT_IMAGE, mathlib_rev="v4.20.0")) is not None
    assert 'rev = "v4.20.0"' in (fresh / "lakefile.toml").read_text()
    assert ensure_project(fresh, DEFAULT_IMAGE) is None  # once


def test_package_names_are_valid_lake_names(tmp_path):
    assert package_name(tmp_path / "my proofs-2") == "my_proofs_2"
    assert package_name(tmp_path / "2024") == "p_2024"
    assert package_name(tmp_path / "---") == "workdir"


def test_prepare_adopts_the_warm_manifest_inside_the_session(tmp_path, monkeypatch):
    from atp_notebook.images import DEFAULT_IMAGE
    from atp_notebook.kernel import KernelSession
    from atp_notebook.project import prepare

    warm = tmp_path / "mathlib-cache"
    (warm / ".lake" / "packages").mkdir(parents=True)
    (warm / "lake-manifest.json").write_text('{"version": "1.1.0", "packages": []}\n')
    monkeypatch.setenv("ATP_BAKED_LAKE", str(warm / ".lake"))
    workdir = tmp_path / "work"
    kernel = KernelSession("local", workdir=workdir, say=lambda text: None)
    try:
        created = prepare(workdir, DEFAULT_IMAGE, kernel)
        assert created is not None and created.warm
        assert "lake-manifest.json" in created.written and "warm Mathlib cache" in created.describe()
        assert (workdir / "lake-manifest.json").read_text() == (warm / "lake-manifest.json").read_text()
        assert prepare(workdir, DEFAULT_IMAGE, kernel) is None  # already a project: nothing happens
    finally:
        kernel.close()


def test_prepare_without_a_warm_cache_only_scaffolds(tmp_path, monkeypatch):
    from dataclasses import replace

    from atp_notebook.backends.local import LocalBackend, LocalConfig
    from atp_notebook.images import DEFAULT_IMAGE
    from atp_notebook.kernel import KernelSession
    from atp_notebook.project import prepare

    monkeypatch.delenv("ATP_BAKED_LAKE", raising=False)
    image = replace(DEFAULT_IMAGE, baked_lake=str(tmp_path / "absent" / ".lake"))
    kernel = KernelSession("local", workdir=tmp_path / "w", say=lambda text: None,
                           backend_factory=lambda name, **c: LocalBackend(LocalConfig(image=image)))
    try:
        created = prepare(tmp_path / "w", image, kernel)
    finally:
        kernel.close()
    assert created is not None and not created.warm
    assert not (tmp_path / "w" / "lake-manifest.json").exists()
