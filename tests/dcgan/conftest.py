"""DCGAN's tests share the training tests' one-thread setting (tiny networks on a shared CPU)."""

from tests.train.conftest import _one_thread  # noqa: F401  (an autouse fixture)
