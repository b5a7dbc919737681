"""Face alignment for raw photos (library re-exports; see :mod:`interestyle_jax.face_align`)."""

from interestyle_jax.face_align import (ARCFACE_REFERENCE_POINTS, ARCFACE_SIZE,  # noqa: F401
                                        AlignmentError, arcface_crop, arcface_transform)
