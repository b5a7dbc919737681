"""The embedded default: the synthetic world, no download (the main job; README gives its time).

A random-weight 32 px StyleGAN2 (fixed seed) is the frozen generator; its
samples, with OOD backgrounds and occluders pasted into the uninterest region,
are the training and held-out data (see interestyle_jax/synthetic.py). The
clutter comes from three families in training and three others kept out of it
and evaluated at the end (interestyle_jax/synthetic_families.py). LPIPS and ID
are off (no pretrained networks offline); L2 + InD carry the loss.

The encoder width and learning rate are chosen so that the 1,200 steps train
the refinement, not only the first guess: every iteration improves on the one
before on the held-out set and on each held-out family (README, "Training").
"""

from interestyle_jax.training.config import default_config


def get_config():
  """The synthetic configuration."""
  c = default_config()
  c.num_train_steps = 1200  # Optimizer steps: the main job's whole budget.
  c.batch_size = 8  # Global batch.
  c.eval_batch_size = 32  # Held-out batch (64 images = 2 batches).
  c.log_every_steps = 50  # Train scalars / progress every N steps.
  c.eval_every_steps = 400  # Validation + best checkpoint every N steps.
  c.checkpoint_every_steps = 400  # Checkpoint + inference export every N steps.
  c.image_every_steps = 400  # Image grids every N steps.

  c.model.encoder_size = 32  # Encoder input = the generator's 32 px output.
  c.model.n_iters = 3  # Refinement iterations T.
  c.model.encoder.backbone = 'ir_se'  # IR-SE units, as for faces.
  c.model.encoder.stage_units = (1, 1, 1, 1)  # One unit per stage (tiny).
  c.model.encoder.width = 16  # Stage widths 16/32/64/128 (at 8 iteration 3 was worse than 2: README).

  c.filter.sigmas = (16.0, 4.0, 0.0)  # The paper's first, middle and last σ (16, 9, 4, 1, 0) for T = 3.
  c.filter.source_size = 1024  # σ in px of 1024 px photos, as the paper's: (0.5, 0.125, 0) px at 32 px.

  c.loss.lpips = 0.0  # No pretrained LPIPS offline.
  c.loss.id = 0.0  # No pretrained ArcFace offline.
  c.loss.ind = 0.05  # InD pass as in the paper.

  c.optim.lr = 2e-3  # Tiny encoder, few steps: 20x the paper's rate (1e-3 left the refinement under-trained).

  c.synthetic.families = ('classic', 'fractal', 'marks')  # Uninterest content seen in training.
  c.synthetic.test_families = ('skin', 'checker', 'props')  # Never seen in training; evaluated at the end.

  c.data.source = 'synthetic'  # Built-in world (data.* folder fields unused).
  c.data.image_size = 32  # Matches the encoder size if data.source='folder'.
  return c
