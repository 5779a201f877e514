import pytest

from tests.helpers import Daemon, Processes


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.cleanup()


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"


@pytest.fixture
def daemons():
    """Start daemons with ``daemons(state_dir, *args)``; every one is stopped at teardown."""
    started: list[Daemon] = []

    def start(state_dir, *args, **kw) -> Daemon:
        d = Daemon(state_dir, *args, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
