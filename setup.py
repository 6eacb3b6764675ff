"""Packages the top-level ``configs/`` folder as ``generative_recommenders/configs`` (package data),
so that an installed package finds every config by name; the checkout keeps ``configs/`` where
the reference's commands expect it. Everything else is declared in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["generative_recommenders*"]), "generative_recommenders.configs"],
    package_dir={"generative_recommenders.configs": "configs"},
    package_data={"generative_recommenders.configs": ["*/*.gin", "*/*.toml"]},
)
