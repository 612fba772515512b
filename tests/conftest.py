import pytest


@pytest.fixture(autouse=True, scope="session")
def private_prior_cache(tmp_path_factory):
    """Priors cache to disk; the tests use a folder of their own, never the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DIFFSORT_REORDER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
