"""A tiny ResNet with every recipe component on (BatchNorm, dropout, augmentation, schedule, label
smoothing, EMA, flip TTA): seconds to train, for tests and as an example of a resnet config.

  python -m fmnist_jax.main --config=experiments/resnet_smoke.py --workdir=runs/resnet_smoke

Expected: 20 steps in seconds on a CPU and a checkpoint with BatchNorm statistics and an EMA; its
accuracy is not a result (no record: tests/test_recipes.py checks what it exercises).
"""

from fmnist_jax import model_families
from fmnist_jax.experiments import base


def get_config():
  config = base.get_config()
  config.model = model_families.resnet_config()
  config.model.stem_features = 4  # Tiny widths: seconds per run on 2 CPU cores.
  config.model.stage_features = (4, 8)  # Two stages (28x28, 14x14).
  config.model.blocks_per_stage = (1, 1)  # One residual block per stage.
  config.model.stage_strides = (1, 2)  # The second stage halves the resolution.
  config.model.dropout_rate = 0.1  # Dropout between the convolutions of each block.
  config.optimizer = "sgd"  # SGD with Nesterov momentum.
  config.nesterov = True  # Nesterov momentum.
  config.learning_rate = 0.05  # Peak rate of the one-cycle schedule.
  config.weight_decay = 5e-4  # L2 on the kernels.
  config.schedule = "one_cycle"  # Cosine rise to the peak, cosine fall to lr_end_factor.
  config.warmup_fraction = 0.25  # A quarter of the steps rising.
  config.lr_start_factor = 0.1  # Start at a tenth of the peak.
  config.label_smoothing = 0.1  # Smoothed targets.
  config.ema_decay = 0.9  # Short runs: a short average.
  config.eval_flip_tta = True  # Mirror-averaged evaluation.
  config.eval_tta_shift_pixels = 1  # ...and shift-averaged (10 views).
  config.augment.flip = True  # Random mirror.
  config.augment.translate_pixels = 2  # Random shifts up to 2 pixels.
  config.augment.erase_probability = 0.5  # Random erasing, half of the images.
  config.batch_size = 100  # Small batches.
  config.num_train_steps = 20  # Seconds of training.
  config.eval_batch_size = 1000  # The test split in 10 batches.
  config.log_every_steps = 10  # Log twice.
  config.eval_every_steps = 20  # Evaluate at the end.
  config.checkpoint_every_steps = 10  # Checkpoint twice.
  config.data.source = "idx"  # No TensorFlow needed.
  return config
