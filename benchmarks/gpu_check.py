"""Check a GPU machine in one command (``make gpu-check``): the tests marked ``cuda``, then the benchmarks on the GPU.

    python benchmarks/gpu_check.py [--output gpu-check/figures.md]

The tests (``pytest -m cuda``: tests/test_cuda.py) compare training steps in fp32 and bf16, channels_last, resume,
``InferenceNetwork``, NCCL torchrun runs, ``usaid-denoise`` and ``usaid-compare`` on the GPU with the CPU. The
benchmarks are ``benchmarks/bench.py --device cuda`` in fp32 (all four comparisons) and in bf16 ((b) and (c)). The
figures file gets the machine, each test's outcome and time, and the benchmarks' tables; the console shows them as
they come. Choose the GPU with ``CUDA_VISIBLE_DEVICES``.

Exit status: 1 if a test or a benchmark failed. Without a GPU every CUDA test skips: this says so loudly (how many, and
why), runs no benchmark, writes that to the figures file and exits 0, since there was nothing to check.
"""
import argparse
import collections
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from os import path as osp

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)  # run as a script from anywhere: usaid from this checkout

from usaid.checkpoint import write_atomically  # noqa: E402

# (title, bench.py arguments): bench.py's default sizes, which fit the 10-minute budget with the tests on one H100 by
# estimate; not yet run on a GPU (docs/benchmarks.md#gpu)
BENCHMARKS = [('fp32, the recipe\'s batch (64 x 48x48, USA ResNet-101)', []),
              ('bf16 autocast of the denoiser and the USA network', ['--only', 'b', 'c', '--precision', 'bf16',
                                                                     '--usa-precision', 'bf16'])]


def run_tests(junit, pytest_args):
    """``pytest -m cuda`` over the whole suite (a ``cuda`` test anywhere counts); its outcomes from the JUnit XML:
    ``(exit status, [(test, outcome, seconds, message)])``."""
    command = [sys.executable, '-m', 'pytest', '-m', 'cuda', 'tests', '-rs', '-p', 'no:cacheprovider',
               f'--junitxml={junit}', *pytest_args]
    print('$', ' '.join(command), flush=True)
    status = subprocess.run(command, cwd=REPO).returncode
    if not osp.isfile(junit):
        return status, []
    results = []
    for case in ET.parse(junit).getroot().iter('testcase'):
        name = f"{case.get('classname', '').rpartition('.')[2]}.py::{case.get('name')}"
        outcome, message = 'passed', ''
        for kind in ('failure', 'error', 'skipped'):
            element = case.find(kind)
            if element is not None:
                outcome, message = {'failure': 'failed'}.get(kind, kind), element.get('message', '')
                break
        results.append((name, outcome, float(case.get('time', 0)), message))
    return status, results


def skip_reason(message):
    """pytest's skip message without its 'Skipped: ' prefix."""
    return message.split('Skipped: ', 1)[-1]


def run_benchmark(arguments, timeout):
    """``bench.py --device cuda`` with ``arguments``: (exit status, what it printed)."""
    command = [sys.executable, osp.join(REPO, 'benchmarks', 'bench.py'), '--device', 'cuda', *arguments]
    print('$', ' '.join(command), flush=True)
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        return 124, f'{expired.stdout or ""}\nstopped after {timeout} s (--benchmark-timeout)\n'
    print(result.stdout, result.stderr[-3000:] if result.returncode else '', flush=True)
    return result.returncode, result.stdout + (f'\n```\n{result.stderr[-3000:]}\n```\n' if result.returncode else '')


def machine():
    gpus = ', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or 'no GPU'
    cuda = f' (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})' if torch.cuda.is_available() else ''
    return (f'{gpus}; {os.cpu_count()} CPUs; torch {torch.__version__}{cuda}; Python {platform.python_version()}; '
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog='gpu_check.py', description=__doc__.splitlines()[0])
    parser.add_argument('--output', default=osp.join(REPO, 'gpu-check', 'figures.md'),
                        help='the figures file (markdown); its folder also gets cuda-tests.xml')
    parser.add_argument('--benchmark-timeout', type=int, default=300, help='seconds each benchmark run may take')
    parser.add_argument('pytest_args', nargs='*', help='more pytest arguments, after --')
    args = parser.parse_args(argv)
    output = osp.abspath(args.output)
    os.makedirs(osp.dirname(output), exist_ok=True)
    started = time.time()
    lines = [f'# GPU check, {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}', '', f'Machine: {machine()}', '']

    status, results = run_tests(osp.join(osp.dirname(output), 'cuda-tests.xml'), args.pytest_args)
    counts = collections.Counter(outcome for _, outcome, _, _ in results)
    lines += [f'## Tests marked cuda: {len(results)}, ' + ', '.join(f'{n} {o}' for o, n in sorted(counts.items())),
              '', '| test | outcome | seconds | message |', '|---|---|---|---|']
    lines += [f'| {name} | {outcome} | {seconds:.1f} | {message.splitlines()[0] if message else ""} |'
              for name, outcome, seconds, message in results]
    failed = status != 0  # pytest: 1 a test failed, 2-4 it could not run them, 5 no test is marked cuda

    if not torch.cuda.is_available():
        reasons = collections.Counter(skip_reason(m) for _, outcome, _, m in results if outcome == 'skipped')
        why = '; '.join(f'{n} x {reason}' for reason, n in reasons.items()) or 'none collected'
        banner = f'no GPU: {counts["skipped"]} CUDA tests skipped ({why}), benchmarks not run'
        lines += ['', f'**{banner}.**']
    else:
        for title, arguments in BENCHMARKS:
            code, printed = run_benchmark(arguments, args.benchmark_timeout)
            failed = failed or code != 0
            command = f'python benchmarks/bench.py --device cuda {" ".join(arguments)}'.strip()
            printed = printed.replace('# U-SAID benchmark', 'U-SAID benchmark', 1).replace('\n## (', '\n### (')
            lines += ['', f'## Benchmark: {title}', '', f'`{command}` (exit status {code})', '', printed]
        banner = (f'{counts["passed"]} CUDA tests passed, {counts["failed"] + counts["error"]} failed, '
                  f'{counts["skipped"]} skipped; benchmarks {"failed" if failed else "done"}')
    minutes = (time.time() - started) / 60
    lines += ['', f'Total time: {minutes:.1f} min (budget: 10 min on one H100).', '']
    write_atomically(output, lambda f: f.write('\n'.join(lines).encode()))
    print(f'\n{"=" * 100}\ngpu-check: {banner}. {minutes:.1f} min. Figures: {output}\n{"=" * 100}', flush=True)
    return int(bool(failed))


if __name__ == '__main__':
    sys.exit(main())
