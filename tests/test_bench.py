"""The benchmark script runs (2 steps); its seed-style routing and model agree with ours; its
FLOP count matches a hand count; its step profile has every part; bad flags are one line."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

import compat as C
from helpers import assert_one_error_line, run_main, run_script

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import bench  # noqa: E402
from tensors import evaluate  # noqa: E402


def test_naive_routing_matches_ours_and_differs_with_other_weights():
    from capsulelayers import CapsuleLayer
    rng = np.random.RandomState(0)
    u = rng.normal(size=(3, 20, 8)).astype('float32')
    ours = CapsuleLayer(4, 6, 3)
    naive = bench.naive_capsule_layer_class()(4, 6, 3)
    evaluate(ours, u)
    evaluate(naive, u)
    naive.set_weights(ours.get_weights())
    np.testing.assert_allclose(evaluate(ours, u), evaluate(naive, u), atol=1e-6)
    naive.set_weights([ours.get_weights()[0] * 1.5])
    assert np.abs(evaluate(ours, u) - evaluate(naive, u)).max() > 1e-3


# a tiny CapsNet: the smoke test times the script's path, not the paper model (~6 s less)
TINY_ARCH = 'conv1_filters=16,primary_channels=4'


def test_bench_prints_a_table():
    proc = run_script(os.path.join('benchmarks', 'bench.py'), '--steps', '2', '--warmup', '1',
                      '--routings', '1', '--batch_size', '4', '--compare',
                      '--backends', C.BACKEND, '--arch', TINY_ARCH, '--matmul_size', '64')
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    # the step against the matmul rate measured in the same worker: its FLOPs over its time
    result = json.loads([l for l in lines if l.startswith('{')][0])
    gflops = result['train_gflop_per_image'] * 4 / (result['train_ms_per_step'] / 1000.)
    assert result['matmul_gflops'] > 0 and result['matmul_size'] == 64
    assert abs(result['gflops'] - gflops) <= 0.01 * gflops
    fraction = result['gflops'] / result['matmul_gflops']
    assert abs(result['fraction_of_matmul'] - fraction) <= 0.01 * fraction
    assert bench.FLOP_RULE + '.' in lines
    rows = [l for l in lines if l.startswith('| %s ' % C.BACKEND)]
    assert len(rows) == 1
    header = [c.strip() for c in lines[lines.index(rows[0]) - 2].strip('|').split('|')]
    row = dict(zip(header, [c.strip() for c in rows[0].strip('|').split('|')]))
    assert float(row['train ms/step']) > 0
    assert float(row['of matmul']) == result['fraction_of_matmul']
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


def test_flops_match_a_hand_count():
    """A tiny CapsNet counted by hand (per image, a multiply-add = 2; backward 2x forward but
    1x for conv1, which reads the image)."""
    import capsulenet
    C.clear_session(free_memory=False)
    model = capsulenet.build_models('capsnet', (28, 28, 1), 10, routings=2, conv1_filters=4,
                                    primary_channels=2, primary_dim=4, digit_dim=8,
                                    decoder_units=(8, 8))[0]
    conv1 = 2 * (20 * 20) * (9 * 9 * 1) * 4           # 20x20 outputs, 9x9x1 kernel, 4 filters
    primary = 2 * (6 * 6) * (9 * 9 * 4) * (2 * 4)     # stride 2: 6x6, 2 channels of 4-D
    transform = 2 * (6 * 6 * 2) * 10 * 8 * 4          # 72 capsules of 4-D -> 10 of 8-D
    routing = 2 * 2 * 10 * 72 * 8                     # r2: one s = c u_hat, one agreement
    decoder = [2 * 80 * 8, 2 * 8 * 8, 2 * 8 * 784]
    rows = bench.layer_flops(model)
    assert [r for r in rows if not r[0].startswith('decoder/')] == [
        ('conv1', 'conv2d', conv1, conv1), ('primarycap_conv2d', 'conv2d', primary, 2 * primary),
        ('digitcaps', 'transform', transform, 2 * transform),
        ('digitcaps', 'routing', routing, 2 * routing)]
    assert [(f, b) for name, _, f, b in rows if name.startswith('decoder/')] == [
        (f, 2 * f) for f in decoder]
    assert bench.training_flops(model) == (2 * conv1 + 3 * (primary + transform + routing)
                                           + 3 * sum(decoder))


@pytest.mark.skipif(not (C.KERAS3 and C.BACKEND == 'tensorflow'),
                    reason='--profile: TensorFlow on Keras 3 only')
def test_profile_has_every_part_of_the_step(capsys):
    """bf16: the convolutions' forward and gradients (conv1 has no input gradient), routing,
    decoder, loss, optimizer and the casts, each timed; the sum set against the step."""
    C.clear_session(free_memory=False)
    try:
        bench.main(['--worker', '--routings', '2', '--batch_size', '2', '--steps', '1',
                    '--warmup', '0', '--arch', 'conv1_filters=8,primary_channels=2',
                    '--precision', 'bf16', '--matmul_size', '32', '--profile'])
    finally:
        C.set_precision('off')
    out = capsys.readouterr().out
    profile = json.loads(out.split('PROFILE ')[-1])
    assert profile['config'] == 'tensorflow capsnet r2 bf16 xla auto'
    parts = {p['part']: p for p in profile['parts']}
    for name in ('conv1 forward', 'conv1 kernel gradient', 'primarycap_conv2d forward',
                 'primarycap_conv2d input gradient', 'primarycap_conv2d kernel gradient',
                 'digitcaps transform W u (fwd + bwd)', 'digitcaps routing (fwd + bwd)',
                 'decoder (fwd + bwd)', 'loss (fwd + bwd)', 'optimizer update',
                 'casts of the Conv2D layers (variables, gradients, inputs)'):
        assert parts[name]['ms'] > 0, name
    assert 'conv1 input gradient' not in parts
    assert parts['digitcaps routing (fwd + bwd)']['gflops'] > 0
    assert parts['loss (fwd + bwd)']['gflops'] is None  # no products counted there
    step = parts['whole step (train_on_batch)']['ms']
    total = sum(p['ms'] for p in profile['parts'][:-3])
    assert abs(parts['sum of the parts']['ms'] - total) < 0.1
    assert abs(parts['whole step - sum of the parts']['ms'] - (step - total)) < 0.1
    assert '| conv1 forward | ' in bench.profile_tables([profile], [])[2]


def test_profiles_are_printed_and_other_backends_named(monkeypatch, capsys):
    """The parent prints each worker's profile, and says which rows have none."""
    part = {'part': 'conv1 forward', 'ms': 5., 'share': 0.5, 'gflops': 10.,
            'fraction_of_matmul': 0.1}

    def fake_run(cmd, env, **kwargs):
        backend = env['KERAS_BACKEND']
        result = {'backend': backend, 'model': 'capsnet', 'routings': 3, 'precision': 'off',
                  'xla': 'auto', 'train_images_per_s': 1.}
        out = 'RESULT ' + json.dumps(result)
        if backend == 'tensorflow':
            out += '\nPROFILE ' + json.dumps({'config': bench.config_label(result),
                                              'parts': [part]})
        return bench.subprocess.CompletedProcess(cmd, 0, out, '')

    monkeypatch.setattr(bench.subprocess, 'run', fake_run)
    monkeypatch.setattr(bench.importlib.util, 'find_spec', lambda name: True)
    assert bench.main(['--backends', 'tensorflow,jax', '--routings', '3', '--profile']) == 0
    out = capsys.readouterr().out
    assert 'Step profile, tensorflow capsnet r3 off xla auto:' in out
    assert '| conv1 forward | 5.0 | 0.5 | 10.0 | 0.1 |' in out
    assert ('jax capsnet r3 off xla auto: no step profile (--profile: TensorFlow on Keras 3 '
            'only)') in out


@pytest.mark.parametrize('flags, message', [
    (['--routings', 'abc'], "--routings 'abc': expected int values"),
    (['--routings', '3,0'], "--routings '0': expected >= 1"),
    (['--steps', '0'], '--steps 0: expected >= 1'),
    (['--arch', 'foo=1'], '--arch foo: not an architecture option of --model capsnet'),
    (['--arch', 'conv1_filters=wide'], "--arch 'conv1_filters=wide': expected NAME=INTEGER"),
    (['--models', 'efficient', '--arch', 'conv1_filters=8'],
     '--arch conv1_filters: not an architecture option of --model efficient (it has none)'),
    (['--backends', 'nonsense'], "--backends 'nonsense': expected one of tensorflow, jax"),
    (['--precision', 'fp8'], "--precision 'fp8': expected one of off, bf16, fp16"),
    (['--xla', 'maybe'], "--xla 'maybe': expected one of auto, on"),
    (['--batch_size', '0'], '--batch_size 0: expected >= 1'),
    (['--batch_size', 'many'], "argument --batch_size: invalid int value: 'many'"),
    (['--out', os.path.join('no', 'such', 'folder', 'bench.md')], 'no such folder'),
    (['--models', 'nonsense'], "--models 'nonsense': expected one of capsnet, cnn, efficient"),
])
def test_bad_input_is_one_line_before_any_worker(monkeypatch, capsys, flags, message):
    def no_worker(*args, **kwargs):
        raise AssertionError('a worker started')
    monkeypatch.setattr(bench.subprocess, 'run', no_worker)
    code, _, err = run_main(capsys, '--backends', C.BACKEND, *flags, main=bench.main)
    assert_one_error_line(code, err, message)


@pytest.mark.train_cli
def test_epoch_overhead_splits_the_cli_epoch(tmp_path):
    import io
    import epoch_overhead
    from helpers import TINY_FLAGS, fake_mnist
    data = str(tmp_path / 'mnist')
    fake_mnist(data, 16, 8)
    out = io.StringIO()
    C.clear_session(free_memory=False)
    code = epoch_overhead.measure(['--data_dir', data, '--save_dir', str(tmp_path / 'run'),
                                   '--train_samples', '8', '--batch_size', '4', '--epochs', '2',
                                   '--seed', '0'] + TINY_FLAGS, out)
    assert code == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r['row'] for r in rows] == ['epoch 1', 'epoch 2', 'alone']
    for row in rows[:2]:
        assert row['batches'] == 2 and row['steps'] > 0
        parts = ['start_wait', 'steps', 'between', 'callbacks']
        if C.KERAS3:  # keras 2.2.4 calls no test callbacks inside fit
            parts += ['to_validation', 'validation']
            assert row['validation'] > 0
        assert abs(sum(row[p] for p in parts) - row['epoch']) <= 0.01 + 0.01 * row['epoch']
    alone = rows[-1]
    assert alone['batch_size'] == 4 and alone['steps'] > 0 and alone['validation'] > 0
    # the last epoch over the steps alone, each printed to 3 decimals
    rounding = 0.001 * (alone['overhead'] + 2 + alone['steps'])
    assert abs((alone['overhead'] + 1) * alone['steps'] - rows[1]['epoch']) <= rounding
    # the run's own files were written as the command line writes them
    assert os.path.isfile(str(tmp_path / 'run' / 'log.csv'))


def _gpu_queue(*steps, configs):
    env = dict(os.environ, CONFIGS=configs)
    env.pop('OUT', None)
    return subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'gpu_queue.sh')] + list(steps),
                          capture_output=True, text=True, env=env)


def test_gpu_queue_table1_flags_are_the_logged_commands():
    """The GPU step trains each Table 1 configuration with the flags CSV_data/README.md lists
    for its CPU log, so a log from either machine is the same experiment."""
    with open(os.path.join(ROOT, 'CSV_data', 'README.md')) as f:
        section = f.read().split('<!-- TABLE1-LOGS -->')[1].split('<!-- /TABLE1-LOGS -->')[0]
    rows = re.findall(r'^\| `(\w+)\.csv` \|.*`CAPSNET_THREADS=1 python capsulenet.py ([^`]*)`',
                      section, flags=re.M)
    assert len(rows) >= 6
    proc = _gpu_queue('flags', configs=' '.join(name for name, _ in rows))
    assert proc.returncode == 0, proc.stderr
    printed = dict(line.split(': ', 1) for line in proc.stdout.splitlines())
    for name, command in rows:
        assert _valued_flags(printed[name]) == _valued_flags(command), name


def _valued_flags(command):
    """The flags of a command line that take a value, as 'flag value' strings, --save_dir aside."""
    return set(re.findall(r'--\w+ [^-\s]\S*', command)) - set(re.findall(r'--save_dir \S+', command))


def test_gpu_queue_refuses_an_unknown_configuration():
    proc = _gpu_queue('table1', configs='r3_recon r9_recon')
    assert proc.returncode == 2
    assert proc.stdout.strip() == 'error: unknown Table 1 configuration r9_recon'
