"""Accuracy on product-photo renderings of the test split: prints one JSON line.

python -m benchmarks.photo_rendering [--workdir=pretrained] [--backgrounds=255,235] [--num_images=10000]

Each test image is rendered the way Fashion-MNIST's own images were made from, reversed: the
article dark (negated), upscaled `--scale` times (bicubic), pasted through its own mask at a random
offset (`--seed`) onto a `--canvas` of grey level `background`, JPEG-compressed at `--quality`.
Each rendering goes through `images.load_image` (polarity, backdrop, trim, fit) and the model's
`predict.Predictor`; `plain_accuracy` is the same model on the dataset images themselves.
"""

import io
import json

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from fmnist_jax import images
from fmnist_jax import input_pipeline
from fmnist_jax import predict

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A trained run; default: the shipped model.")
flags.DEFINE_list("backgrounds", ["255", "235"], "Canvas grey levels (255: white), one measurement each.")
flags.DEFINE_integer("num_images", 10_000, "The first N test images (canonical order).", lower_bound=1)
flags.DEFINE_integer("scale", 12, "Upscaling factor of the 28×28 article.", lower_bound=1)
flags.DEFINE_list("canvas", ["700", "600"], "Canvas width, height in pixels.")
flags.DEFINE_integer("quality", 92, "JPEG quality.")
flags.DEFINE_integer("seed", 0, "Seed of the random offsets.")
flags.DEFINE_enum("data_source", "auto", ["auto", "tfds", "idx"], "Where the test split is read from.")


def render(x: np.ndarray, *, scale: int, canvas, offset, quality: int, background: int) -> bytes:
  """uint8 [28, 28] → JPEG bytes of a dark article on a light canvas."""
  side = 28 * scale
  article = Image.fromarray(255 - x).resize((side, side), Image.Resampling.BICUBIC)
  mask = Image.fromarray(np.where(x > 0, 255, 0).astype(np.uint8)).resize((side, side))
  photo = Image.new("L", tuple(canvas), background)
  photo.paste(article, tuple(int(o) for o in offset), mask)
  buf = io.BytesIO()
  photo.convert("RGB").save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def main(argv):
  del argv
  predictor = predict.Predictor(FLAGS.workdir or predict.pretrained_dir())
  data_config = predictor.config.data
  data_config.source = FLAGS.data_source
  test = input_pipeline.load_dataset(data_config)["test"]
  x, labels = test.images[:FLAGS.num_images, ..., 0], test.labels[:FLAGS.num_images]
  canvas = [int(c) for c in FLAGS.canvas]
  side = 28 * FLAGS.scale
  offsets = np.random.default_rng(FLAGS.seed).integers(0, [canvas[0] - side + 1, canvas[1] - side + 1],
                                                       size=(len(x), 2))
  plain = predictor.probabilities(x[..., None].astype(np.float32) / 255.0).argmax(1)
  result = {"workdir": FLAGS.workdir or "pretrained", "step": predictor.step, "num_images": len(x),
            "scale": FLAGS.scale, "canvas": canvas, "quality": FLAGS.quality, "seed": FLAGS.seed,
            "plain_accuracy": float(np.mean(plain == labels)), "photo_accuracy": {}}
  for background in (int(b) for b in FLAGS.backgrounds):
    loaded = np.stack([images.load_image(render(xi, scale=FLAGS.scale, canvas=canvas, offset=o,
                                                quality=FLAGS.quality, background=background))
                       for xi, o in zip(x, offsets)])
    predicted = predictor.probabilities(loaded).argmax(1)
    result["photo_accuracy"][str(background)] = float(np.mean(predicted == labels))
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
