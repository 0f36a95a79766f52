"""Apply docs/integrations.md's ECT edit to locuslab/ect (4311059) training/loss.py and run ECMLoss on CPU.

Usage: python verify_ect.py HOST_CHECKOUT [patched|unpatched]   (HOST_CHECKOUT: a clean copy of locuslab/ect at 4311059;
the edits are applied to a temporary copy). The recipe is docs/integrations.md's; this script applies exactly its
lines, with the host's GPU-only pieces replaced for a CPU (named where they are).
HOST_CHECKOUT needs training/, torch_utils/ and dnnlib/. ECMLoss takes the CUDA RNG state to share dropout
masks; on a CPU the CPU RNG's functions stand in for it.
"""
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HOST = Path(tempfile.mkdtemp()) / "host"
shutil.copytree(sys.argv[1], HOST, ignore=shutil.ignore_patterns(".git"))
loss_py = HOST / "training/loss.py"
text = loss_py.read_text()
text = text.replace("from torch_utils import distributed as dist\n",
                    "from torch_utils import distributed as dist\nfrom mfd_loss import MFD, TangentLoss\n", 1)
init_end = "        dist.print0(f'P_mean: {self.P_mean}, P_std: {self.P_std}, q: {self.q}, k {self.k}, b {self.b}, c: {self.c}')\n"
assert text.count(init_end) == 1
text = text.replace(init_end, init_end + '        self.tangent_loss = TangentLoss(MFD(pretrained="cifar10"), reduction="none")\n')
start, end = text.index("        # L2 Loss\n"), text.index("        return loss / (t - r).flatten()\n")
old_block = text[start:end + len("        return loss / (t - r).flatten()\n")]
print("replaced", len([l for l in old_block.splitlines() if l.strip()]), "non-blank lines")
text = text[:start] + "        return self.tangent_loss(D_yt, D_yr, weight=1 / (t - r).flatten())\n" + text[end + len("        return loss / (t - r).flatten()\n"):]
loss_py.write_text(text)

sys.path.insert(0, str(HOST))
torch.cuda.get_rng_state = torch.get_rng_state      # ECMLoss shares the dropout mask via the CUDA RNG; CPU here
torch.cuda.set_rng_state = torch.set_rng_state
from training.loss import ECMLoss

class Net(torch.nn.Module):  # ECT's EDMPrecond signature: net(x, sigma, labels, augment_labels=None)
    def __init__(self):
        super().__init__(); self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    def forward(self, x, sigma, labels=None, augment_labels=None):
        s = sigma.reshape(-1, 1, 1, 1)
        return x / (1 + s ** 2) ** 0.5 * 0.5 + self.conv(x) * s / (1 + s ** 2) ** 0.5

from mfd_loss import load_sample_images
images = load_sample_images()[0][:8].float() / 127.5 - 1
net = Net()
loss_fn = ECMLoss()
loss_fn.update_schedule(0)
torch.manual_seed(0)
loss = loss_fn(net=net, images=images)
print("loss", tuple(loss.shape), [round(v, 1) for v in loss.tolist()])
loss.mul(1).mean().backward()                       # ct_training_loop: loss.mul(loss_scaling).mean().backward()
assert loss.shape == (8,) and net.conv.weight.grad.abs().sum() > 0
blob = pickle.dumps(dict(loss_fn=loss_fn))          # the snapshot pickles loss_fn
print("pickled loss_fn", len(blob), "bytes")
again = pickle.loads(blob)["loss_fn"]
print("OK: locuslab/ect 4311059 trains with TangentLoss(MFD) after the documented edit")
