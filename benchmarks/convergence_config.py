"""Settings of the convergence benchmark: configurations, the teachers they start from, the losses and their names.

Split from ``convergence.py`` (the command line and the driver); ``convergence_runs.py`` trains and reads the runs,
``convergence_stats.py`` turns curves into statistics, ``convergence_report.py`` writes tables and figures.
"""

from __future__ import annotations

from typing import Any

_TINY_UNET = ["--channels", "16", "--channel-mult", "1,2", "--num-blocks", "1", "--attention", "none"]
_SMOKE_UNET = ["--channels", "8", "--channel-mult", "1,2", "--num-blocks", "1", "--attention", "none"]
_DDPMPP = ["--channels", "128", "--channel-mult", "2,2,2", "--num-blocks", "4", "--attention", "16"]
_EVIDENCE_UNET = ["--channels", "16", "--channel-mult", "1,2,4", "--num-blocks", "2", "--attention", "8", "--dropout", "0"]
_TUNE_LOSSES = "pseudo-huber,mfd,mfd-random,mfd-squared,lpips"
_EVIDENCE_LOSSES = "pseudo-huber,mfd,mfd-random,l2"
_DISTILL_LOSSES = "mfd-value,mfd,mfd-random,pseudo-huber,l2,lpips"
_CONTINUOUS_LOSSES = "mfd-continuous,pixel-continuous,mfd,pseudo-huber"

# The denoisers that tuning and distillation start from (examples/train_diffusion_model.py arguments).
DENOISERS: dict[str, dict[str, Any]] = {
    "smoke": {"steps": 2, "batch_size": 4, "eval_every": 2, "fd_samples": 16,
              "train": [*_SMOKE_UNET, "--dropout", "0", "--sampler-steps", "4", "--num-samples", "4"]},
    # CPU sizing (OMP_NUM_THREADS=1, 0.18 M-parameter U-Net, measured: 0.073 CPU-s/step at batch 16 and 0.55 at
    # batch 128, so ~0.28 at batch 64; one network evaluation 1.8 ms per image): 10,000 steps at batch 64 = 2,800 s,
    # plus 3 Heun evaluations (35 evaluations x 2,000 images x 1.8 ms = 126 s each) = ~3,200 CPU-s, about an
    # hour per data set; the two data sets train side by side, one per core (--shard 0/2 and 1/2). MNIST takes
    # 5,000 steps (320 k images, 5 epochs of the easier data set), so both shards reach the tuning runs at
    # about the same time. Dropout 0: a 0.18 M-parameter network underfits 50k images; Adam 1e-3 as EDM's CIFAR-10 recipe.
    "cpu": {"steps": 10_000, "steps_by_dataset": {"mnist": 5000}, "batch_size": 64, "eval_every": 5000,
            "fd_samples": 2000,
            "train": [*_TINY_UNET, "--dropout", "0", "--optimizer", "adam", "--lr", "1e-3", "--ema-decay", "0.999",
                      "--num-samples", "64"]},
    # issue 19's teachers: trained by benchmarks/evidence_steps.sh (compute plan: benchmarks/README.md, section 3)
    # and committed as float16 EMA weights; read, never retrained here. {dataset} is filled in per data set.
    "evidence": {"pretrained": "benchmarks/teachers/{dataset}/model.safetensors", "train": _EVIDENCE_UNET},
    "gpu": {"steps": 400_000, "batch_size": 512, "eval_every": 50_000, "fd_samples": 10_000,
            "train": [*_DDPMPP, "--dropout", "0.13", "--optimizer", "adam", "--lr", "1e-3", "--ema-decay", "0.9999"]},
}

# Per-configuration settings and examples/train_consistency_model.py arguments (the same for every loss).
# "mode": scratch | tune (--init the denoiser) | distill (--init and --teacher the denoiser).
# "shared": the folder (under --work) holding the FD classifiers and denoisers, shared by configurations.
CONFIGS: dict[str, dict[str, Any]] = {
    "smoke": {"mode": "scratch", "datasets": "cifar10", "batch_sizes": "4", "seeds": "0", "steps": 2, "eval_every": 1,
              "fd_samples": 16, "fd_real": 64, "fd_classifier_steps": 2, "losses": "mfd,pseudo-huber,lpips",
              "train": [*_SMOKE_UNET, "--optimizer", "adam", "--lr", "1e-3", "--ema-decay", "0.99", "--num-samples", "4"]},
    "cpu": {"mode": "scratch", "datasets": "cifar10,mnist", "batch_sizes": "16,128", "seeds": "0,1", "steps": 80,
            "eval_every": 20, "fd_samples": 500, "fd_real": 2000, "fd_classifier_steps": 600,
            "losses": "mfd,pseudo-huber,lpips",
            "train": [*_TINY_UNET, "--optimizer", "adam", "--lr", "1e-3", "--ema-decay", "0.99", "--num-samples", "16"]},
    "gpu": {"mode": "scratch", "datasets": "cifar10,mnist", "batch_sizes": "16,128", "seeds": "0,1,2", "steps": 400_000,
            "eval_every": 10_000, "fd_samples": 10_000, "fd_real": 0, "fd_classifier_steps": 5000,
            "losses": "mfd,pseudo-huber,lpips",
            "train": [*_DDPMPP, "--dropout", "0.2", "--optimizer", "radam", "--lr", "1e-4", "--ema-decay", "0.9999"]},
    "tune-smoke": {"mode": "tune", "denoiser": "smoke", "shared": "tuning-smoke", "datasets": "cifar10",
                   "batch_sizes": "4", "seeds": "0", "steps": 2, "eval_every": 2, "fd_samples": 16, "fd_real": 64,
                   "fd_classifier_steps": 2, "losses": _TUNE_LOSSES,
                   "train": [*_SMOKE_UNET, "--dropout", "0", "--optimizer", "radam", "--lr", "1e-3", "--ema-decay", "0.9",
                             "--num-samples", "4"]},
    # Budget of tune-cpu: about 100 min of 2 cores = 12,000 CPU-s, run as two one-thread shards. Measured CPU-s per
    # step (OMP_NUM_THREADS=1, this 0.18 M-parameter U-Net, shipped 2.3 M-parameter 'cifar10' map), batch 16 / 128:
    #   pseudo-Huber 0.10 / 0.92, MFD 0.134 / 1.11 (random-init and squared MFD cost the same as MFD).
    # One iteration of all runs: per (data set, seed) 0.10 + 3 x 0.134 + 0.92 + 3 x 1.11 = 4.75 CPU-s; x 2 data sets
    # x 2 seeds = 19 CPU-s. 300 iterations = 5,700 CPU-s. Evaluation: 6 points (every 60 iterations, and at 0) x
    # 5,000 samples x 3 network evaluations (1-step + 2-step) x 1.8 ms + FD features ~ 32 s a point, x 6 x 32 runs
    # = 6,100 CPU-s. Total ~ 11,800 CPU-s = 3.3 CPU-h, ~1.7 h on 2 cores after the denoisers (~0.5 h on 2 cores).
    # LPIPS runs are added only when its weights exist.
    # EMA 0.99 (a ~100-iteration average, 1/3 of the run; ECT's 0.9999 is for 400k iterations), dropout 0 (as the
    # denoiser), RAdam at 3e-4 (the paper's 1e-4 is for 400k iterations of a 56 M-parameter network).
    "tune-cpu": {"mode": "tune", "denoiser": "cpu", "shared": "tuning-cpu", "datasets": "cifar10,mnist",
                 "batch_sizes": "16,128", "seeds": "0,1", "steps": 300, "eval_every": 60, "fd_samples": 5000,
                 "fd_real": 10_000, "fd_classifier_steps": 1500, "losses": _TUNE_LOSSES,
                 "train": [*_TINY_UNET, "--dropout", "0", "--optimizer", "radam", "--lr", "3e-4", "--ema-decay", "0.99",
                           "--num-samples", "64"]},
    "tune-gpu": {"mode": "tune", "denoiser": "gpu", "shared": "tuning-gpu", "datasets": "cifar10,mnist",
                 "batch_sizes": "16,128", "seeds": "0,1", "steps": 400_000, "eval_every": 50_000, "fd_samples": 10_000,
                 "fd_real": 0, "fd_classifier_steps": 5000, "losses": _TUNE_LOSSES,
                 "train": [*_DDPMPP, "--dropout", "0.2", "--optimizer", "radam", "--lr", "1e-4", "--ema-decay", "0.9999"]},
    "distill-smoke": {"mode": "distill", "denoiser": "smoke", "shared": "tuning-smoke", "datasets": "cifar10",
                      "batch_sizes": "4", "seeds": "0", "steps": 2, "eval_every": 2, "fd_samples": 16, "fd_real": 64,
                      "fd_classifier_steps": 2, "losses": _DISTILL_LOSSES,
                      "train": [*_SMOKE_UNET, "--dropout", "0", "--optimizer", "adam", "--lr", "1e-3",
                                "--ema-decay", "0.9", "--num-samples", "4"]},
    # Budget of distill-cpu (CIFAR-10, the tune-cpu teacher): the teacher's Heun step adds two no-grad network
    # evaluations per step (+0.045 / +0.4 CPU-s at batch 16 / 128). One iteration of all runs: per seed
    # 2 x 0.145 + 2 x 0.18 (batch 16) + 2 x 1.32 + 2 x 1.51 (batch 128) = 6.3 CPU-s, x 2 seeds = 12.6 CPU-s;
    # 300 iterations = 3,800 CPU-s, evaluation 6 x 32 s x 16 runs = 3,100 CPU-s: ~6,900 CPU-s = 1.9 CPU-h,
    # ~1 h on 2 cores. Measured: the 16 runs without the random-init control took 83 min as two one-thread
    # shards (batch-128 MFD steps ran at 2.5 s wall with both shards busy, 1.7x the estimate), its 4 runs 26 min
    # more. Adam at 4e-4 as Song et al. 2023's CIFAR-10 distillation (not RAdam: its first steps are
    # un-normalised momentum steps, and the value losses - MFD as a value, L2 - have un-normalised gradients).
    "distill-cpu": {"mode": "distill", "denoiser": "cpu", "shared": "tuning-cpu", "datasets": "cifar10",
                    "batch_sizes": "16,128", "seeds": "0,1", "steps": 300, "eval_every": 60, "fd_samples": 5000,
                    "fd_real": 10_000, "fd_classifier_steps": 1500, "losses": _DISTILL_LOSSES,
                    "train": [*_TINY_UNET, "--dropout", "0", "--optimizer", "adam", "--lr", "4e-4",
                              "--ema-decay", "0.99", "--num-samples", "64"]},
    "distill-gpu": {"mode": "distill", "denoiser": "gpu", "shared": "tuning-gpu", "datasets": "cifar10",
                    "batch_sizes": "16,128", "seeds": "0,1", "steps": 400_000, "eval_every": 50_000,
                    "fd_samples": 10_000, "fd_real": 0, "fd_classifier_steps": 5000, "losses": _DISTILL_LOSSES,
                    "train": [*_DDPMPP, "--dropout", "0.2", "--optimizer", "adam", "--lr", "4e-4",
                              "--ema-decay", "0.9999"]},
    "continuous-smoke": {"mode": "distill", "denoiser": "smoke", "shared": "tuning-smoke", "datasets": "cifar10",
                         "batch_sizes": "4", "seeds": "0", "steps": 2, "eval_every": 2, "fd_samples": 16, "fd_real": 64,
                         "fd_classifier_steps": 2, "losses": _CONTINUOUS_LOSSES,
                         "train": [*_SMOKE_UNET, "--dropout", "0", "--optimizer", "adam", "--lr", "1e-3",
                                   "--ema-decay", "0.9", "--num-samples", "4"]},
    "continuous-gpu": {"mode": "distill", "denoiser": "gpu", "shared": "tuning-gpu", "datasets": "cifar10",
                       "batch_sizes": "128", "seeds": "0,1,2", "steps": 100_000, "eval_every": 10_000,
                       "fd_samples": 10_000, "fd_real": 0, "fd_classifier_steps": 5000, "losses": _CONTINUOUS_LOSSES,
                       "train": [*_DDPMPP, "--dropout", "0.2", "--optimizer", "adam", "--lr", "4e-4",
                                 "--ema-decay", "0.9999"]},
    # Issue 19's protocol (benchmarks/README.md, section 3, "Compute plan"): ECT tuning / consistency distillation
    # from the committed teacher, the committed FD classifiers ("metric": "committed") and their reference rows,
    # losses ECT (pseudo-Huber c = 0), AYT with the shipped map, AYT with a random-init map (control), L2. RAdam with
    # a 100-step warm-up, EMA 0.999 (half-life ~700 iterations, a third of a 2,000-iteration run; ECT's 0.9999
    # is for 400k). First the LR sweep (seed 0, both rates), then >= 3 seeds at the chosen rate (--lrs X):
    #   python benchmarks/convergence.py --config evidence-sweep-cpu --device cpu --threads 1
    #   python benchmarks/convergence.py --config evidence-tune-cpu --lrs 1e-4 --device cpu --threads 1
    # Seeds are paired: the same seed gives every loss the same initialisation, data order, noise and dropout.
    "evidence-smoke": {"mode": "tune", "denoiser": "smoke", "shared": "tuning-smoke", "datasets": "cifar10",
                       "batch_sizes": "4", "seeds": "0,1", "lrs": "1e-4,3e-4", "steps": 2, "eval_every": 2,
                       "fd_samples": 16, "fd_real": 64, "fd_classifier_steps": 2, "references": True,
                       "losses": "pseudo-huber,mfd",
                       "train": [*_SMOKE_UNET, "--dropout", "0", "--optimizer", "radam", "--lr-warmup", "2",
                                 "--ema-decay", "0.9", "--num-samples", "4"]},
    "evidence-sweep-cpu": {"mode": "tune", "denoiser": "evidence", "shared": "evidence", "datasets": "cifar10",
                           "batch_sizes": "16", "seeds": "0", "lrs": "1e-4,3e-4", "steps": 1000, "eval_every": 250,
                           "fd_samples": 5000, "fd_real": 0, "metric": "committed", "references": True,
                           "losses": "pseudo-huber,mfd",
                           "train": [*_EVIDENCE_UNET, "--optimizer", "radam", "--lr-warmup", "100",
                                     "--ema-decay", "0.999", "--num-samples", "64"]},
    "evidence-tune-cpu": {"mode": "tune", "denoiser": "evidence", "shared": "evidence", "datasets": "cifar10",
                          "batch_sizes": "16", "seeds": "0,1,2", "lrs": "1e-4", "steps": 2000, "eval_every": 500,
                          "fd_samples": 5000, "fd_real": 0, "metric": "committed", "references": True,
                          "losses": _EVIDENCE_LOSSES,
                          "train": [*_EVIDENCE_UNET, "--optimizer", "radam", "--lr-warmup", "100",
                                    "--ema-decay", "0.999", "--num-samples", "64"]},
    "evidence-distill-cpu": {"mode": "distill", "denoiser": "evidence", "shared": "evidence", "datasets": "cifar10",
                             "batch_sizes": "16", "seeds": "0,1,2", "lrs": "1e-4", "steps": 2000, "eval_every": 500,
                             "fd_samples": 5000, "fd_real": 0, "metric": "committed", "references": True,
                             "losses": _EVIDENCE_LOSSES,
                             "train": [*_EVIDENCE_UNET, "--optimizer", "radam", "--lr-warmup", "100",
                                       "--ema-decay", "0.999", "--num-samples", "64"]},
}
LOSSES = {"mfd": ["--loss", "mfd"], "pseudo-huber": ["--loss", "pseudo-huber", "--huber-c", "0"],
          "lpips": ["--loss", "lpips"], "l2": ["--loss", "l2"],
          "mfd-random": ["--loss", "mfd", "--mfd-init", "random"],
          "mfd-squared": ["--loss", "mfd", "--mfd-distance", "squared"],
          "mfd-value": ["--loss", "mfd", "--direction", "raw"],
          "mfd-continuous": ["--objective", "continuous", "--loss", "mfd"],
          "pixel-continuous": ["--objective", "continuous", "--loss", "l2"]}
LABELS = {"mfd": "MFD (AYT)", "pseudo-huber": "pseudo-Huber c=0 (ECT)", "lpips": "LPIPS (AYT direction)",
          "l2": "L2", "mfd-random": "MFD random-init map (AYT)", "mfd-squared": "MFD squared (AYT)",
          "mfd-value": "MFD as loss value", "mfd-continuous": "MFD continuous-time",
          "pixel-continuous": "pixel continuous-time (sCM-style)"}
REFERENCE = "pseudo-huber"  # the loss every other one is measured against (ECT)
# Distillation has no ECT: there the reference is the plain pseudo-Huber c=0 distance to the teacher-step target.
_DISTILL_LABELS = {"pseudo-huber": "pseudo-Huber c=0"}


def label(loss: str, mode: str) -> str:
    """Table and legend name of ``loss`` in a benchmark of ``mode`` (scratch, tune or distill)."""
    return (_DISTILL_LABELS if mode == "distill" else {}).get(loss, LABELS[loss])


def reference_name(mode: str) -> str:
    """Short name of the reference loss in table headers: ECT, or pseudo-Huber in distillation."""
    return "pseudo-Huber" if mode == "distill" else "ECT"

