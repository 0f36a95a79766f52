"""Apply docs/integrations.md's edits for openai/consistency_models (e32b69e) and run one CT loss step on CPU.

Usage: python verify_openai_cm.py HOST_CHECKOUT [patched|unpatched]   (HOST_CHECKOUT: a clean copy of openai/consistency_models at e32b69e;
the edits are applied to a temporary copy). The recipe is docs/integrations.md's; this script applies exactly its
lines, with the host's GPU-only pieces replaced for a CPU (named where they are).
Needs einops (the UNet's legacy attention); piq, mpi4py and blobfile are stubbed (the stub LPIPS records
whether the host built it). With "unpatched" it shows that --loss_norm never reaches KarrasDenoiser.
"""
import copy
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch

HOST = Path(tempfile.mkdtemp()) / "host"
shutil.copytree(sys.argv[1], HOST, ignore=shutil.ignore_patterns(".git"))
PATCH = len(sys.argv) < 3 or sys.argv[2] == "patched"
constructed = []
piq = types.ModuleType("piq")
class LPIPS(torch.nn.Module):
    def __init__(self, *a, **k): super().__init__(); constructed.append("LPIPS")
    def forward(self, x, y): return ((x - y) ** 2).flatten(1).mean(1)
piq.LPIPS = LPIPS
sys.modules["piq"] = piq
for name in ("mpi4py", "blobfile"):
    m = types.ModuleType(name); m.MPI = None; sys.modules[name] = m

def edit(path, old, new):
    text = path.read_text(); assert text.count(old) == 1, (path, old); path.write_text(text.replace(old, new))

if PATCH:
    kd = HOST / "cm/karras_diffusion.py"
    edit(kd, "from piq import LPIPS\n", "from piq import LPIPS\nfrom mfd_loss import MFD, TangentLoss\n")
    edit(kd, '''            self.lpips_loss = LPIPS(replace_pooling=True, reduction="none")
''', '''            self.lpips_loss = LPIPS(replace_pooling=True, reduction="none")
        elif loss_norm == "mfd":
            self.mfd_loss = TangentLoss(MFD(pretrained="cifar10"), reduction="none")
''')
    text = kd.read_text()
    i = text.index("    def consistency_losses(")
    j = text.index('            raise ValueError(f"Unknown loss norm {self.loss_norm}")', i)
    k = text.rindex("        else:\n", i, j)
    kd.write_text(text[:k] + '''        elif self.loss_norm == "mfd":
            loss = self.mfd_loss(distiller, distiller_target, weight=weights)
''' + text[k:])
    su = HOST / "cm/script_util.py"
    edit(su, "    distillation=False,\n):", '    distillation=False,\n    loss_norm="lpips",\n):')
    edit(su, "        weight_schedule=weight_schedule,\n    )", "        weight_schedule=weight_schedule,\n        loss_norm=loss_norm,\n    )")
    ct = HOST / "scripts/cm_train.py"
    edit(ct, '    model_and_diffusion_kwargs["distillation"] = distillation\n',
         '    model_and_diffusion_kwargs["distillation"] = distillation\n    model_and_diffusion_kwargs["loss_norm"] = args.loss_norm\n')

sys.path.insert(0, str(HOST))
import cm.unet  # flash-attn needs a GPU: the CPU check uses the UNet's own legacy QKV attention
_defaults = list(cm.unet.AttentionBlock.__init__.__defaults__)
_defaults[_defaults.index("flash")] = "legacy"
cm.unet.AttentionBlock.__init__.__defaults__ = tuple(_defaults)
from cm.script_util import model_and_diffusion_defaults, cm_train_defaults, create_model_and_diffusion, args_to_dict
import argparse
args = argparse.Namespace(**{**model_and_diffusion_defaults(), **cm_train_defaults()})
args.loss_norm = "mfd"; args.image_size = 32; args.num_channels = 32; args.num_res_blocks = 1
args.attention_resolutions = "16"; args.channel_mult = "1,2"; args.training_mode = "consistency_training"
# scripts/cm_train.py, main(): the lines that build the model and the diffusion, executed as the host has them
src = (HOST / "scripts/cm_train.py").read_text()
block = src[src.index("    model_and_diffusion_kwargs = args_to_dict("):src.index("    model.to(dist_util.dev())")]
ns = dict(args=args, args_to_dict=args_to_dict, model_and_diffusion_defaults=model_and_diffusion_defaults,
          create_model_and_diffusion=create_model_and_diffusion, distillation=True)
exec(compile("\n".join(l[4:] for l in block.splitlines()), "cm_train.py", "exec"), ns)
model, diffusion = ns["model"], ns["diffusion"]
print("KarrasDenoiser.loss_norm =", diffusion.loss_norm, "| LPIPS constructed:", constructed)
if diffusion.loss_norm != "mfd":
    sys.exit("cm_train.py --loss_norm mfd does not reach KarrasDenoiser: it trains with " + diffusion.loss_norm)
target = copy.deepcopy(model)
from mfd_loss import load_sample_images
x = load_sample_images()[0][:8].float() / 127.5 - 1
torch.manual_seed(0)
terms = diffusion.consistency_losses(model, x, num_scales=18, target_model=target)
loss = terms["loss"]
print("loss", tuple(loss.shape), [round(v, 1) for v in loss.tolist()])
loss.mean().backward()
grads = sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None)
print("model gradient L1", grads, "| target grads", any(p.grad is not None for p in target.parameters()))
assert loss.shape == (8,) and grads > 0 and constructed == []
print("OK: openai/consistency_models e32b69e trains with TangentLoss(MFD) after the documented edits")
