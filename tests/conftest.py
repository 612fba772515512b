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
