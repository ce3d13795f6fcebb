"""One warmed-up pool of math-verify workers shared by the reward tests (start-up costs ~1 s each)."""

import pytest

from sspo.rewards import RewardScorer, SymbolicVerifier


@pytest.fixture(scope="session")
def verifier():
    with SymbolicVerifier(workers=2) as verifier:
        verifier.warmup()
        yield verifier


@pytest.fixture()
def scorer(verifier):
    with RewardScorer(timeout=1.0, verifier=verifier) as scorer:
        yield scorer
