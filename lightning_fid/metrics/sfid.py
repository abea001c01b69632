"""sFID (Nash et al. 2021, "Generating images with sparse representations"), as ADM computes it.

guided-diffusion's ``evaluations/evaluator.py`` (the evaluator of ADM, DiT, SiT, REPA, VAR, MAR) fetches
the TF Inception graph's ``mixed_6/conv:0`` next to ``pool_3:0`` in the same ``sess.run``, keeps
``spatial[..., :7]`` of the NHWC tensor and flattens it: 7 x 17 x 17 = 2023 values per image, then
the Fréchet distance of their Gaussians (``mu_s`` / ``sigma_s`` in its reference batches).

Which block that is, established from the graph rather than taken from a port (ports disagree): the
2015 graph's Inception blocks are mixed, mixed_1, ..., mixed_10 in node order, and mixed_3 is the
35 -> 17 reduction, so the four 17 x 17 blocks mixed_4..mixed_7 are torchvision's Mixed_6b..Mixed_6e
and ``mixed_6`` is **Mixed_6d**; torch-fidelity's weight converter, whose file layout our Inception
loads, maps ``mixed_6/conv/*`` to ``Mixed_6d.branch1x1`` (and mixed_7's 192-channel towers fit only
Mixed_6e). In the graph, ``mixed_6/conv/Conv2D`` is the raw convolution and ``mixed_6/conv/batchnorm``
the BatchNorm; the op named ``mixed_6/conv`` itself comes last, after them: the ReLU, i.e. the output
of ``Mixed_6d.branch1x1`` (conv, BN, ReLU). The evidence, with sources, is in
:data:`lightning_fid.extractors.inception.SPATIAL_BLOCK`. The features come from the same Inception
forward pass as FID's pool features and the Inception Score's logits (a third named output,
``"spatial"``), in ADM's (H, W, C) order, so ADM's ``mu_s`` / ``sigma_s`` can be scored against directly.
"""

from __future__ import annotations

from lightning_fid.metrics.base import Needs
from lightning_fid.metrics.fid import FID


class SFID(FID):
    """Spatial FID: the Fréchet distance (:func:`~lightning_fid.metrics.frechet_distance`, float64) on
    2023-d spatial Inception features, the first 7 channels of the TF graph's ``mixed_6/conv`` (Mixed_6d's
    1x1 branch) on its 17 x 17 grid, flattened as ADM does. Logs ``sfid``; lower is better.

    The standard Inception-v3 computes them in the forward pass that also gives FID's features and the
    Inception Score's logits. A ``feature_extractor=`` of the callback serves sFID only if it declares
    a ``"spatial"`` output (``InceptionV3(spatial=True)``). Use at least 2023 generated samples (ADM
    uses 50 000): below that the covariance is singular and the value strongly biased.

    Args:
        key: the logged key (default ``"sfid"``).
        extractor: a network to use instead of Inception-v3's spatial features (its ``"spatial"``
            output if it declares named ``outputs``, else its only output).
    """

    name = "sfid"
    needs = Needs(output="spatial", moments=True)
