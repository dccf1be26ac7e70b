"""The benchmark script runs (2 steps); its seed-style routing and model agree with ours."""
import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT

import compat as C
from helpers import run_script

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import bench  # noqa: E402


def test_naive_routing_matches_ours_and_differs_with_other_weights():
    from capsulelayers import CapsuleLayer
    rng = np.random.RandomState(0)
    u = rng.normal(size=(3, 20, 8)).astype('float32')
    ours = CapsuleLayer(4, 6, 3)
    naive = bench.naive_capsule_layer_class()(4, 6, 3)
    C.evaluate(ours, u)
    C.evaluate(naive, u)
    naive.set_weights(ours.get_weights())
    np.testing.assert_allclose(C.evaluate(ours, u), C.evaluate(naive, u), atol=1e-6)
    naive.set_weights([ours.get_weights()[0] * 1.5])
    assert np.abs(C.evaluate(ours, u) - C.evaluate(naive, u)).max() > 1e-3


# a tiny CapsNet: the smoke test times the script's path, not the paper model (~6 s less)
TINY_ARCH = 'conv1_filters=16,primary_channels=4'


def test_bench_prints_a_table():
    proc = run_script(os.path.join('benchmarks', 'bench.py'), '--steps', '2', '--warmup', '1',
                      '--routings', '1', '--batch_size', '4', '--compare',
                      '--backends', C.BACKEND, '--arch', TINY_ARCH)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    rows = [l for l in lines if l.startswith('| %s ' % C.BACKEND)]
    assert len(rows) == 1
    header = [c.strip() for c in lines[lines.index(rows[0]) - 2].strip('|').split('|')]
    row = dict(zip(header, [c.strip() for c in rows[0].strip('|').split('|')]))
    assert float(row['train ms/step']) > 0
    assert row['arch'] == TINY_ARCH
    # the seed-style model: same weights, same class scores, a whole step timed beside ours
    assert float(row['routing max diff']) < 1e-4 and float(row['scores max diff']) < 1e-4
    assert float(row['step ours ms']) > 0 and float(row['step seed-style ms']) > 0
    assert float(row['seed-style / ours']) > 0


def test_worker_times_a_classifier(capsys):
    """The CNN baseline trains on image -> label (one input), not (image, label) -> (scores,
    reconstruction) as the capsule models do: its worker times it (in this process)."""
    C.clear_session(free_memory=False)
    bench.main(['--worker', '--model', 'cnn', '--routings', '1', '--batch_size', '4',
                '--steps', '1', '--warmup', '0', '--arch', 'conv1_filters=4'])
    result = json.loads(capsys.readouterr().out.split('RESULT ')[-1])
    assert result['model'] == 'cnn' and result['routings'] is None
    assert result['train_ms_per_step'] > 0 and result['infer_images_per_s'] > 0


def test_models_without_routing_are_timed_once(monkeypatch, capsys):
    """--routings 1,2,3 times efficient (no routing) once per precision, capsnet three times."""
    calls = []

    def fake_run(cmd, **kwargs):
        model, routings = cmd[cmd.index('--model') + 1], int(cmd[cmd.index('--routings') + 1])
        precision = cmd[cmd.index('--precision') + 1]
        calls.append((model, routings, precision))
        result = {'backend': 'b', 'model': model, 'precision': precision,
                  'routings': None if model == 'efficient' else routings,
                  'train_images_per_s': 100. if precision == 'off' else 150.}
        return bench.subprocess.CompletedProcess(cmd, 0, 'RESULT ' + json.dumps(result), '')

    monkeypatch.setattr(bench.subprocess, 'run', fake_run)
    # the parent checks --backends (one it can run); the fake workers report backend 'b'
    assert bench.main(['--backends', C.BACKEND, '--models', 'efficient,capsnet',
                       '--routings', '1,2,3', '--precision', 'off,bf16']) == 0
    assert [c for c in calls if c[0] == 'efficient'] == [('efficient', 1, 'off'),
                                                           ('efficient', 1, 'bf16')]
    assert len([c for c in calls if c[0] == 'capsnet']) == 6
    out = capsys.readouterr().out
    assert 'b efficient: bf16 / off training img/s = 1.50' in out
    assert 'b capsnet r2: bf16 / off training img/s = 1.50' in out
    assert '| b | efficient |  |' in out  # no routing column value, not "None"


def test_ratios_set_each_setting_against_the_default_row():
    row = lambda precision, xla, img_s: {'backend': 'b', 'model': 'capsnet', 'routings': 3,
                                          'precision': precision, 'xla': xla,
                                          'train_images_per_s': img_s}
    assert bench.ratios([row('off', 'auto', 100.), row('off', 'on', 125.),
                         row('bf16', 'auto', 160.), row('bf16', 'on', 200.)]) == [
        'b capsnet r3: xla on / xla auto training img/s = 1.25',
        'b capsnet r3: bf16 / off training img/s = 1.60',
        'b capsnet r3: bf16 + xla on / off + xla auto training img/s = 2.00']
    assert bench.ratios([row('off', 'on', 125.)]) == []  # no default row in this run


def test_bad_arch_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(['--arch', 'conv1_filters=wide'])
    assert str(exit_.value) == "error: --arch 'conv1_filters=wide': expected NAME=INTEGER items"
    assert bench.parse_arch(TINY_ARCH) == {'conv1_filters': 16, 'primary_channels': 4}
