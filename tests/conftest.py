import logging
from pathlib import Path

import pytest
import torch

from generative_recommenders.logs import configure_logging
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


@pytest.fixture(autouse=True)
def _project_logs_reach_caplog():
    """A training run in an earlier test sets up the project's stdout channel, which stops
    propagation to the root logger; each test starts with propagation on, so caplog sees its records."""
    configure_logging()  # the project's lines on stdout (capsys), whichever test ran first
    logging.getLogger("generative_recommenders").propagate = True
