"""The fastest recipes found to a high test accuracy on a 2-core CPU.

The default ("94", toward the 0.940 target): airbench's structure (fmnist_jax/whitening.py) in the CNN:
a fixed 2x2 patch-whitening stem, three two-conv stages (16, 64, 128 channels) with BatchNorm, a
narrow hidden dense layer, GELU; Muon at batch 1000 with a warmup + linear-decay schedule, label smoothing,
random mirror and 2-pixel shifts, 8 epochs, 18-view TTA (mirror, 1- and 2-pixel shifts).
":conv3": the previous 8-epoch recipe (three one-conv stages, batch 128). ":short": the 3-epoch
record of that network (mirror only, mirror TTA).

  python -m fmnist_jax.main --config=experiments/speedrun.py --workdir=runs/speedrun
  python -m benchmarks.time_to_accuracy --config=experiments/speedrun.py --seeds=5 \\
      --baseline=experiments/base.py --baseline_seeds=2

Expected (seeds 0-4, `time_to_accuracy` with the base alternating): the default 0.9410 ± 0.0012 at
0.971x the base ([record](../docs/records/speedrun94_w2_gelu_tta18_8_epochs_5_seeds.json)); ":conv3" 0.9355 ±
0.0014 at 0.592x ([record](../docs/records/speedrun94_8_epochs_5_seeds.json)); ":short" 0.9306 ± 0.0007
at 0.252x ([record](../docs/records/speedrun_5_seeds.json)). The probes: docs/recipes.md ("Speedrun 94").
"""

from fmnist_jax.experiments import base

VARIANTS = ("94", "conv3", "short")  # --config=experiments/speedrun.py:VARIANT; without one, "94".


def get_config(variant: str = "94"):
  if variant not in VARIANTS:
    raise ValueError(f"experiments/speedrun.py:{variant}: the variant must be '94' (default), 'conv3' or 'short'")
  config = base.get_config()

  # --- Model: [conv3x3 - BN - relu - pool] x 3 (16, 64, 128 channels; 28 -> 14 -> 7 -> 3) - dense 128 - relu - dense 10
  config.model.conv_features = (16, 64, 128)  # Narrow convs (most of a CPU step is convolution); the first, at full
                                              # resolution, narrowest; the third is cheap at 7x7.
  config.model.kernel_size = (3, 3)  # 3x3 windows (the seed's 5x5 cost 2.8x the multiply-adds).
  config.model.dense_features = 128  # A narrow hidden layer before the logits.
  config.model.activation = "relu"  # With BatchNorm, relu trains as well as elu and costs less.
  config.model.batch_norm = True  # BatchNorm after each conv.

  # --- Optimizer and schedule -------------------------------------------------
  config.optimizer = "muon"  # Muon: orthogonalized momentum for the kernels, Adam for biases and BatchNorm.
  config.momentum = 0.9  # Muon's momentum (Nesterov).
  config.learning_rate = 0.03  # Peak Muon rate.
  config.adam_learning_rate = 0.003  # Peak Adam rate of the biases and BatchNorm scales and offsets.
  config.weight_decay = 0.0  # No weight decay (Muon's is decoupled: rate x decay per step).
  config.schedule = "warmup_linear"  # Linear rise, then linear decay to lr_end_factor.
  config.warmup_fraction = 0.2  # The first fifth of the steps rise to the peak.
  config.lr_start_factor = 0.05  # Start at a twentieth of the peak.
  config.lr_end_factor = 0.0  # End at zero.

  # --- Regularization, augmentation, evaluation ------------------------------
  config.label_smoothing = 0.1  # Smoothed targets.
  config.augment.flip = True  # Random mirror.
  config.augment.translate_pixels = 0 if variant == "short" else 2  # Random 2-pixel shifts (cost accuracy in 3 epochs).
  config.eval_flip_tta = True  # Evaluation and prediction average each image with its mirror ...
  config.eval_tta_shift_pixels = 0 if variant == "short" else 1  # ... and its 1-pixel shifts (10 views).

  # --- Length -----------------------------------------------------------------
  config.batch_size = 128  # Smaller batches: more updates per epoch at the same cost per image.
  config.num_epochs = 3 if variant == "short" else 8  # 1404 or 3744 steps.
  config.eval_every_steps = 468  # Once per epoch (an evaluation costs several training steps here).
  config.log_every_steps = 117  # Four train windows per epoch.
  config.checkpoint_every_steps = 468  # Once per epoch.

  if variant == "94":
    # --- airbench's structure: 28 -> whitening stem 26 -> 13 -> 6 -> 3 ---------
    config.model.whiten_kernel_size = 2  # Fixed 2x2 patch-whitening filters (8) of the training images first.
    config.model.convs_per_stage = 2  # conv - pool - BN - gelu - conv - BN - gelu: the second conv at half size.
    config.model.activation = "gelu"  # airbench's: 0.0015 above relu on seeds 0 and 1, at 3% more time.
    # --- Larger batches: a CPU step costs less per image; Muon's rate rises with them.
    config.batch_size = 1000  # 60 steps per epoch, 480 in all.
    config.learning_rate = 0.1  # Peak Muon rate (0.07 and 0.15 trained worse).
    config.adam_learning_rate = 0.01  # Peak Adam rate of the biases and BatchNorm.
    config.eval_every_steps = 60  # Once per epoch.
    config.log_every_steps = 15  # Four train windows per epoch.
    config.checkpoint_every_steps = 60  # Once per epoch.
    config.eval_tta_shift_pixels = 2  # Shifts by 1 and 2 pixels: 18 views (evaluation is outside the clock).
  return config
