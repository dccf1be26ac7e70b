"""The paper's Table 1 reproduced: `--reproduce table1` trains its CapsNet configurations
(routings 1/2/3, with and without reconstruction) in turn, resumably, and writes paper vs ours
(table1.md, table1.png). Training one configuration is capsulenet.run's, passed in.
"""
import os
import shutil

import compat as C
import paper
import utils
from runfolder import RunFolder
from safeio import UserError, atomic_write

# the flags that each configuration sets (paper.TABLE1): the command line refuses them
SETS = ('routings', 'lam_recon')



def help_text():
    """What `--reproduce table1 --help` prints: the configurations it trains, the flags it sets
    itself, and where its results go (the generic --help says none of this)."""
    rows = ['  %-20s routings %d, lam_recon %-5g  paper test error: %s' % (
        name, r, lam, 'not in the paper' if error == '–' else error + ' %')
        for name, (_, r, lam, error) in paper.TABLE1.items()]
    return '\n'.join([
        'usage: python capsulenet.py --reproduce table1 [--epochs N] [--save_dir DIR] [flags]',
        '',
        "Trains the paper's Table 1 CapsNet configurations in turn, each in",
        'DIR/table1/<configuration>/ (default DIR: ./result), then writes DIR/table1/table1.md',
        '(paper vs ours: the last epoch, the last-5 mean and std, the best epoch marked as',
        'selected on the test set) and DIR/table1/table1.png. Re-run the same command after an',
        'interruption: finished configurations are skipped, the current one resumes.',
        '',
        'Configurations:'] + rows + [
        "Table 1's baseline CNN (paper test error: %s %%) is not among them: train it with" % (
            paper.TABLE1_CNN),
        'python capsulenet.py --model cnn (35.4M parameters; a step takes about 6x CapsNet\'s).',
        '',
        'It sets --%s itself (refused if given). Other training flags' % ' and --'.join(SETS),
        '(--epochs, --seed, --mixed_precision, --train_samples, --validation_split, ...) apply',
        'to every configuration; see python capsulenet.py --help.'])

def _finished(config_dir, epochs):
    folder = RunFolder(config_dir)
    log = folder.log
    if not (os.path.isfile(log) and os.path.isfile(folder.trained)):
        return False
    with open(log, errors='replace') as f:  # a damaged log: --resume says what is wrong
        return sum(1 for _ in f) - 1 >= epochs


def reproduce_table1(run, save_dir='./result', epochs=50, weights=None, **options):
    """Trains the Table 1 configurations (paper.TABLE1) in turn under <save_dir>/table1/<config>/.

    A configuration already trained for `epochs` is skipped, so re-running the command
    after an interruption picks up at the first unfinished one. Copies each log.csv to
    <save_dir>/table1/<config>_<E>ep.csv, then writes table1.md (paper vs ours, printed too)
    and table1.png (test error and loss curves). run: capsulenet.run, which trains one
    configuration; options: its further arguments.
    """
    if options.get('model', 'capsnet') != 'capsnet':
        raise UserError('--reproduce table1 trains --model capsnet')
    root = os.path.join(save_dir, 'table1')
    RunFolder(root).prepare()
    logs = []
    for name, (_, routings, lam_recon, _) in paper.TABLE1.items():
        config_dir = os.path.join(root, name)
        if _finished(config_dir, epochs):
            print('== %s: already trained for %d epochs, skipped' % (name, epochs))
        else:
            print('== %s: routings %d, lam_recon %g' % (name, routings, lam_recon))
            C.clear_session()
            run(**dict(options, routings=routings, lam_recon=lam_recon, save_dir=config_dir,
                       epochs=epochs, weights=weights,
                       resume=weights is None,  # picks up mid-configuration after a crash
                       overwrite=weights is not None and options.get('overwrite', False)))
        logs.append(os.path.join(root, '%s_%dep.csv' % (name, epochs)))
        with atomic_write(logs[-1]) as tmp:  # never through a link: the link is replaced
            shutil.copyfile(RunFolder(config_dir).log, tmp)
    table = utils.results_table(logs)
    if options.get('validation_split'):  # the logs' val_ columns are not the test set then
        table += ('\n\nWith --validation_split %d the figures above are the held-out validation '
                  "error; each configuration's test figures are in <config>/test_results.json."
                  % options['validation_split'])
    with atomic_write(os.path.join(root, 'table1.md')) as tmp:
        with open(tmp, 'w') as f:
            f.write(table + '\n')
    utils.plot_log(logs, os.path.join(root, 'table1.png'))
    print(table)
    print('Table and curves saved to %s (table1.md, table1.png)' % root)
