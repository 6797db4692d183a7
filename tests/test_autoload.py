"""BasicSR's own entry points see U-SAID once the package is installed, editable or not."""
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO, run, tiny_options, write_options

PROBE = ("import sys; import json; print(json.dumps({'torch': 'torch' in sys.modules, "
         "'usaid': 'usaid' in sys.modules, 'basicsr': 'basicsr' in sys.modules}))")


def outside_repo_env():
    """An environment where `usaid` can only come from the installation, not from the working tree."""
    return {'PYTHONPATH': ''}


def test_processes_that_never_import_basicsr_pay_nothing(tmp_path):
    out = run([sys.executable, '-c', PROBE], cwd=tmp_path, env=outside_repo_env()).stdout
    assert out.strip() == '{"torch": false, "usaid": false, "basicsr": false}'


def test_importing_basicsr_registers_usaid_and_the_switch_turns_it_off(tmp_path):
    check = "import basicsr, sys; from basicsr.utils.registry import ARCH_REGISTRY; print('USAID' in ARCH_REGISTRY)"
    assert run([sys.executable, '-c', check], cwd=tmp_path, env=outside_repo_env()).stdout.strip() == 'True'
    off = subprocess.run([sys.executable, '-c', 'import basicsr'], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, 'USAID_AUTOLOAD': '0'})
    assert off.returncode != 0 and 'functional_tensor' in off.stderr  # plain BasicSR 1.4.2, without our fixes


def test_a_basicsr_checkouts_train_and_test_scripts_run_usaid_options(image_folder, tmp_path):
    """`python basicsr/train.py` and `basicsr/test.py` as in a BasicSR checkout (BasicSR's own files, unedited);
    they root their outputs at the checkout, here a temporary folder."""
    import basicsr

    checkout = tmp_path / 'BasicSR'
    (checkout / 'basicsr').mkdir(parents=True)
    for script in ('train.py', 'test.py'):
        (checkout / 'basicsr' / script).write_text((Path(basicsr.__file__).parent / script).read_text())
    train_opt = tiny_options(image_folder, name='checkout', total_iter=2)
    run([sys.executable, 'basicsr/train.py', '-opt', str(write_options(train_opt, tmp_path / 'train.yml'))],
        cwd=checkout, env=outside_repo_env())
    weights = checkout / 'experiments/checkout/models/net_g_latest.pth'
    assert weights.exists()
    test_opt = {'name': 'checkout_test', 'model_type': 'USAIDModel', 'num_gpu': 0,
                'datasets': {'test_1': train_opt['datasets']['val']}, 'network_g': train_opt['network_g'],
                'path': {'pretrain_network_g': str(weights)},
                'val': {'save_img': False, 'metrics': train_opt['val']['metrics']}}
    run([sys.executable, 'basicsr/test.py', '-opt', str(write_options(test_opt, tmp_path / 'test.yml'))],
        cwd=checkout, env=outside_repo_env())
    assert '# psnr:' in next((checkout / 'results/checkout_test').glob('test_*.log')).read_text()


def test_train_pipeline_called_from_a_script_that_imports_only_basicsr(image_folder, tmp_path):
    opt_file = write_options(tiny_options(image_folder, name='from_script', total_iter=2), tmp_path / 'o.yml')
    script = tmp_path / 'train_script.py'
    script.write_text('import os\nfrom basicsr.train import train_pipeline\ntrain_pipeline(os.getcwd())\n')
    run([sys.executable, str(script), '-opt', str(opt_file)], cwd=tmp_path, env=outside_repo_env())
    assert (tmp_path / 'experiments/from_script/models/net_g_latest.pth').exists()


@pytest.fixture(scope='module')
def regular_install(tmp_path_factory):
    """A non-editable install of this repository into a fresh virtual environment that sees this one's packages."""
    target = tmp_path_factory.mktemp('venv')
    venv.create(target, with_pip=False, system_site_packages=False)
    purelib = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
    site = Path(subprocess.check_output([target / 'bin' / 'python', '-c', purelib], text=True).strip())
    # torch, basicsr, pip, setuptools, ... from the current environment; not its .pth files, so not the editable usaid
    (site / 'parent-env.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    run([target / 'bin' / 'python', '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '--no-index', '-q',
         str(REPO)], cwd=target, env=outside_repo_env())
    return target / 'bin' / 'python'


def test_regular_install_places_the_hook_and_basicsr_test_sees_usaid(regular_install, image_folder, tmp_path):
    env = outside_repo_env()
    where = run([regular_install, '-c', 'import usaid; print(usaid.__file__)'], cwd=tmp_path, env=env).stdout
    assert str(REPO) not in where and 'site-packages' in where
    assert run([regular_install, '-c', PROBE], cwd=tmp_path, env=env).stdout.strip() == \
        '{"torch": false, "usaid": false, "basicsr": false}'
    opt = tiny_options(image_folder, name='regular', total_iter=2)
    script = tmp_path / 'train_script.py'
    script.write_text('import os\nfrom basicsr.train import train_pipeline\ntrain_pipeline(os.getcwd())\n')
    run([regular_install, str(script), '-opt', str(write_options(opt, tmp_path / 'o.yml'))], cwd=tmp_path, env=env)
    assert (tmp_path / 'experiments/regular/models/net_g_latest.pth').exists()
