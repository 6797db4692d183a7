"""A live run's folder is never touched by another run (a lock per experiment and results folder, released by the
kernel when its process ends), the archive-rename follows no link, an output root that cannot be made is named,
and a training state that cannot be used is refused with a message."""
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import assert_one_message, cli, tiny_options, write_options
from usaid import compat
from usaid.errors import CheckpointError, OutputFolderError
from usaid.output_folders import lock_folder

# holds the locks of the folders named on its command line until its stdin closes (or it is killed)
HOLDER = ('import sys\nfrom usaid.output_folders import lock_folder\nfor folder in sys.argv[1:]:\n'
          '    lock_folder(folder)\nprint("locked", flush=True)\nsys.stdin.read()\n')


def hold(cwd, *folders):
    """A process holding the locks of ``folders``, once it has them."""
    holder = subprocess.Popen([sys.executable, '-c', HOLDER, *folders], cwd=cwd, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == 'locked\n'
    return holder


def test_a_second_run_of_a_live_experiment_is_refused_and_renames_nothing(image_folder, tmp_path):
    for tree in ('experiments', 'results'):
        (tmp_path / tree / 'tiny').mkdir(parents=True)
        (tmp_path / tree / 'tiny' / 'net_g_2.pth').write_text('the first run writes here')
    option_file = write_options(tiny_options(image_folder, name='tiny'), tmp_path / 'tiny.yml')
    holder = hold(tmp_path, 'experiments/tiny', 'results/tiny')
    try:
        for tool, tree, *flags in (('usaid-train', 'experiments'), ('usaid-train', 'experiments', '--auto_resume'),
                                   ('usaid-test', 'results')):
            result = cli(tool, '-opt', option_file, *flags, cwd=tmp_path)
            assert_one_message(result, tool, f'{tmp_path / tree / "tiny"}: in use by another run (pid {holder.pid} on ',
                               f'which holds {tmp_path / tree / ".tiny.lock"}', 'Wait until that run ends, or choose '
                               'another name (name: in the option file, or --force_yml name=NEW)')
    finally:
        holder.communicate('')
    for tree in ('experiments', 'results'):
        assert sorted(p.name for p in (tmp_path / tree).iterdir()) == ['.tiny.lock', 'tiny']
        assert (tmp_path / tree / 'tiny' / 'net_g_2.pth').read_text() == 'the first run writes here'
    assert not (tmp_path / 'tb_logger').exists()


def test_the_lock_of_a_dead_run_does_not_block(tmp_path):
    holder = hold(tmp_path, 'experiments/tiny')
    with pytest.raises(OutputFolderError, match=f'in use by another run \\(pid {holder.pid} on '):
        lock_folder(str(tmp_path / 'experiments' / 'tiny'))
    holder.send_signal(signal.SIGKILL)  # a crash: the lock file stays, the kernel releases its lock
    holder.wait()
    holder.stdin.close()
    lock_folder(str(tmp_path / 'experiments' / 'tiny'))
    assert (tmp_path / 'experiments' / '.tiny.lock').read_text().startswith(f'pid {os.getpid()} on ')
    lock_folder(str(tmp_path / 'experiments' / 'tiny'))  # again in the same process: it holds it already


def run_options(tmp_path, name='tiny', is_train=True, **path):
    """Parsed options as BasicSR's parse_options leaves them, for the folder functions."""
    tree = 'experiments' if is_train else 'results'
    root = str(tmp_path / tree / name)
    path_opt = {f'{tree}_root': root, 'log': root, 'visualization': os.path.join(root, 'visualization'),
                'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None, **path}
    if is_train:
        path_opt.update(models=os.path.join(root, 'models'), training_states=os.path.join(root, 'training_states'))
    return {'name': name, 'is_train': is_train, 'rank': 0, 'dist': False, 'num_gpu': 0, 'auto_resume': False,
            'path': path_opt, 'network_g': {'type': 'USAID'},
            'datasets': {'train': {'batch_size_per_gpu': 2}}}


def test_an_existing_folder_is_archived_but_a_link_is_refused(tmp_path):
    opt = run_options(tmp_path)
    (tmp_path / 'experiments' / 'tiny').mkdir(parents=True)
    compat.make_exp_dirs(opt)  # an unlocked folder of a finished run: archived, as BasicSR does
    assert sorted(p.name.split('_archived_')[0] for p in (tmp_path / 'experiments').iterdir()) == [
        '.tiny.lock', 'tiny', 'tiny']
    assert (tmp_path / 'experiments' / 'tiny' / 'models').is_dir()
    (tmp_path / 'elsewhere').mkdir()
    (tmp_path / 'elsewhere' / 'data.txt').write_text('precious')
    (tmp_path / 'experiments' / 'linked').symlink_to(tmp_path / 'elsewhere')
    with pytest.raises(OutputFolderError, match=f'linked: is a symbolic link \\(to {tmp_path / "elsewhere"}\\); '
                                                'expected a folder of its own'):
        compat.make_exp_dirs(run_options(tmp_path, name='linked'))
    assert (tmp_path / 'experiments' / 'linked').is_symlink() and os.listdir(tmp_path / 'elsewhere') == ['data.txt']
    assert not list((tmp_path / 'experiments').glob('linked_archived_*'))
    with pytest.raises(OutputFolderError, match=r"goes up a folder \('..'\)"):  # BasicSR's own callers, unchecked
        compat.mkdir_and_rename(str(tmp_path / 'experiments' / '..' / 'elsewhere'))
    assert os.listdir(tmp_path / 'elsewhere') == ['data.txt']


def test_an_output_root_that_cannot_be_made_is_named(image_folder, tmp_path):
    (tmp_path / 'experiments').write_text('a file where the experiments folder would go')
    option_file = write_options(tiny_options(image_folder, name='tiny'), tmp_path / 'tiny.yml')
    result = cli('usaid-train', '-opt', option_file, cwd=tmp_path)
    assert_one_message(result, 'usaid-train', f'{tmp_path / "experiments"}: cannot be made (File exists); expected a '
                                              'folder this user can write. Run from a folder you can write')
    assert (tmp_path / 'experiments').read_text() == 'a file where the experiments folder would go'
    (tmp_path / 'results').write_text('a file')
    with pytest.raises(OutputFolderError, match=f'{tmp_path / "results"}: cannot be made'):
        compat.make_exp_dirs(run_options(tmp_path, is_train=False))
    (tmp_path / 'tb_logger').write_text('a file')
    with pytest.raises(OutputFolderError, match=f'{tmp_path / "tb_logger" / "tiny"}: cannot be made \\(Not a '
                                                'directory\\)'):
        compat.mkdir_and_rename(str(tmp_path / 'tb_logger' / 'tiny'))


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_a_training_state_that_cannot_be_used_is_named(image_folder, tmp_path):
    states = tmp_path / 'experiments' / 'tiny' / 'training_states'
    states.mkdir(parents=True)
    (states / '4.state').write_text('not a pickle')
    option_file = write_options(tiny_options(image_folder, name='tiny'), tmp_path / 'tiny.yml')
    result = cli('usaid-train', '-opt', option_file, '--auto_resume', cwd=tmp_path)
    assert_one_message(result, 'usaid-train', f'{states / "4.state"}: cannot be loaded as a training state (',
                       'Move it out of training_states (--auto_resume then takes the one before)')
    assert os.listdir(tmp_path / 'experiments' / 'tiny') == ['training_states']

    opt = run_options(tmp_path)
    opt['auto_resume'] = True
    marker = tmp_path / 'pwned'
    (states / '4.state').write_bytes(pickle.dumps({'iter': RunsCode(marker)}, protocol=2))
    with pytest.raises(CheckpointError) as error:
        compat.load_resume_state(opt)
    assert str(error.value).startswith(f'{states / "4.state"}: cannot be loaded as a training state (it holds objects '
                                       'that only code could make: Trying to load unsupported GLOBAL posix.system')
    assert 'weights_only' not in str(error.value) and not marker.exists()
    torch.save([1, 2], states / '4.state')
    with pytest.raises(CheckpointError, match='4.state: holds list; expected a training state'):
        compat.load_resume_state(opt)


def test_a_training_state_of_another_experiment_is_refused_under_a_new_name(tmp_path):
    other = tmp_path / 'experiments' / 'first' / 'training_states'
    other.mkdir(parents=True)
    torch.save({'iter': 4, 'epoch': 1, 'optimizers': [], 'schedulers': []}, other / '4.state')
    opt = run_options(tmp_path, name='second', resume_state=str(other / '4.state'))
    with pytest.raises(CheckpointError) as error:
        compat.load_resume_state(opt)
    second = tmp_path / 'experiments' / 'second'
    assert str(error.value) == (
        f"{other / '4.state'}: path:resume_state is not a training state of this run's experiment folder {second}; "
        f'expected a file of {second / "training_states"} (a run resumes in its own folder, with the networks of its '
        'models folder). To resume that run, keep its name (first); to start a new run from its weights, set '
        f"path:pretrain_network_g to {tmp_path / 'experiments' / 'first' / 'models' / 'net_g_4.pth'} and "
        'path:resume_state to ~.')
    assert not second.exists() and not (tmp_path / 'experiments' / '.second.lock').exists()
