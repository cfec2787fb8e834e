"""Shared fixtures: tiny random models load in well under a second; the real embedded models are
session-scoped and only used by tests marked ``slow``."""

from __future__ import annotations

import pytest
import torch

from abspos_utils.models import load_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llama():
    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gemma3():
    return load_model("tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_mistral():
    return load_model("tiny-mistral")


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    return load_model("gemma3-270m")
