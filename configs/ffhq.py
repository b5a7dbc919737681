"""The paper setting: FFHQ → CelebA-HQ test, 1024 px StyleGAN2, IR-SE50, T = 5.

IntereStyle as the paper describes it (Moon & Park 2022): the *uninterest*
region is low-pass filtered with σ = (16, 9, 4, 1, 0) px of the 1024 px photos
(σ = (4, 2.25, 1, 0.25, 0) px at the 256 px encoder input), only the last
iteration carries the reconstruction loss, plus the InD pass (λ 0.05).
``configs/ffhq_release.py`` is the released code instead (whole-image blur,
no InD).

Paths point at directories written by ``python -m interestyle_jax.convert``
(the README's commands) and at folder datasets (ROOT/images + ROOT/masks);
override them with ``--config.model.generator_path=…`` etc.
"""

from interestyle_jax.training.config import default_config


def get_config():
  """The FFHQ configuration (IntereStyle, Moon & Park 2022)."""
  c = default_config()
  c.seed = 0  # PRNG seed.
  c.num_train_steps = 200_000  # Optimizer steps.
  c.batch_size = 8  # Global batch (paper: 8).
  c.eval_batch_size = 8  # Validation batch.
  c.log_every_steps = 100  # Train scalars every N steps.
  c.eval_every_steps = 5_000  # Validation every N steps.
  c.checkpoint_every_steps = 5_000  # Checkpoint + inference export every N steps.
  c.image_every_steps = 1_000  # Image grids every N steps.
  c.profile_steps = 5  # Profile 5 steps after the 10th.

  c.model.generator_path = 'ckpt/stylegan2-ffhq'  # convert stylegan2 stylegan2-ffhq-config-f.pt ckpt/stylegan2-ffhq
  c.model.encoder_init_path = 'ckpt/encoder_init'  # convert irse50 model_ir_se50.pth ckpt/encoder_init --as_encoder_backbone 18
  c.model.encoder_size = 256  # 1024 px output pooled 4x4 to 256.
  c.model.n_iters = 5  # T.
  c.model.encoder.backbone = 'ir_se'  # IR-SE50 backbone.
  c.model.encoder.num_layers = 50  # 3/4/14/3 units.
  c.model.encoder.width = 64  # 64/128/256/512 channels.

  c.filter.region = 'uninterest'  # Paper: blur only outside the mask (the release blurs everything).
  c.filter.sigmas = (16.0, 9.0, 4.0, 1.0, 0.0)  # σ per iteration in px of the 1024 px photos.
  c.filter.source_size = 1024  # FFHQ / CelebA-HQ photo side: (4, 2.25, 1, 0.25, 0) px at 256.
  c.filter.padding = 'reflect'  # Mirror padding.

  c.loss.l2 = 1.0  # λ_l2.
  c.loss.lpips = 0.8  # λ_lpips.
  c.loss.id = 0.1  # λ_id.
  c.loss.w_norm = 0.0  # λ_wnorm.
  c.loss.ind = 0.05  # λ_InD.
  c.loss.iterations = 'last'  # IntereStyle: only the last (sharp-input) iteration; 'all' = ReStyle's every-iteration loss.
  c.loss.lpips_path = 'ckpt/lpips'  # convert lpips alex.pth ckpt/lpips --alexnet …
  c.loss.id_path = 'ckpt/arcface'  # convert irse50 model_ir_se50.pth ckpt/arcface

  c.optim.lr = 1e-4  # Ranger learning rate.

  c.data.source = 'folder'  # Real images + masks.
  c.data.train_dir = 'data/ffhq'  # FFHQ: images/ + masks/ (face + hair).
  c.data.test_dir = 'data/celebahq_test'  # CelebA-HQ test split (2,824 images).
  c.data.image_size = 256  # Encoder-size images and masks.
  c.data.shuffle_buffer = 4096  # Encoded examples in the shuffle buffer.
  c.data.strict = False  # Skip (and count) unreadable files.
  return c
