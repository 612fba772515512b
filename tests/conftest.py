import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def private_prior_cache(tmp_path_factory):
    """Priors cache to disk; the tests use a folder of their own, never the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DIFFSORT_REORDER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server (tests/postgres.py), stopped at the end of the session."""
    from postgres import Server

    server = Server()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server, request):
    """The URL of a fresh, empty database on the test server."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    return postgres_server.create_database(name)


def pytest_configure(config):
    """Each of pytest-xdist's workers (``make test`` runs one per core) takes its share of the
    cores, as a study's local workers do (:func:`diffsort_reorder.run.runtime.use_threads`)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and workers.isdigit():
        from diffsort_reorder.run.runtime import choose_threads, use_threads

        # In the environment, so that every run's auto threads (and every subprocess) keep it.
        os.environ.setdefault("OMP_NUM_THREADS", str(choose_threads(jobs=int(workers))))
        use_threads()


@pytest.fixture
def two_threads():
    """torch on 2 intra-op threads for the test (restored after): for results that are known
    to depend on the thread count (a learned prior whose optimum moves at one thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
