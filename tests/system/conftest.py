"""The real brokers of tests/sync/ serve the service's tests too (doctor's broker check)."""

from tests.sync.conftest import broker_factory  # noqa: F401 (a fixture)
