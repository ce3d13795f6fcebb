"""The ``async`` section's checks: each bad value is an error naming its field."""

import pytest

from sspo.trainer.asynchronous import AsyncConfig, check_async_config
from sspo.trainer.config import ConfigError


def test_defaults_are_the_synchronous_trainer_and_valid():
    c = AsyncConfig()
    assert (c.workers, c.on_stale) == (0, "wait")
    check_async_config(c)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("workers", -1, "async.workers: must be an int >= 0, got -1"),
        ("workers", 1.5, "async.workers: must be an int >= 0, got 1.5"),
        ("max_staleness", -2, "async.max_staleness: must be an int >= 0, got -2"),
        ("on_stale", "skip", "async.on_stale: 'skip' is not one of wait, drop"),
        ("worker_timeout_s", 0, "async.worker_timeout_s: must be a finite number > 0, got 0"),
        ("worker_timeout_s", float("inf"), "async.worker_timeout_s: must be a finite number > 0, got inf"),
    ],
)
def test_bad_values_name_their_field(field, value, message):
    with pytest.raises(ConfigError) as err:
        check_async_config(AsyncConfig(**{field: value}))
    assert str(err.value) == message
