"""CurricularFace IR-101: the identity network of the paper's ID-similarity metric.

ReStyle's ``scripts/calc_id_loss_parallel.py`` (whose numbers the IntereStyle
paper reports) embeds MTCNN-aligned 112x112 faces with ``IR_101(input_size=112)``
loaded from ``CurricularFace_Backbone.pth``: TreB1eN's ``Backbone(112,
num_layers=100, mode='ir', drop_ratio=0.4, affine=False)``. That is the
network of :class:`interestyle_jax.models.arcface.ArcFace` with

* ``bottleneck_IR`` units (no squeeze-and-excitation gate), 3/13/30/3 per
  stage;
* an output layer BN2d → dropout → flatten → Linear(512·7·7, 512) →
  BatchNorm1d(512, affine=False): the last BN only standardises with its
  running statistics, it has no scale or bias;
* an L2 normalisation.

It is a different network from the ArcFace IR-SE50 the encoder is trained
against (``--arcface``), which is why the paper protocol uses it: an encoder
scored by the network whose loss it minimised looks better than it is.

Weights: ``python -m interestyle_jax.convert curricularface
CurricularFace_Backbone.pth DST`` (:mod:`interestyle_jax.convert.curricularface`),
then :func:`load_curricularface`.
"""

from typing import Any, Tuple

from interestyle_jax.models.arcface import ArcFace

KIND = 'curricularface'
INPUT_SIZE = 112


class CurricularFace(ArcFace):
  """``IR_101(input_size=112)``: IR units without SE, non-affine output BN1d.

  Same attributes as :class:`ArcFace`, with CurricularFace's defaults
  (``num_layers=100``, ``mode='ir'``, ``affine_output=False``). Calling it on
  ``[B, 112, 112, 3]`` faces in [-1, 1] gives ``[B, 512]`` unit embeddings.
  """
  num_layers: int = 100
  mode: str = 'ir'
  affine_output: bool = False


def load_curricularface(path: str) -> Tuple[CurricularFace, Any]:
  """Loads a ``convert curricularface`` directory (torch not needed).

  Args:
    path: the model directory.

  Returns:
    ``(CurricularFace module, variables)``.
  """
  from interestyle_jax import artifacts  # pylint: disable=g-import-not-at-top
  meta, tree = artifacts.load_artifact(path, expected_kind=KIND)
  return CurricularFace(**meta['curricularface']), tree['curricularface']
