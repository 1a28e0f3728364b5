"""Build script. The package is pure Python today; compiled executors (csrc/) will be added
here as a torch extension, built against the torch that is installed (hence
``pip install --no-build-isolation``), and skippable on machines that cannot build them."""
from setuptools import setup

setup()
