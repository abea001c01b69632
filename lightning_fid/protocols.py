"""Named evaluation protocols: the settings that make a number comparable with a family of papers.

A protocol fixes the metrics and their options, the extractors' preprocessing, the reference format
it expects and the label policy its papers use. ``GenerativeMetrics(protocol="adm")`` (and the CLI's
``--protocol``) start from it; an explicit option overrides the protocol's choice, and the protocol
card (:mod:`lightning_fid.engine._card`) records every such deviation. No Lightning here.

=================  =========================================================================
``torch-fidelity`` the default: Inception-v3 with the TF graph's preprocessing, as torch-fidelity,
                   TTUR's TF FID, StyleGAN2/3 and EDM compute FID / KID / IS / precision-recall.
``adm``            guided-diffusion's ``evaluations/evaluator.py`` (DiT, SiT, REPA, VAR, MAR): FID,
                   sFID, IS over splits of 5000, precision and recall with k = 3, against a
                   reference batch ``.npz``.
``edm2``           EDM2's ``calculate_metrics.py``: FID and FD_DINOv2 (torch bicubic resize with
                   antialias to 224), against a ``.pkl`` reference; papers report the minimum over
                   3 seed ranges (``final_seeds=3``).
``pytorch-fid``    pytorch-fid's normalisation and resize (its numbers differ from the TF graph's).
=================  =========================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_fid.metrics.base import Metric
from lightning_fid.metrics.catalog import METRICS, resolve_metrics

DEFAULT_PROTOCOL = "torch-fidelity"


@dataclass(frozen=True)
class Protocol:
    """What one protocol fixes.

    Args:
        name: the protocol's name.
        metrics: the metric names it reports, in order.
        options: per metric name, the options that differ from the metric's defaults.
        inception: the Inception-v3 preprocessing (``"tf"`` or ``"pytorch-fid"``).
        dinov2_resize: FD_DINOv2's resize (``"torch"``: EDM2, ``"pil"``: dgm-eval), None if unused.
        labels: the label policy its papers use.
        reference: the reference it expects.
        comparable_with: which published numbers a value under it compares with.
        identical: what is verified identical to the original code (with tolerance).
        close: what is only close, and why.
        covers: the metric names it defines (default: ``metrics``); others are recorded as extras.
    """

    name: str
    metrics: tuple[str, ...]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    inception: str = "tf"
    dinov2_resize: str | None = None
    labels: str = "any (unconditional, explicit conditions, 'uniform' or 'balanced')"
    reference: str = "real images, or a statistics file computed with the same preprocessing"
    comparable_with: str = ""
    identical: str = ""
    close: str = ""
    covers: tuple[str, ...] = ()  # the metrics it defines (default: ``metrics``)

    def metric(self, name: str) -> Metric:
        """The metric ``name`` with this protocol's options."""
        return self.metric_class(name)(**self.options.get(name, {}))

    @staticmethod
    def metric_class(name: str) -> Any:
        """The class (or factory) the catalog makes ``name`` with."""
        return METRICS[name]

    def default_metrics(self) -> tuple[Metric, ...]:
        """Its metrics with its options (precision and recall as one object, as the catalog does)."""
        return self.resolve(self.metrics)

    def resolve(self, metrics: str | Metric | Iterable[str | Metric]) -> tuple[Metric, ...]:
        """Names become this protocol's instances (its options applied); objects pass unchanged."""
        items = [metrics] if isinstance(metrics, (str, Metric)) else list(metrics)
        given = {id(m) for m in items if isinstance(m, Metric)}
        out = []
        for metric in resolve_metrics(items):
            options = self._options_for(metric) if id(metric) not in given else {}
            if options:
                metric = type(metric)(**{**metric.options(), **options})
            out.append(metric)
        return tuple(out)

    def _options_for(self, metric: Metric) -> dict[str, Any]:
        for name, options in self.options.items():
            made = METRICS[name]()
            if type(made) is type(metric):
                return dict(options)
        return {}


PROTOCOLS: dict[str, Protocol] = {
    "torch-fidelity": Protocol(
        name="torch-fidelity",
        metrics=("fid",),
        covers=("fid", "kid", "is", "precision", "recall"),
        comparable_with=(
            "torch-fidelity, TTUR's TF FID, StyleGAN2/3 and EDM FID (the TF graph's preprocessing); "
            "torchmetrics < 1.8 and >= 1.8 with antialias=False at 299x299 input"
        ),
        identical="FID, KID, IS and precision/recall equal torch-fidelity's on identical images (|rel| <= 1e-5)",
        close="TF's own graph: float32 convolutions in another library, agreement to ~1e-4 relative",
    ),
    "adm": Protocol(
        name="adm",
        metrics=("fid", "sfid", "is", "precision", "recall"),
        options={"is": {"split_size": 5000}, "precision": {"k": 3}},
        labels="'uniform' (DiT, SiT, REPA: one random class per sample) or 'balanced' (VAR, MAR: 50 per class)",
        reference="an ADM reference batch .npz (arr_0 images, mu, sigma, mu_s, sigma_s)",
        comparable_with="guided-diffusion's evaluator.py tables: ADM, DiT, SiT, REPA, VAR, MAR",
        identical=(
            "FID and sFID formulas (float64), IS over consecutive splits of 5000, precision/recall "
            "decisions of ManifoldEstimator (k = 3, squared distances, <=) on identical features"
        ),
        close=(
            "features: the TF graph run by TensorFlow vs its PyTorch port (~1e-4 relative); ADM "
            "computes k-NN distances in float16 (a near-tie at a radius may decide differently)"
        ),
    ),
    "edm2": Protocol(
        name="edm2",
        metrics=("fid", "fd_dinov2"),
        dinov2_resize="torch",
        reference="an EDM2 reference .pkl ({'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu', 'sigma'}})",
        comparable_with="EDM2 (Karras et al. 2024) and papers using its calculate_metrics.py",
        identical="the Fréchet formula, DINOv2's torch bicubic antialiased resize to 224 and normalisation",
        close="EDM2 runs the published TorchScript Inception / torch.hub DINOv2; ours load the same weights",
    ),
    "pytorch-fid": Protocol(
        name="pytorch-fid",
        metrics=("fid",),
        inception="pytorch-fid",
        reference="a pytorch-fid .npz (mu, sigma) or images",
        comparable_with="numbers published with pytorch-fid (its normalisation and bilinear resize)",
        identical="pytorch-fid's preprocessing and FID formula on identical images (|rel| <= 1e-5)",
        close="pytorch-fid's scipy sqrtm on singular covariances (N < 2048) differs at ~1e-6",
    ),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"protocol={name!r}; choose from {tuple(PROTOCOLS)}")
    return PROTOCOLS[name]


def deviations(protocol: Protocol, metrics: Iterable[Metric], feature_extractor: nn.Module | None) -> list[str]:
    """How a configuration departs from ``protocol``, one line each (empty when it follows it exactly):
    a metric with other options or its own extractor, a metric the protocol does not define, one of
    its metrics left out (named protocols only: the default defines no required set), another
    Inception preprocessing."""
    expected = {type(m): m for m in protocol.resolve(protocol.covers or protocol.metrics)}
    given = list(metrics)
    found = []
    if protocol.name != DEFAULT_PROTOCOL:
        required = protocol.default_metrics()
        found += [f"missing metric {m!r}" for m in required if not any(type(g) is type(m) for g in given)]
    for metric in given:
        if type(metric) not in expected:
            found.append(f"extra metric {metric!r} (not part of protocol {protocol.name!r})")
        elif type(metric) in expected and _options(metric) != _options(expected[type(metric)]):
            found.append(f"{metric!r} instead of the protocol's {expected[type(metric)]!r}")
        elif metric.extractor is not None:
            found.append(f"{metric!r} reads its own extractor {type(metric.extractor).__name__}")
    preprocess = getattr(feature_extractor, "preprocess", None) if feature_extractor is not None else protocol.inception
    if feature_extractor is not None and preprocess != protocol.inception:
        found.append(
            f"feature_extractor={type(feature_extractor).__name__} (preprocess={preprocess!r}) instead of "
            f"Inception-v3 with preprocess={protocol.inception!r}"
        )
    return found


def _options(metric: Metric) -> dict[str, Any]:
    """The options that change a number (``report``, which values are logged, does not)."""
    return {k: v for k, v in metric.options().items() if k != "report"}
