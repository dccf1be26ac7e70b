"""Multi-worker training (TF_CONFIG, MultiWorkerMirroredStrategy) on 127.0.0.1 only: two worker
processes train as one process does on the same global batch, only the chief writes
--save_dir, a worker killed mid-run ends the other with one error line within seconds, and
--resume on every worker continues. Other stacks refuse TF_CONFIG in one line."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import compat as C
import helpers
import runsetup
from conftest import ROOT

KERAS3_TF = C.KERAS3 and C.BACKEND == 'tensorflow'
needs_tf = pytest.mark.skipif(not KERAS3_TF, reason='multi-worker: Keras 3 + TensorFlow only')
# one tiny CapsNet (routing 1: the cluster is checked here, not routing), 4 steps of a global
# batch of 50 (25 per worker) per epoch
FLAGS = helpers.TINY_FLAGS + ['--batch_size', '50', '--seed', '0', '--shift_fraction', '0',
                              '--routings', '1']
COLUMNS = ('loss', 'capsnet_loss', 'decoder_loss', 'val_loss')
LIMIT_S = 300  # a hang fails the test instead of the CI job


def tf_config(ports, index):
    return json.dumps({'cluster': {'worker': ['127.0.0.1:%d' % p for p in ports]},
                       'task': {'type': 'worker', 'index': index}})


def free_ports(n):
    """n TCP ports of 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(tmp_path, name, argv):
    """Two `capsulenet.py argv` worker processes of one cluster -> [Popen]; their stdout and
    stderr go to tmp_path/<name>-w<i>.out / .err (read them with `output`)."""
    ports = free_ports(2)
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=tf_config(ports, index), TF_CPP_MIN_LOG_LEVEL='3',
                   MPLBACKEND='Agg', CAPSNET_THREADS='1', KERAS_BACKEND='tensorflow',
                   TMPDIR=str(tmp_path))  # a killed worker's temporary folder stays in there
        out = open(str(tmp_path / ('%s-w%d.out' % (name, index))), 'w')
        err = open(str(tmp_path / ('%s-w%d.err' % (name, index))), 'w')
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, 'capsulenet.py')]
                                      + [str(a) for a in argv], stdout=out, stderr=err,
                                      env=env, cwd=ROOT))
        out.close()
        err.close()
    return procs


def output(tmp_path, name, index):
    """(stdout, stderr) text of worker `index` of start_workers(tmp_path, name, ...)."""
    return tuple(open(str(tmp_path / ('%s-w%d.%s' % (name, index, kind)))).read()
                 for kind in ('out', 'err'))


def wait_all(procs, limit_s=LIMIT_S):
    """Exit codes of procs; kills every one still running after limit_s seconds."""
    deadline = time.time() + limit_s
    try:
        return [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def wait_for(path, procs, limit_s=LIMIT_S):
    deadline = time.time() + limit_s
    while not os.path.exists(path):
        assert time.time() < deadline, 'no %s after %d s' % (path, limit_s)
        assert all(p.poll() is None for p in procs), 'a worker ended before %s' % path
        time.sleep(0.2)


def log_columns(path):
    import pandas
    log = pandas.read_csv(path)
    return log['epoch'].tolist(), {c: log[c].to_numpy() for c in COLUMNS}


@pytest.fixture
def data_dir(tmp_path):
    path = str(tmp_path / 'mnist')
    helpers.fake_mnist(path, 200, 40)
    return path


def kill_after_first_checkpoint(tmp_path, argv, shared, killed):
    """Starts two workers on argv + --epochs 100, SIGKILLs worker `killed` once the chief
    has written weights-01.h5, and checks that the other ends within 120 s with one error
    line naming it, the checkpoint kept. -> the survivor's stdout."""
    procs = start_workers(tmp_path, 'kill', argv + ['--epochs', '100'])
    try:
        wait_for(os.path.join(shared, 'weights-01.h5'), procs)
    finally:
        procs[killed].send_signal(signal.SIGKILL)
    survivor = 1 - killed
    started = time.time()
    code = wait_all([procs[survivor]], limit_s=120)[0]
    assert time.time() - started < 120
    out, err = output(tmp_path, 'kill', survivor)
    helpers.assert_one_error_line(code, err, 'multi-worker training stopped')
    assert 'task:%d' % killed in err and '--resume' in err
    assert os.path.isfile(os.path.join(shared, 'weights-01.h5'))  # nothing written is lost
    return out


@needs_tf
def test_killed_worker_then_resume_trains_as_one_process(capsys, tmp_path, data_dir):
    # worker 1 killed after the first checkpoint, both resumed to epoch 2: the log is the
    # one-process run's on the same global batch
    shared = str(tmp_path / 'shared')  # both workers get it: only the chief may write it
    argv = FLAGS + ['--data_dir', data_dir, '--save_dir', shared]
    chief_out = kill_after_first_checkpoint(tmp_path, argv, shared, killed=1)
    assert '2 replicas on 2 workers' in chief_out
    procs = start_workers(tmp_path, 'resume', argv + ['--epochs', '2', '--resume'])
    assert wait_all(procs) == [0, 0], [output(tmp_path, 'resume', i)[1] for i in range(2)]
    chief_out, _ = output(tmp_path, 'resume', 0)
    worker_out, _ = output(tmp_path, 'resume', 1)
    assert 'Resuming after epoch 1' in chief_out and 'Resuming after epoch 1' in worker_out
    # the resumed epoch starts from the saved Adam state on both (not from fresh moments)
    assert 'Restored optimizer state' in chief_out and 'Restored optimizer state' in worker_out
    temp = [l for l in worker_out.splitlines() if 'writes to the temporary' in l]
    assert len(temp) == 1 and 'writes to the temporary' not in chief_out
    temp = temp[0].split('temporary ')[1].split(';')[0]
    assert temp.startswith(str(tmp_path)) and not os.path.exists(temp)  # removed at exit
    # the one-process run of the same flags, in this process (no TF_CONFIG here)
    code, out, err = helpers.run_main(capsys, *(FLAGS + ['--epochs', '2', '--data_dir', data_dir,
                                                         '--save_dir', str(tmp_path / 'alone')]))
    assert code == 0, err
    epochs, multi = log_columns(os.path.join(shared, 'log.csv'))
    assert epochs == [0, 1]  # one writer: each epoch's row once
    _, alone = log_columns(str(tmp_path / 'alone' / 'log.csv'))
    for column in COLUMNS:
        # the collective sums are not bit-exact run to run, and training on random labels
        # amplifies their rounding: epoch 0 (4 steps) matched to <= 5e-5 relative in most runs
        # but 1.23e-3 (val_loss) in one of four on 2026-11-28 and 4.1e-3 (val_loss) in one
        # full-suite run on 2026-12-04; epoch 1 to <= 8.7e-3 then, and 2.37e-2 (val_loss) in one
        # full-suite run on 2026-12-01. So epoch 0 is the tight check, to 2e-2 (a replica
        # scaling bug is off by ~50 %); epoch 1 (after the resume) is checked to 6e-2
        np.testing.assert_allclose(multi[column][0], alone[column][0], rtol=2e-2, err_msg=column)
        np.testing.assert_allclose(multi[column][1], alone[column][1], rtol=6e-2, err_msg=column)


@needs_tf
def test_killed_chief_ends_the_worker_with_one_line(tmp_path, data_dir):
    shared = str(tmp_path / 'shared')
    kill_after_first_checkpoint(tmp_path, FLAGS + ['--data_dir', data_dir, '--save_dir', shared],
                                shared, killed=0)


@pytest.mark.parametrize('config, chief, workers', [
    ({'cluster': {'worker': ['a:1', 'b:2']}, 'task': {'type': 'worker', 'index': 0}}, True, 2),
    ({'cluster': {'worker': ['a:1', 'b:2']}, 'task': {'type': 'worker', 'index': 1}}, False, 2),
    ({'cluster': {'chief': ['c:9'], 'worker': ['a:1'], 'ps': ['p:3']},
      'task': {'type': 'worker', 'index': 0}}, False, 2),
    ({'cluster': {'chief': ['c:9'], 'worker': ['a:1', 'b:2']},
      'task': {'type': 'chief', 'index': 0}}, True, 3),
])
def test_the_chief_is_the_chief_task_else_worker_0(monkeypatch, config, chief, workers):
    monkeypatch.setenv('TF_CONFIG', json.dumps(config))
    task = runsetup.multi_worker_task()
    assert task.chief is chief and task.workers == workers


@pytest.mark.parametrize('raw', ['{not json', '{"cluster": {}}', '[]',
                                 '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", '
                                 '"index": 3}}'])
def test_bad_tf_config_is_one_line(monkeypatch, capsys, tmp_path, raw):
    monkeypatch.setenv('TF_CONFIG', raw)
    code, _, err = helpers.run_main(capsys, '--save_dir', tmp_path / 'r', '--epochs', '1')
    helpers.assert_one_error_line(code, err, 'TF_CONFIG does not describe this worker')


@pytest.mark.stack
@pytest.mark.skipif(KERAS3_TF, reason='Keras 3 + TensorFlow trains with TF_CONFIG')
def test_tf_config_elsewhere_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv('TF_CONFIG', tf_config([1, 2], 0))
    code, _, err = helpers.run_main(capsys, '--save_dir', tmp_path / 'r', '--epochs', '1',
                                    '--data_dir', tmp_path / 'nowhere')
    helpers.assert_one_error_line(code, err, 'multi-worker training needs Keras 3 with the '
                                             'tensorflow backend')


# addresses checked before TensorFlow sees them (it answered with gRPC tracebacks)
@pytest.mark.end_to_end
@pytest.mark.parametrize('addresses, message', [
    (['127.0.0.1:99999', '127.0.0.1:2'], 'worker 0 has the port 99999 in 127.0.0.1:99999'),
    (['127.0.0.1:0', '127.0.0.1:2'], 'worker 0 has the port 0'),
    (['127.0.0.1', '127.0.0.1:2'], "worker 0 has the address '127.0.0.1', expected host:port"),
    (['127.0.0.1:1', 'a host:2'], "worker 1 has the address 'a host:2'"),
])
def test_bad_worker_address_is_one_line(monkeypatch, capsys, tmp_path, addresses, message):
    monkeypatch.setenv('TF_CONFIG', json.dumps({'cluster': {'worker': addresses},
                                                'task': {'type': 'worker', 'index': 0}}))
    code, _, err = helpers.run_main(capsys, '--save_dir', tmp_path / 'r', '--epochs', '1')
    helpers.assert_one_error_line(code, err, 'TF_CONFIG: ' + message)
    assert not (tmp_path / 'r').exists()


@needs_tf
def test_port_in_use_is_one_line(monkeypatch, capsys, tmp_path, data_dir):
    holder = socket.socket()  # another process's server on this worker's port
    holder.bind(('127.0.0.1', 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        monkeypatch.setenv('TF_CONFIG', tf_config([port] + free_ports(1), 0))
        code, _, err = helpers.run_main(capsys, *(FLAGS + ['--epochs', '1', '--data_dir', data_dir,
                                                           '--save_dir', tmp_path / 'r']))
    finally:
        holder.close()
    helpers.assert_one_error_line(code, err, 'TF_CONFIG: port %d of this task (worker 0, '
                                             '127.0.0.1:%d) is in use' % (port, port))
    assert os.listdir(str(tmp_path / 'r')) == []


@needs_tf
def test_a_worker_never_started_ends_the_other_in_one_line(monkeypatch, capsys, tmp_path,
                                                             data_dir):
    # the wait is bounded (it was endless and silent: TensorFlow waits for every worker) and
    # names the missing one; this process never starts TensorFlow's server
    ports = free_ports(2)
    monkeypatch.setenv('TF_CONFIG', tf_config(ports, 0))
    monkeypatch.setenv('CAPSNET_CLUSTER_WAIT_S', '1.5')
    started = time.time()
    code, out, err = helpers.run_main(capsys, *(FLAGS + ['--epochs', '1', '--data_dir', data_dir,
                                                         '--save_dir', tmp_path / 'r']))
    assert time.time() - started < 60
    helpers.assert_one_error_line(code, err, 'TF_CONFIG: no answer from worker 1 (127.0.0.1:%d) '
                                             'within 1.5 s' % ports[1])
    assert 'Waiting up to 1.5 s for worker 1 (127.0.0.1:%d)' % ports[1] in out
    assert os.listdir(str(tmp_path / 'r')) == []


@pytest.mark.end_to_end
@pytest.mark.parametrize('value', ['0', '-3', 'soon', 'inf', 'nan'])
def test_bad_cluster_wait_is_one_line(monkeypatch, capsys, value):
    import cluster
    monkeypatch.setenv('CAPSNET_CLUSTER_WAIT_S', value)
    with pytest.raises(C.UserError, match='CAPSNET_CLUSTER_WAIT_S=%s: expected a number of '
                                          'seconds > 0' % value):
        cluster.wait_s()
