"""Named weights: where a checkpoint comes from, how to verify it, and what it is for.

Architectures and weights are named separately (as in timm): ``WeightsSpec.arch`` is a
``composer.sam.build_sam`` architecture name, ``WeightsSpec.name`` names one trained file of it.

Checksums. The official SAM file names end in six hex digits ("sam_vit_b_01ec64.pth"); they are
the first six digits of the file's MD5 (not its SHA-256). The full MD5 and SHA-256 digests
recorded below were taken from several independent public download scripts and checksum lists
that agree with each other and with that name prefix (checked with the project's code-search
tool; the files themselves were not downloaded here). Where both digests are recorded, both are
checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WEIGHTS", "WeightsSpec", "find_spec", "get_spec", "register"]

_HEX = re.compile(r"[0-9a-f]+")
_MIN_PREFIX = 6
_DIGEST_LENGTHS = {"md5": 32, "sha256": 64}


@dataclass(frozen=True)
class WeightsSpec:
    """One named checkpoint file.

    Attributes:
        name: registry key, e.g. "sam_vit_b".
        arch: architecture it loads into, a ``composer.sam.build_sam`` name, e.g. "vit_b".
        url: where to download it (``None`` for weights that ship inside the package only).
        filename: file name in the cache directory (the official name where there is one).
        sha256: lowercase hex SHA-256 of the file, full (64 digits) or a prefix (>= 6 digits).
        md5: lowercase hex MD5 of the file, full (32 digits) or a prefix (>= 6 digits); the
            official SAM file names carry its first 6 digits.
        license: SPDX identifier of the weights' license.
        source: where the weights and their checksums come from (paper / repository).
        metrics: reference numbers for these weights (e.g. parameter counts, paper results),
            keyed by a descriptive name.
        packaged: path of the file relative to the ``composer`` package, for weights that ship
            inside the wheel; such a file is used in place of the cache.
    """

    name: str
    arch: str
    url: str | None
    filename: str
    sha256: str | None = None
    md5: str | None = None
    license: str = ""
    source: str = ""
    metrics: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    packaged: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name):
            raise ValueError(f"weights name must be a non-empty identifier, got {self.name!r}")
        if not self.filename or "/" in self.filename or "\\" in self.filename:
            raise ValueError(f"filename must be a bare file name, got {self.filename!r}")
        if self.url is None and self.packaged is None:
            raise ValueError(f"weights {self.name!r} need a url or a packaged path")
        for algo in ("sha256", "md5"):
            digest = getattr(self, algo)
            if digest is None:
                continue
            if (
                not _HEX.fullmatch(digest)
                or len(digest) < _MIN_PREFIX
                or len(digest) > _DIGEST_LENGTHS[algo]
            ):
                raise ValueError(
                    f"{algo} of {self.name!r} must be lowercase hex, {_MIN_PREFIX} to "
                    f"{_DIGEST_LENGTHS[algo]} digits; got {digest!r}"
                )
        if self.url is not None and self.sha256 is None and self.md5 is None:
            # A downloaded file is untrusted input: never accept one we cannot verify.
            raise ValueError(f"weights {self.name!r} have a url but neither sha256 nor md5")

    @property
    def checksums(self) -> dict[str, str]:
        """The recorded digests, ``{"sha256": ..., "md5": ...}`` (absent ones left out)."""
        return {a: d for a in ("sha256", "md5") if (d := getattr(self, a)) is not None}


_SAM_SOURCE = (
    "Kirillov et al., Segment Anything, ICCV 2023; "
    "https://github.com/facebookresearch/segment-anything"
)
_SAM_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

#: All registered weights by name. Add entries with :func:`register`.
WEIGHTS: dict[str, WeightsSpec] = {}


def register(spec: WeightsSpec, *, replace: bool = False) -> WeightsSpec:
    """Add ``spec`` to :data:`WEIGHTS`.

    Registering an identical spec again is a no-op.

    Args:
        spec: the weights to add.
        replace: allow replacing a different spec of the same name.

    Returns:
        ``spec``.

    Raises:
        TypeError: ``spec`` is not a WeightsSpec.
        ValueError: another spec already has this name and ``replace`` is False; or a spec of
            another name already has this ``filename`` (both would share one cache file, so
            one name would silently load the other's weights).
    """
    if not isinstance(spec, WeightsSpec):
        raise TypeError(f"spec must be a WeightsSpec, got {type(spec).__name__}")
    old = WEIGHTS.get(spec.name)
    if old is not None and old != spec and not replace:
        raise ValueError(
            f"weights {spec.name!r} are already registered ({old.filename}); "
            "pass replace=True to replace them"
        )
    clash = next(
        (s for s in WEIGHTS.values() if s.filename == spec.filename and s.name != spec.name), None
    )
    if clash is not None:
        raise ValueError(
            f"weights {spec.name!r} cannot use the file name {spec.filename!r}: weights "
            f"{clash.name!r} are cached under it; give each weights their own file name"
        )
    WEIGHTS[spec.name] = spec
    return spec


def find_spec(name: str) -> WeightsSpec | None:
    """The registered spec called ``name``, or None.

    An exact name wins; otherwise the name is compared ignoring case, surrounding white space
    and ``-`` versus ``_`` (so "SAM-ViT-B" finds "sam_vit_b"), provided that matches only one
    registered name.
    """
    spec = WEIGHTS.get(name)
    if spec is not None or not isinstance(name, str):
        return spec
    key = _normalise(name)
    found = [s for n, s in WEIGHTS.items() if _normalise(n) == key]
    return found[0] if len(found) == 1 else None


def _normalise(name: str) -> str:
    return name.strip().casefold().replace("-", "_")


def get_spec(name: str) -> WeightsSpec:
    """The registered spec called ``name`` (compared as in :func:`find_spec`).

    Raises:
        ValueError: no weights of that name; the message lists the registered names.
    """
    spec = find_spec(name)
    if spec is None:
        raise ValueError(
            f"unknown weights {name!r}; registered weights: {', '.join(sorted(WEIGHTS))}"
        )
    return spec


for _spec in (
    WeightsSpec(
        name="sam_vit_b",
        arch="vit_b",
        url=_SAM_BASE_URL + "sam_vit_b_01ec64.pth",
        filename="sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        md5="01ec64d29a2fca3f0661936605ae66f8",
        license="Apache-2.0",
        source=_SAM_SOURCE,
        # Parameter counts measured on the official segment_anything builders.
        metrics={"params": 93_735_472, "image_encoder_params": 89_670_912},
    ),
    WeightsSpec(
        name="sam_vit_l",
        arch="vit_l",
        url=_SAM_BASE_URL + "sam_vit_l_0b3195.pth",
        filename="sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        md5="0b3195507c641ddb6910d2bb5adee89c",
        license="Apache-2.0",
        source=_SAM_SOURCE,
        metrics={"params": 312_342_832, "image_encoder_params": 308_278_272},
    ),
    WeightsSpec(
        name="sam_vit_h",
        arch="vit_h",
        url=_SAM_BASE_URL + "sam_vit_h_4b8939.pth",
        filename="sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        md5="4b8939a88964f0f4ff5f5b2642c598a6",
        license="Apache-2.0",
        source=_SAM_SOURCE,
        metrics={"params": 641_090_608, "image_encoder_params": 637_026_048},
    ),
    WeightsSpec(
        name="mobile_sam_vit_t",
        arch="vit_t",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        filename="mobile_sam.pt",
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        md5="f3c0d8cda613564d499310dab6c812cd",
        license="Apache-2.0",
        source=(
            "Zhang et al., Faster Segment Anything: Towards Lightweight SAM for Mobile "
            "Applications, 2023; https://github.com/ChaoningZhang/MobileSAM"
        ),
        # Measured on mobile_sam's builder; the encoder count includes the unused classifier.
        metrics={"params": 10_130_092, "image_encoder_params": 6_065_532},
    ),
):
    register(_spec)
del _spec
