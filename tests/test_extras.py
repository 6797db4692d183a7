"""The optional packages stay optional: without them the package and its training code import and .pth checkpoints
load, and what needs one names the extra to install, with setup.py's requirements."""
import subprocess
import sys

from tests.conftest import REPO

BLOCKED = ('safetensors', 'onnx', 'onnxscript', 'onnxruntime', 'spandrel')
SCRIPT = f'''
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # what an interpreter without the package gives: ImportError on import
import torch
import usaid, usaid.api, usaid.export, usaid.tools.export, usaid.train  # noqa: F401
from usaid.archs import USAID
from usaid.checkpoint import canonical_state_dict, load_checkpoint
from usaid.errors import MissingExtraError
torch.save({{'params': USAID(num_layers=3, num_feat=8).state_dict()}}, 'net.pth')
assert canonical_state_dict('net.pth', net=USAID(num_layers=3, num_feat=8))
open('net.safetensors', 'wb').write((16).to_bytes(8, 'little') + b'{{"__metadata__":{{}}}}')
try:
    load_checkpoint('net.safetensors')
except MissingExtraError as error:
    print(error)
'''


def test_without_the_optional_packages_training_code_works_and_the_extra_is_named(tmp_path):
    result = subprocess.run([sys.executable, '-c', SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                            env={'PYTHONPATH': str(REPO)})
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith('net.safetensors: a safetensors file needs the Python package')
    assert "install the safetensors extra: pip install 'safetensors>=" in message
