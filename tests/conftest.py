"""Test-session settings: one torch thread per pytest worker (``make test`` runs two workers on 2 cores)
and a fixed seed before every test, so results do not depend on the order the tests run in."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fixed_seed() -> None:
    torch.manual_seed(0)
