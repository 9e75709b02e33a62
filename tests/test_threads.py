"""One KVBucket shared by 8 threads against the real server of the ``kvpio_server`` fixture.

Each thread owns a disjoint set of keys, mirrors its own writes in a plain dict
and checks every read of its own keys against it (no other thread writes them,
so any difference is a stale or lost answer); it also reads what the others
write. Afterwards the bucket must hold exactly the union of the threads' dicts.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from kvpio_mapping import KVBucket
from kvpio_mapping.paths import MISSING, delete_in, get_in, parse, set_in

THREADS = 8
KEYS = 3
SEGMENTS = ("a", "b", "1", "2")


class Worker:
    def __init__(self, bucket: KVBucket, number: int, seed: int) -> None:
        self.bucket = bucket
        self.number = number
        self.random = random.Random(seed)
        self.model: dict[str, Any] = {}
        self.keys = [f"t{number}-{j}" for j in range(KEYS)]
        self.operations = 0

    def path(self) -> str:
        key = self.random.choice(self.keys)
        depth = self.random.randrange(3)
        return "/".join([key, *self.random.choices(SEGMENTS, k=depth)])

    def value(self) -> Any:
        return self.random.choice(
            [self.operations, f"s{self.operations}", [1, {"x": self.operations}], {"a": [1, 2]}]
        )

    def expect(self, path: str) -> Any:
        found = get_in(self.model, parse(path))
        return "<missing>" if found is MISSING else found

    def step(self) -> None:
        bucket, model, choice = self.bucket, self.model, self.random.randrange(12)
        path = self.path()
        if choice <= 1:
            value = self.value()
            try:
                set_in(model, parse(path), value)
            except ValueError:
                with pytest.raises(ValueError):
                    bucket[path] = value
            else:
                bucket[path] = value
        elif choice == 2:
            assert bucket.pop(path, "<missing>") == self.expect(path), path
            delete_in(model, parse(path))
        elif choice == 3:
            pairs = {key: self.value() for key in self.random.sample(self.keys, 2)}
            bucket.update(pairs)
            model.update(pairs)
        elif choice == 4:
            key, value = self.random.choice(self.keys), self.value()
            assert bucket.setdefault(key, value) == model.setdefault(key, value), key
        elif choice in (5, 6):
            bucket.get(f"t{self.random.randrange(THREADS)}-{self.random.randrange(KEYS)}")
            len(bucket)
        elif choice in (7, 8):
            # dict(bucket) is keys() then one lookup per key: a key another thread
            # deletes in between raises KeyError, as a dict changed during iteration raises.
            bucket.copy()
            list(bucket.items())
        else:
            expected = self.expect(path)
            assert bucket.get(path, "<missing>") == expected, path
            assert (path in bucket) == (expected != "<missing>"), path
        self.operations += 1


@pytest.mark.slow
@pytest.mark.parametrize(("ttl", "steps"), [(5.0, 60), (0, 20)], ids=["cached", "uncached"])
def test_threads_sharing_a_bucket_each_see_their_own_writes(kvpio_account, ttl, steps):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=ttl)
    workers = [Worker(bucket, number, seed=number) for number in range(THREADS)]
    errors: list[BaseException] = []

    def run(worker: Worker) -> None:
        try:
            for _ in range(steps):  # a count, not a time: a busy machine runs the same test
                worker.step()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    expected: dict[str, Any] = {}
    for worker in workers:
        expected.update(worker.model)
    truth = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    assert dict(truth) == expected
    assert dict(bucket) == expected
    assert all(worker.operations == steps for worker in workers)
