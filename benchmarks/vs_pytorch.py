"""Our paper-scale train step and inversion against PyTorch, same weights and inputs.

    python benchmarks/vs_pytorch.py [--resolution 256] [--batch 2] [--iters 5]

Both sides hold the same networks: the PyTorch references of
``tests/torch_ref`` (rosinality-layout StyleGAN2 config-f, ReStyle IR-SE50
encoder) and their conversion. The PyTorch step is ReStyle's coach loop —
per iteration ``ŷ = pool(G(w + E([x, ŷ])))``, interest-region L2,
``loss.backward()`` (every iteration, or only the last with
``--loss_iterations last``), detach — then one optimizer step. Ours is the
jitted ``jax.shard_map`` train step with Ranger (ReStyle's default,
``optim_name='ranger'``); the PyTorch side runs Ranger too by default
(RAdam on centralised gradients + Lookahead, as ReStyle's
``training/ranger.py``), so both sides do the same math.
``--torch_optimizer adam`` gives the PyTorch side plain Adam instead, the
setting the speed issue first measured with: one parameter-sized buffer fewer
and a cheaper update than the Ranger our side still runs. Generator noise is
const on both sides and σ = 0 (the filter, cheap elementwise work, is left out
of both).

The steps are timed alternately in this process (``--steps`` each, median),
then each side runs alone in a subprocess for its peak RSS (alone, the JAX
side builds its networks in JAX and never imports torch). Inversion
(T iterations, no gradient, eval-mode BatchNorm) is timed the same way.
``torch.set_num_threads`` is the core count unless ``--threads`` says otherwise.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import peak_rss_mb  # pylint: disable=g-import-not-at-top
from paper_scale import ROOT, batch_arrays, jax_world, step_config, torch_world  # benchmarks/ on sys.path

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from interestyle_jax.ops import xla_options  # pylint: disable=g-import-not-at-top


def torch_step(enc, gen, latent_avg, avg_image, opt, x, m, n_iters, loss_iterations):
  """ReStyle's training iterations + one optimizer step (coach_restyle_psp)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  enc.train()
  opt.zero_grad()
  b = x.shape[0]
  w = latent_avg[None].repeat(b, 1, 1)
  y = avg_image.repeat(b, 1, 1, 1)
  loss = None
  for t in range(n_iters):
    grad = loss_iterations == 'all' or t == n_iters - 1
    with torch.set_grad_enabled(grad):
      w_t = w + enc(torch.cat([x, y], dim=1))
      y_hat = F.adaptive_avg_pool2d(gen(w_t), x.shape[-1])
      loss = F.mse_loss(m * y_hat, m * x)
      if grad:
        loss.backward()
    w, y = w_t.detach(), y_hat.detach()
  opt.step()
  return float(loss)


def torch_ranger(params, lr=1e-4, k=6, alpha=0.5):
  """Ranger as ReStyle's ``training/ranger.py`` composes it, for like-for-like memory.

  RAdam (β = (0.95, 0.999), ε = 1e-5) on centralised gradients, plus
  Lookahead's slow copy of every parameter (k = 6, α = 0.5): one more
  parameter-sized buffer than Adam, as in our step's state.
  """
  import torch  # pylint: disable=g-import-not-at-top
  params = list(params)

  class Ranger(torch.optim.RAdam):

    def __init__(self):
      super().__init__(params, lr=lr, betas=(0.95, 0.999), eps=1e-5)
      self.slow = [p.detach().clone() for p in params]
      self.n = 0

    @torch.no_grad()
    def step(self, closure=None):
      for p in params:
        if p.grad is not None and p.grad.dim() > 1:
          p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
      super().step(closure)
      self.n += 1
      if self.n % k == 0:
        for p, q in zip(params, self.slow):
          q.add_(p - q, alpha=alpha)
          p.copy_(q)

  return Ranger()


def torch_invert(enc, gen, latent_avg, avg_image, x, n_iters):
  """ReStyle's inference loop (no gradient, eval-mode BatchNorm); the last image."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  enc.eval()
  b = x.shape[0]
  with torch.no_grad():
    w = latent_avg[None].repeat(b, 1, 1)
    y = avg_image.repeat(b, 1, 1, 1)
    for _ in range(n_iters):
      w = w + enc(torch.cat([x, y], dim=1))
      img = gen(w)
      y = F.adaptive_avg_pool2d(img, x.shape[-1])
  return img


def build(args, side=None):
  """Modules, states and compiled functions of both sides, or of ``side`` only.

  Alone, the JAX side builds its networks in JAX (random weights, the same
  shapes and work) and never imports torch, so its peak RSS is its own.
  """
  from interestyle_jax.training import evaluation, loop, setup  # pylint: disable=g-import-not-at-top
  from interestyle_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from interestyle_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  images, masks = batch_arrays(args.batch)
  xi = jnp.asarray(batch_arrays(args.invert_batch, seed=1)[0])
  out = {'xi': xi}
  if side != 'jax':
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
    enc, gen, latent_avg, world = torch_world(args.resolution)
    for p in gen.parameters():
      p.requires_grad_(False)
    with torch.no_grad():
      avg_image = F.adaptive_avg_pool2d(gen(latent_avg[None]), 256)
    out.update(enc=enc, gen=gen, latent_avg=latent_avg, avg_image=avg_image,
               opt=(torch_ranger(enc.parameters()) if args.torch_optimizer == 'ranger'
                    else torch.optim.Adam(enc.parameters(), lr=1e-4)),
               tx=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
               tm=torch.from_numpy(masks).permute(0, 3, 1, 2).contiguous(),
               ti=torch.from_numpy(np.asarray(xi)).permute(0, 3, 1, 2).contiguous())
  else:
    world = jax_world(args.resolution)
  if side == 'torch':
    return out

  cfg = step_config(args.iters, args.loss_iterations)
  mesh = setup.make_mesh()
  tx = state_lib.ranger(1e-4)
  state = setup.replicate(state_lib.create_train_state(world.encoder_variables, tx), mesh)
  frozen = setup.replicate(world.frozen, mesh)
  coll = evaluation.make_collection(step_lib.train_metric_names(cfg))
  fn = loop.make_train_fn(world.models, cfg, tx, mesh, coll)
  ldc = jax.local_device_count()
  batch = setup.shard_batch({'image': images.reshape((ldc, -1) + images.shape[1:]),
                             'mask': masks.reshape((ldc, -1) + masks.shape[1:])}, mesh)
  key = jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  compiled = xla_options.compile_and_release(fn, state, frozen, batch, key)
  compile_s = time.perf_counter() - t0
  inv_cfg = step_config(args.iters, axis_name=None)
  inv = xla_options.jit(lambda ev, fr, x: evaluation.refine(ev, fr, x, models=world.models,
                                                            cfg=inv_cfg)[2][-1])
  out.update(compiled=compiled, state=state, frozen=frozen, batch=batch, key=key,
             compile_s=compile_s, inv=inv, world=world, tx_jax=tx)
  return out


def time_calls(fns, steps):
  """Runs each fn once (warm-up), then alternates them ``steps`` times."""
  for f in fns:
    f()
  times = [[] for _ in fns]
  for _ in range(steps):
    for i, f in enumerate(fns):
      t0 = time.perf_counter()
      f()
      times[i].append(time.perf_counter() - t0)
  return [statistics.median(t) for t in times]


def run_side(args, side):
  """One side alone (subprocess): its step time and the process peak RSS."""
  b = build(args, side)
  if side == 'jax':
    st = [b['state']]

    def f():
      st[0], m = b['compiled'](st[0], b['frozen'], b['batch'], b['key'])
      jax.block_until_ready(m)
  else:
    def f():
      torch_step(b['enc'], b['gen'], b['latent_avg'], b['avg_image'], b['opt'], b['tx'],
                 b['tm'], args.iters, args.loss_iterations)
  step_s = time_calls([f], 2)[0]
  return {'side': side, 'step_s': step_s,
          'peak_rss_mb': peak_rss_mb()}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--resolution', type=int, default=256, help='generator output side')
  p.add_argument('--batch', type=int, default=2, help='train batch')
  p.add_argument('--iters', type=int, default=5, help='refinement iterations T')
  p.add_argument('--loss_iterations', default='all', choices=('all', 'last'))
  p.add_argument('--torch_optimizer', default='ranger', choices=('ranger', 'adam'),
                 help="PyTorch side's optimizer: 'ranger' (ours and ReStyle's default: the "
                      "same math on both sides) or 'adam' (cheaper than the Ranger ours runs)")
  p.add_argument('--steps', type=int, default=3, help='timed steps per side (median)')
  p.add_argument('--invert_batch', type=int, default=2, help='inversion batch')
  p.add_argument('--threads', type=int, default=os.cpu_count(), help='torch threads')
  p.add_argument('--no_memory', action='store_true', help='skip the per-side RSS runs')
  p.add_argument('--json', action='store_true', help='end with one JSON line')
  p.add_argument('--side', choices=('jax', 'torch'), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.side != 'jax':
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
  if args.side:
    print('RESULT ' + json.dumps(run_side(args, args.side)), flush=True)
    return

  print(f'backend={jax.default_backend()} devices={jax.device_count()} torch_threads={args.threads} '
        f'resolution={args.resolution} batch={args.batch} T={args.iters} '
        f'loss_iterations={args.loss_iterations} torch_optimizer={args.torch_optimizer}',
        flush=True)
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  b = build(args)
  # Same weights and inputs: one inversion compared.
  want = torch_invert(b['enc'], b['gen'], b['latent_avg'], b['avg_image'], b['ti'], 1)
  from interestyle_jax.training import evaluation  # pylint: disable=g-import-not-at-top
  got = xla_options.jit(lambda ev, fr, x: evaluation.refine(
      ev, fr, x, models=b['world'].models, cfg=step_config(1, axis_name=None))[2][-1])(
          b['world'].encoder_variables, b['world'].frozen, b['xi'])
  parity = float(np.max(np.abs(np.asarray(got) - F.adaptive_avg_pool2d(
      want, 256).permute(0, 2, 3, 1).numpy())))
  print(f'parity: one-iteration inversion max |jax - torch| = {parity:.2e}', flush=True)

  st = [b['state']]

  def jax_step():
    st[0], m = b['compiled'](st[0], b['frozen'], b['batch'], b['key'])
    jax.block_until_ready(m)

  def t_step():
    torch_step(b['enc'], b['gen'], b['latent_avg'], b['avg_image'], b['opt'], b['tx'], b['tm'],
               args.iters, args.loss_iterations)

  jax_s, torch_s = time_calls([jax_step, t_step], args.steps)
  print(f'train step: jax {jax_s:.2f} s  torch {torch_s:.2f} s  ratio jax/torch {jax_s / torch_s:.3f}'
        f'  (jax compile {b["compile_s"]:.1f} s)', flush=True)
  # The optimizer update alone (after the steps above, the PyTorch gradients
  # are still in .grad): the part of the step that is not the networks.
  from interestyle_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), st[0].params.fast)
  upd = xla_options.jit(lambda s, g: state_lib.apply_gradients(s, g, s.batch_stats, b['tx_jax']),
                        donate_argnums=(0,)).lower(st[0], grads).compile()

  def jax_update():
    st[0] = upd(st[0], grads)
    jax.block_until_ready(st[0])

  jax_u, torch_u = time_calls([jax_update, b['opt'].step], args.steps)
  print(f'optimizer update alone: jax {jax_u:.2f} s  torch ({args.torch_optimizer}) {torch_u:.2f} s',
        flush=True)
  inv_c = b['inv'].lower(b['world'].encoder_variables, b['frozen'], b['xi']).compile()
  jax_inv, torch_inv = time_calls(
      [lambda: jax.block_until_ready(inv_c(b['world'].encoder_variables, b['frozen'], b['xi'])),
       lambda: torch_invert(b['enc'], b['gen'], b['latent_avg'], b['avg_image'], b['ti'],
                            args.iters)], args.steps)
  n = args.invert_batch
  print(f'inversion T={args.iters}: jax {n / jax_inv:.3f} img/s  torch {n / torch_inv:.3f} img/s'
        f'  speed-up {torch_inv / jax_inv:.2f}x', flush=True)
  result = {'jax_step_s': jax_s, 'torch_step_s': torch_s, 'ratio': jax_s / torch_s,
            'compile_s': b['compile_s'], 'jax_update_s': jax_u, 'torch_update_s': torch_u,
            'torch_optimizer': args.torch_optimizer, 'jax_invert_img_s': n / jax_inv,
            'torch_invert_img_s': n / torch_inv, 'parity_max_abs': parity}
  if not args.no_memory:
    del b, st
    for side in ('jax', 'torch'):
      cmd = [sys.executable, os.path.abspath(__file__)] + sys.argv[1:] + [f'--side={side}']
      out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
      lines = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
      if out.returncode or not lines:
        sys.exit(f'--side={side} failed:\n{out.stderr[-3000:]}')
      r = json.loads(lines[-1][7:])
      result[f'{side}_alone_step_s'] = r['step_s']
      result[f'{side}_peak_rss_mb'] = r['peak_rss_mb']
      print(f'{side} alone: step {r["step_s"]:.2f} s  peak RSS {r["peak_rss_mb"]:.0f} MB',
            flush=True)
  if args.json:
    print(json.dumps(result))


if __name__ == '__main__':
  main()
