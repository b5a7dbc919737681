"""The released IntereStyle code (seungjun-moon/interestyle), as it trains.

Differs from the paper (``configs/ffhq.py``) in two choices of the release:

* datasets/images_dataset.py blurs the *whole* photo (not only the uninterest
  region), with PIL ``GaussianBlur(radius=r)``, r = 16, 9, 4, 1, 0, at its
  full 1024 px, before configs/transforms_config.py resizes it to 256;
* training/coach_restyle_psp.py has the InD pass
  (``perform_background_augmentation_on_batch``) commented out.

Like the paper it back-propagates only the last iteration's loss: the coach
overwrites ``loss`` inside the iteration loop and calls ``backward()`` once
after it. Each field's comment names the release file it follows. Paths are
the README's ``convert`` outputs, as in ``configs/ffhq.py``.
"""

from interestyle_jax.training.config import default_config


def get_config():
  """The FFHQ configuration of the released IntereStyle code."""
  c = default_config()
  c.seed = 0  # PRNG seed.
  c.num_train_steps = 200_000  # Optimizer steps (options/train_options.py: max_steps 500,000; the paper's models stop earlier).
  c.batch_size = 8  # options/train_options.py takes it on the command line (default 4); the paper trains with 8.
  c.eval_batch_size = 8  # Validation batch.
  c.log_every_steps = 100  # Train scalars every N steps.
  c.eval_every_steps = 5_000  # Validation every N steps.
  c.checkpoint_every_steps = 5_000  # Checkpoint + inference export every N steps.
  c.image_every_steps = 1_000  # Image grids every N steps.
  c.profile_steps = 5  # Profile 5 steps after the 10th.

  c.model.generator_path = 'ckpt/stylegan2-ffhq'  # options/train_options.py: output_size 1024 (stylegan2-ffhq-config-f.pt).
  c.model.encoder_init_path = 'ckpt/encoder_init'  # ArcFace IR-SE50 start, as ReStyle's models/psp.py the release builds on.
  c.model.encoder_size = 256  # configs/transforms_config.py: Resize((256, 256)); G's 1024 px output pooled to 256.
  c.model.n_iters = 5  # options/train_options.py: n_iters_per_batch 5.
  c.model.encoder.backbone = 'ir_se'  # options/train_options.py: encoder_type BackboneEncoder (IR-SE50).
  c.model.encoder.num_layers = 50  # options/train_options.py: BackboneEncoder's IR-SE50, 3/4/14/3 units.
  c.model.encoder.width = 64  # IR-SE50: 64/128/256/512 channels.

  c.filter.region = 'whole'  # datasets/images_dataset.py: from_im.filter(GaussianBlur) blurs the whole photo.
  c.filter.sigmas = (16.0, 9.0, 4.0, 1.0, 0.0)  # datasets/images_dataset.py: radius 16, 9, 4, 1, then the unblurred photo.
  c.filter.source_size = 1024  # datasets/images_dataset.py blurs the 1024 px FFHQ photo, configs/transforms_config.py then resizes.
  c.filter.padding = 'reflect'  # PIL's blur repeats the edge pixel; mirror padding is the closest option here.

  c.loss.l2 = 1.0  # options/train_options.py: l2_lambda (command line; paper 1.0).
  c.loss.lpips = 0.8  # options/train_options.py: lpips_lambda (command line; paper 0.8).
  c.loss.id = 0.1  # options/train_options.py: id_lambda (command line; paper 0.1).
  c.loss.w_norm = 0.0  # options/train_options.py: w_norm_lambda default 0.
  c.loss.ind = 0.0  # training/coach_restyle_psp.py: the InD (background augmentation) pass is commented out.
  c.loss.iterations = 'last'  # training/coach_restyle_psp.py: loss overwritten per iteration, one backward() after the loop ('all' = ReStyle).
  c.loss.lpips_path = 'ckpt/lpips'  # convert lpips alex.pth ckpt/lpips --alexnet …
  c.loss.id_path = 'ckpt/arcface'  # convert irse50 model_ir_se50.pth ckpt/arcface

  c.optim.lr = 1e-4  # options/train_options.py: learning_rate 0.0001, optim_name 'ranger'.
  c.optim.b1 = 0.95  # training/ranger.py: betas (0.95, 0.999).
  c.optim.b2 = 0.999  # training/ranger.py: betas (0.95, 0.999).
  c.optim.eps = 1e-5  # training/ranger.py: eps 1e-5 (added to √v there, to the bias-corrected √v̂ by optax).
  c.optim.lookahead_k = 6  # training/ranger.py: k 6.
  c.optim.lookahead_alpha = 0.5  # training/ranger.py: alpha 0.5.
  c.optim.grad_centralization = True  # training/ranger.py: use_gc True.

  c.data.source = 'folder'  # Real images + masks.
  c.data.train_dir = 'data/ffhq'  # FFHQ: images/ + masks/ (face + hair).
  c.data.test_dir = 'data/celebahq_test'  # CelebA-HQ test split (2,824 images).
  c.data.image_size = 256  # configs/transforms_config.py: Resize((256, 256)), PIL bilinear as here.
  c.data.random_flip = True  # datasets/images_dataset.py: image and mask flipped together with p = 0.5.
  c.data.shuffle_buffer = 4096  # Encoded examples in the shuffle buffer.
  c.data.strict = False  # Skip (and count) unreadable files.
  return c
