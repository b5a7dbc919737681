"""Image grids of training: columns, labels, upscaling, PNG files (NumPy + PIL only)."""

import os

import numpy as np
from PIL import Image

from interestyle_jax import grids

X1, Y1 = f'x{grids.TILDE}1', f'y{grids.HAT}1'


def panels(rows=2, size=32, iters=3, target=True, seed=0):
  rng = np.random.default_rng(seed)
  p = {'input': rng.random((rows, size, size, 3)),
       'mask': (rng.random((rows, size, size, 1)) > 0.5).astype(np.float32),
       'x_tilde': rng.random((iters, rows, size, size, 3)),
       'y_hat': rng.random((iters, rows, size, size, 3))}
  if target:
    p['target'] = rng.random((rows, size, size, 3))
  return p


def test_train_and_eval_columns():
  p = panels()
  train = grids.columns(p, filtered=True)
  assert [label for label, _ in train] == [
      'input', 'mask', X1, Y1, f'x{grids.TILDE}2', f'y{grids.HAT}2', f'x{grids.TILDE}3',
      f'y{grids.HAT}3', 'target']
  # Validation feeds x̃ₜ = x: the input is shown once, then the outputs.
  evaluation = grids.columns(p, filtered=False)
  assert [label for label, _ in evaluation] == [
      'input', 'mask', Y1, f'y{grids.HAT}2', f'y{grids.HAT}3', 'target']
  # Each label sits on its own panel (iteration t is index t - 1).
  by_label = dict(train)
  np.testing.assert_array_equal(by_label[f'x{grids.TILDE}2'], p['x_tilde'][1])
  np.testing.assert_array_equal(by_label[f'y{grids.HAT}3'], p['y_hat'][2])
  np.testing.assert_array_equal(by_label['target'], p['target'])
  assert by_label['mask'].shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(by_label['mask'][..., 2], p['mask'][..., 0])
  # No clean image (real photos, training batches): no target column.
  assert 'target' not in dict(grids.columns(panels(target=False), filtered=True))


def test_render_upscales_tiles_under_a_labelled_header():
  p = panels(rows=2, size=32, iters=2)
  cols = grids.columns(p, filtered=True)  # 7 columns
  image = grids.render(cols)
  tile = 128  # 32 px tiles x 4
  assert grids.upscale_factor(32) == 4 and grids.upscale_factor(256) == 1
  header = image.shape[0] - (2 * (tile + grids.GAP) - grids.GAP)
  assert header > 12
  assert image.shape == (header + 2 * tile + grids.GAP, 7 * tile + 6 * grids.GAP, 3)
  assert image.dtype == np.uint8
  # Row 1 of the x̃₂ column (index 4) is that panel, nearest-neighbour upscaled.
  x0, y0 = 4 * (tile + grids.GAP), header + tile + grids.GAP
  expected = np.round(p['x_tilde'][1][1] * 255).astype(np.uint8).repeat(4, 0).repeat(4, 1)
  np.testing.assert_array_equal(image[y0:y0 + tile, x0:x0 + tile], expected)
  # Every header cell holds drawn text, and different labels draw differently.
  cells = [image[:header, c * (tile + grids.GAP):c * (tile + grids.GAP) + tile]
           for c in range(7)]
  assert all((cell < 128).any() for cell in cells)
  assert not np.array_equal(cells[2], cells[3])  # x̃₁ vs ŷ₁
  assert not np.array_equal(cells[2], cells[4])  # x̃₁ vs x̃₂
  # Large tiles are left at their size.
  big = grids.render(grids.columns(panels(rows=1, size=256, iters=1), filtered=False))
  assert big.shape[1] == 4 * 256 + 3 * grids.GAP


def test_write_png_is_readable(tmp_path):
  image = grids.render(grids.columns(panels(rows=1, size=16, iters=2), filtered=False))
  path = grids.write_png(str(tmp_path), 'eval', 7, image)
  assert path == os.path.join(str(tmp_path), 'images', 'eval_step_7.png')
  assert os.listdir(tmp_path / 'images') == ['eval_step_7.png']  # no temporary left
  with Image.open(path) as png:
    assert png.format == 'PNG'
    np.testing.assert_array_equal(np.asarray(png.convert('RGB')), image)
