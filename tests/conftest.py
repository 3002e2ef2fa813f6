"""Fixtures shared by the tests (pytest.ini puts the repository root on the path)."""
import pytest


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """The digits demo dataset in both layouts, written once per session: copy it before changing it."""
    from tools.make_demo_dataset import make_demo_dataset  # here: scikit-learn is slow to import

    path = tmp_path_factory.mktemp('digits')
    make_demo_dataset(str(path))
    return path
