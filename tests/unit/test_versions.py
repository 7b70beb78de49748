"""One name rule and one reference syntax for datasets and models (models/versions.py): NAME@vN, with the
registry's NAME:vN accepted as the same reference by both."""

from __future__ import annotations

import pytest

from models.datasets import parse_dataset_ref
from models.registry import Registry, RegistryError, parse_ref


@pytest.mark.parametrize("ref", ["fracatlas@v2", "fracatlas:v2", "fracatlas@2", "fracatlas:2", " fracatlas@v2 "])
def test_both_kinds_read_both_syntaxes(ref):
    assert parse_dataset_ref(ref) == ("fracatlas", 2)
    assert parse_ref(ref) == ("fracatlas", 2)


def test_a_name_alone_means_the_latest_version():
    assert parse_dataset_ref("fracatlas") == ("fracatlas", None) and parse_ref("fracatlas") == ("fracatlas", None)


@pytest.mark.parametrize("ref, says", [
    ("x@v0", "a number from 1 up"), ("x@latest", "a number from 1 up"), ("bad name@v1", "is not NAME or NAME@vN"), ("", "is not NAME"),
])
def test_bad_dataset_references_say_what_to_write(ref, says):
    with pytest.raises(ValueError, match=says):
        parse_dataset_ref(ref)


@pytest.mark.parametrize("ref, says", [("m:v0", "positive number"), ("m@vx", "positive number"), ("-m", "must be 1-64 letters")])
def test_bad_model_references_say_what_to_write(ref, says):
    with pytest.raises(RegistryError, match=says):
        parse_ref(ref)


def test_the_bundled_model_resolves_in_either_syntax(tmp_path):
    registry = Registry.with_bundled(tmp_path / "models")
    assert registry.resolve("demo-dcgan@v1").ref == registry.resolve("demo-dcgan:v1").ref == "demo-dcgan:v1"
