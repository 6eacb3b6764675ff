from pathlib import Path

import pytest
import torch

from generative_recommenders.ops import jagged

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(params=["torch", "fbgemm"])
def jagged_backend(request) -> str:
    """Runs a test once per jagged backend (the test passes it on); fbgemm is skipped when it does not import."""
    if request.param == "fbgemm" and not jagged.fbgemm_available():
        pytest.skip("fbgemm_gpu does not import")
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
