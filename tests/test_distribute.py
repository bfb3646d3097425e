"""Multi-worker training: TF_CONFIG checks, and real worker processes on loopback ports."""

import json

import pytest

from swsl_cli import distribute
from swsl_cli.distribute import ClusterError, read_cluster


def tf_config(workers, index, task_type="worker", **jobs):
    return json.dumps(
        {"cluster": {"worker": workers, **jobs}, "task": {"type": task_type, "index": index}}
    )


TWO = ["127.0.0.1:2222", "127.0.0.1:2223"]


def test_cluster_names_tasks_and_the_chief():
    worker1 = read_cluster(tf_config(TWO, 1))
    assert worker1.size == 2 and worker1.name == "worker 1" and not worker1.is_chief
    assert worker1.peers() == [("worker 0", "127.0.0.1:2222")]
    assert read_cluster(tf_config(TWO, 0)).is_chief
    with_chief = read_cluster(tf_config(TWO, 0, chief=["127.0.0.1:2221"]))
    assert with_chief.size == 3 and not with_chief.is_chief
    assert read_cluster(tf_config(TWO, 0, "chief", chief=["127.0.0.1:2221"])).is_chief
    assert distribute.is_chief(None)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "lacks its 'cluster' or 'task'"),
        (tf_config(TWO, 2), "task index 2 is not a worker of the cluster (it has 2: index 0 to 1)"),
        (tf_config(TWO, -1), "task index -1"),
        (tf_config(TWO, "0"), 'task index "0"'),
        (tf_config(TWO, True), "task index true"),
        (tf_config(TWO, 0, "chief"), 'task type "chief" is not a job of its cluster'),
        (tf_config(TWO, 0, ps=["127.0.0.1:3"]), "job 'ps' is not supported"),
        (tf_config([], 0), "'worker' must be a non-empty list"),
        (tf_config(["127.0.0.1"], 0), "worker[0] must be 'host:port', got \"127.0.0.1\""),
        (tf_config(["127.0.0.1:99999"], 0), "must be 'host:port'"),
        (tf_config([TWO[0], TWO[0]], 0), "names 127.0.0.1:2222 twice"),
        (tf_config(TWO, 0, chief=TWO), "may have one 'chief', got 2"),
    ],
)
def test_bad_tf_config_is_one_clear_line(text, message):
    with pytest.raises(ClusterError) as caught:
        read_cluster(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_several_workers_need_one_seed_unless_resuming():
    with pytest.raises(ClusterError, match="with 2 workers needs --seed"):
        distribute.check_command(tf_config(TWO, 0), seed=None, resume=False)
    assert distribute.check_command(tf_config(TWO, 0), seed=None, resume=True).size == 2
    assert distribute.check_command(tf_config(TWO[:1], 0), seed=None, resume=False).size == 1


def test_scratch_logdir_only_off_the_chief_and_removed_at_the_end():
    with distribute.scratch_logdir(read_cluster(tf_config(TWO, 0))) as chief_scratch:
        assert chief_scratch is None
    with pytest.raises(RuntimeError):
        with distribute.scratch_logdir(read_cluster(tf_config(TWO, 1))) as scratch:
            (scratch / "run").mkdir()
            raise RuntimeError("stops mid-run")
    assert scratch.name.startswith("swsl-worker1-") and not scratch.exists()
