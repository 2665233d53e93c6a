"""CheckpointPolicy: offsets are committed only once a checkpoint holding their events is durable."""

import threading

from monitor.durability import CheckpointPolicy
from monitor.state import StateStore


class Source:
    """Records what a Kafka source would be asked to commit (our own logic only)."""

    def __init__(self):
        self.commits = []

    def commit(self, positions, timeout_ms=None):
        self.commits.append(dict(positions))


def test_commits_only_durable_positions(tmp_path):
    store = StateStore(str(tmp_path), "sha256:x")
    policy = CheckpointPolicy(store, commit_seconds=0.0, positions={"t:0": 5})
    lock, source = threading.RLock(), Source()
    state = {"positions": {"t:0": 10}}

    policy.commit(source)
    assert source.commits == [{"t:0": 5}]  # the restored positions are durable already

    assert policy.checkpoint(lock, lambda: (dict(state), dict(state["positions"])))
    assert policy.checkpoints == 1 and store.load()["positions"] == {"t:0": 10}
    policy.commit(source)
    assert source.commits[-1] == {"t:0": 10}
    policy.commit(source)
    assert len(source.commits) == 2  # unchanged positions are not committed again

    # an unchanged state is durable without a new write
    assert policy.checkpoint(lock, lambda: (_ for _ in ()).throw(AssertionError("no snapshot expected")))

    state["positions"] = {"t:0": 20}
    policy.changed = True
    assert policy.checkpoint(lock, lambda: (dict(state), dict(state["positions"])), force=True)
    assert not policy.retry.failing and policy.durable() == {"t:0": 20}
    policy.commit(source)
    assert source.commits[-1] == {"t:0": 20}


def test_a_failing_save_is_counted_and_a_before_hook_runs_under_the_lock(tmp_path):
    class Failing(StateStore):
        fail = True

        def save(self, state):
            if self.fail:
                raise OSError(28, "No space left on device")
            super().save(state)

    store = Failing(str(tmp_path), "sha256:x")
    policy = CheckpointPolicy(store)
    lock, seen = threading.RLock(), []

    def before():  # under the lock; what it returns (the dead letters' wait) runs outside it, before the save
        seen.append(("before", lock._is_owned()))
        return lambda: seen.append(("settle", lock._is_owned(), policy.checkpoints))

    assert not policy.checkpoint(lock, lambda: ({"n": 1}, {"t:0": 1}), force=True, before=before)
    assert policy.retry.failures == 1 and policy.durable() == {} and policy.checkpoints == 0
    store.fail = False
    assert policy.checkpoint(lock, lambda: ({"n": 1}, {"t:0": 1}), force=True, before=before)
    assert policy.durable() == {"t:0": 1} and policy.checkpoints == 1
    assert seen == [("before", True), ("settle", False, 0)] * 2
