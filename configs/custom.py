"""Your own domain: a folder of your images, optional interest masks, your StyleGAN2.

A template: copy it, or override its fields with ``--config.<field>=…``::

    # 1. The generator: an NVIDIA StyleGAN2-ADA / StyleGAN3 (--cfg=stylegan2)
    #    network .pkl or a rosinality .pt (read as data, no code runs).
    python -m interestyle_jax.convert stylegan2 network-snapshot.pkl ckpt/my-gan
    # 2. The data: ROOT/images/<stem>.{png,jpg,…} and, optionally, ROOT/masks/<stem>.png.
    # 3. Train.
    python train.py --config configs/custom.py --workdir runs/my-gan \\
        --config.model.generator_path=ckpt/my-gan \\
        --config.data.train_dir=data/mine/train --config.data.test_dir=data/mine/test

What the interest region means outside faces: the part of each photo the
generator can draw and the inversion must keep — the car, the cat's head and
fur, the bedroom's furniture — as opposed to what it cannot or should not
(people in front of the car, a hand holding the cat, watermarks, text,
backgrounds outside the training distribution). Masks are grey PNGs the size
of their image, 255 = interest, soft edges allowed; any segmentation tool
that finds the object will do (``make_masks`` is a face parser).

Without masks (``data.masks=False``, images only) every pixel is interest:
the uninterest filter has nothing to blur, the losses cover the whole image,
and with ``loss.ind=0`` (required) the run is the ReStyle-pSp baseline.

Any generator resolution works: its output is average-pooled to
``model.encoder_size`` (a multiple of 16; 256 as in the paper for ≥ 256 px
generators, the generator's own size below). The encoder backbone is
ResNet-34 as ReStyle uses for non-face domains (random init here: this
project reads no ImageNet weights), or IR-SE50 (``backbone='ir_se'``,
optionally from ArcFace weights via ``model.encoder_init_path``) for faces.
"""

from interestyle_jax.training.config import default_config


def get_config():
  """The custom-domain template (IntereStyle recipe, ResNet-34 encoder)."""
  c = default_config()
  c.seed = 0  # PRNG seed.
  c.num_train_steps = 100_000  # Optimizer steps (ReStyle trains non-face domains ~100k-200k).
  c.batch_size = 8  # Global batch (paper: 8).
  c.eval_batch_size = 8  # Validation batch.
  c.log_every_steps = 100  # Train scalars every N steps.
  c.eval_every_steps = 5_000  # Validation every N steps.
  c.checkpoint_every_steps = 5_000  # Checkpoint + inference export every N steps.
  c.image_every_steps = 1_000  # Image grids every N steps.

  c.model.generator_path = 'ckpt/my-gan'  # `convert stylegan2 network-snapshot.pkl ckpt/my-gan` (.pkl or .pt).
  c.model.encoder_init_path = ''  # '' = random init; an ArcFace `convert irse50 … --as_encoder_backbone N` dir only with backbone='ir_se'.
  c.model.encoder_size = 256  # Encoder input side (multiple of 16): 256, or the generator's side when smaller.
  c.model.n_iters = 5  # Refinement iterations T.
  c.model.encoder.backbone = 'resnet34'  # ReStyle's non-face backbone (3/4/6/3 blocks); 'ir_se' = IR-SE50.
  c.model.encoder.width = 64  # First-stage channels (64/128/256/512).

  c.filter.region = 'uninterest'  # Blur only outside the mask (the paper); 'whole' = the release.
  c.filter.sigmas = (16.0, 9.0, 4.0, 1.0, 0.0)  # The paper's σ per iteration, in px of source_size photos.
  c.filter.source_size = 1024  # Side of your original photos: σ scale to encoder_size from it.
  c.filter.padding = 'reflect'  # Mirror padding.

  c.loss.l2 = 1.0  # λ_l2 on the interest region.
  c.loss.lpips = 0.8  # λ_lpips on the interest region (needs loss.lpips_path; 0 to train without).
  c.loss.id = 0.0  # The ArcFace ID loss knows faces only: off for other domains.
  c.loss.w_norm = 0.0  # λ ‖w − w_avg‖.
  c.loss.ind = 0.05  # λ_InD (must be 0 with data.masks=False).
  c.loss.iterations = 'last'  # IntereStyle: only the last iteration; 'all' = ReStyle.
  c.loss.lpips_path = 'ckpt/lpips'  # `convert lpips alex.pth ckpt/lpips --alexnet alexnet.pth`.

  c.optim.lr = 1e-4  # Ranger learning rate (paper).

  c.data.source = 'folder'  # ROOT/images (+ ROOT/masks).
  c.data.train_dir = 'data/mine/train'  # Your training images (and masks).
  c.data.test_dir = ''  # A held-out root; '' holds out test_fraction of train_dir.
  c.data.test_fraction = 0.05  # Share of train_dir held out when test_dir is ''.
  c.data.masks = True  # False: images/ only, every pixel interest (ReStyle baseline; set loss.ind=0).
  c.data.image_size = 256  # Must equal model.encoder_size.
  c.data.shuffle_buffer = 4096  # Encoded examples in the shuffle buffer.
  return c
