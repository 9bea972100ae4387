"""An open_clip model that scores image crops against text prompts.

Architecture and weights are named apart (as in open_clip): ``ClipModel.load("ViT-B-16",
weights="path/to/open_clip_model.safetensors")`` builds the architecture without weights and
loads a local state-dict file (``.safetensors``, or a torch file read with
``weights_only=True``) strictly. An open_clip pretrained tag ("laion2b_s34b_b79k") is fetched
by open_clip only with ``download=True``; ``weights=None`` gives a randomly initialised model
(for tests). Text prompts are ensembled over templates ("a photo of a {}.") and crops are
encoded in batches. Needs ``pip install 'sam-composer[text]'``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: Prompt-ensembling templates (a subset of CLIP's ImageNet templates that suits object crops).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a bright photo of a {}.",
    "a good photo of a {}.",
)


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise ValueError(
            "CLIP scoring needs open_clip_torch: pip install 'sam-composer[text]'"
        ) from exc
    return open_clip


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise ValueError(f"could not read {path}: {exc}") from exc
    from ..hub import load_state_dict_file

    return load_state_dict_file(path)


class ClipModel:
    """A CLIP image/text model with its preprocessing and tokenizer.

    Use :meth:`load` to build one. Embeddings are float32 and L2-normalised.

    Attributes:
        model: the open_clip module (eval mode).
        model_id: "<arch>:<weights>": a pretrained tag, "random", or a weights file's name
            and the first 12 hex digits of its SHA-256 ("ViT-B-16:open_clip_model.safetensors#
            0123456789ab").
        weights_sha256: the full hex SHA-256 of the weights file (None for a pretrained tag
            or random weights); a caller that loads the same file again (a folder run's
            workers) passes it back as ``load(..., sha256=...)`` instead of reading the file
            twice.
        image_size: (h, w) of the model input.
        mean, std: per-channel normalisation of RGB in [0, 1].
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        model_id: str,
        image_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._embed_dim: int | None = None
        self.weights_sha256: str | None = None

    @classmethod
    def load(
        cls,
        arch: str = "ViT-B-16",
        weights: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        download: bool = False,
        sha256: str | None = None,
    ) -> ClipModel:
        """Build ``arch`` and load ``weights``.

        Args:
            arch: an open_clip model name (``open_clip.list_models()``).
            weights: a local state-dict file (open_clip/HF ``open_clip_model.safetensors``,
                ``open_clip_pytorch_model.bin``, a ``torch.save``d state dict); an open_clip
                pretrained tag (only with ``download=True``); or None for random weights.
            device: torch device.
            download: allow open_clip to fetch a pretrained tag.
            sha256: the weights file's hex SHA-256 when the caller knows it already (its
                ``weights_sha256`` from an earlier load of the same, unchanged file): taken
                as given for the model id instead of reading the file again (seconds for a
                multi-GB ViT-H). Ignored for a pretrained tag or random weights.

        Raises:
            ValueError: unknown arch; a tokenizer that cannot be loaded (fetched from the Hub
                for some architectures); a missing file; a tag without ``download``; a state
                dict that does not fit (missing/unexpected/mis-shaped keys are named);
                ``sha256`` that is not 64 hex digits.
        """
        if sha256 is not None and (
            not isinstance(sha256, str)
            or len(sha256) != 64
            or any(c not in "0123456789abcdef" for c in sha256.lower())
        ):
            raise ValueError(f"sha256 must be 64 hex digits (a SHA-256), got {sha256!r}")
        oc = _open_clip()
        if oc.get_model_config(arch) is None:
            raise ValueError(
                f"unknown open_clip architecture {arch!r}; see open_clip.list_models()"
            )
        try:  # first: SigLIP-like models fetch theirs from the Hugging Face Hub
            tokenizer = oc.get_tokenizer(arch)
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            raise ValueError(
                f"the text tokenizer of {arch} could not be loaded ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); some architectures (SigLIP, "
                "...) fetch theirs from the Hugging Face Hub: with no network, put it in the "
                "Hub cache first, or use an architecture with CLIP's built-in tokenizer "
                "(e.g. ViT-B-32)"
            ) from None
        path = None if weights is None else Path(weights).expanduser()
        digest = None
        if path is not None and path.is_file():
            # open_clip warns "Model initialized randomly" for pretrained=None, which read as
            # if the weights file were ignored: they are loaded right below
            with _no_random_init_warning():
                model = oc.create_model(arch, pretrained=None)
            _load_strict(model, _read_state(path), path)
            # with the content's digest: Hugging Face names every open_clip file alike
            # (open_clip_model.safetensors), and another file of the same name is another
            # model (a text folder run resumed with the other weights' outputs)
            if sha256 is None:
                from ..hub.download import file_sha256

                sha256 = file_sha256(path)
            digest = sha256.lower()
            wid = f"{path.name}#{digest[:12]}"
        elif weights is None:
            logger.warning(
                "open_clip %s has random weights (weights=None); scores are meaningless", arch
            )
            model = oc.create_model(arch, pretrained=None)
            wid = "random"
        else:
            tags = [t for t in oc.list_pretrained_tags_by_model(arch)]
            if str(weights) not in tags:
                raise ValueError(
                    f"CLIP weights {weights!r} are neither a file nor a pretrained tag of "
                    f"{arch} ({', '.join(tags) or 'none'})"
                )
            if not download:
                raise ValueError(
                    f"CLIP weights {arch}/{weights} are not local; pass download=True "
                    "(open_clip fetches them) or a path to the weights file"
                )
            model = oc.create_model(arch, pretrained=str(weights))
            wid = str(weights)
        cfg: dict[str, Any] = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        if path is not None and path.is_file():
            # A bare file carries no preprocessing; open_clip's model config does not either
            # for every arch (SigLIP's mean/std 0.5 live in its pretrained tags' config), so
            # the one open_clip would use for these weights is taken from where it lives.
            cfg.update(_file_preprocess(oc, arch, path))
        size = getattr(model.visual, "image_size", cfg.get("size", 224))
        size = (size, size) if isinstance(size, int) else tuple(size)
        mean = cfg.get(
            "mean", getattr(oc, "OPENAI_DATASET_MEAN", (0.48145466, 0.4578275, 0.40821073))
        )
        std = cfg.get(
            "std", getattr(oc, "OPENAI_DATASET_STD", (0.26862954, 0.26130258, 0.27577711))
        )
        clip = cls(model, tokenizer, f"{arch}:{wid}", size, mean, std, device)  # type: ignore[arg-type]
        clip.weights_sha256 = digest
        return clip

    @torch.no_grad()
    def encode_text(
        self, prompts: Sequence[str], templates: Sequence[str] | None = DEFAULT_TEMPLATES
    ) -> np.ndarray:
        """(P, D) embeddings of ``prompts``, each the normalised mean over ``templates``.

        Args:
            prompts: P strings (e.g. "a red car").
            templates: format strings with one "{}"; None or empty uses the prompts verbatim.

        Raises:
            ValueError: no prompts, a prompt that is not a string or is blank (None or 5 were
                encoded as the words "None" and "5"), or a template that is not a format
                string with exactly one "{}" placeholder.
        """
        if isinstance(prompts, str) or not len(prompts):
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
        if bad:
            raise ValueError(f"prompts must be non-empty strings, got {bad[0]!r}")
        temps = list(templates) if templates else ["{}"]
        if any("{}" not in t for t in temps):
            raise ValueError(f"every template needs a '{{}}' placeholder, got {temps}")
        try:
            texts = [t.format(p) for p in prompts for t in temps]
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(
                f"every template must be a format string with one '{{}}' and no other fields "
                f"(write a literal brace as '{{{{' or '}}}}'), got {temps}: {exc!r}"
            ) from exc
        tokens = self.tokenizer(texts).to(self.device)
        feats = self.model.encode_text(tokens)  # type: ignore[operator]
        emb = F.normalize(feats.float(), dim=-1)
        emb = emb.view(len(prompts), len(temps), -1).mean(1)
        return F.normalize(emb, dim=-1).cpu().numpy()

    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(N, D) embeddings of N RGB uint8 images (any sizes; each is resized to the input size).

        Crops are expected square (the caller pads them); others are squashed.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = []
        for start in range(0, len(images), batch_size):
            batch = [self._to_tensor(im) for im in images[start : start + batch_size]]
            x = (torch.cat(batch) - self.mean) / self.std
            emb = self.model.encode_image(x.to(self.device)).float()  # type: ignore[operator]
            out.append(F.normalize(emb, dim=-1).cpu())
        if not out:
            return np.zeros((0, self.embed_dim), np.float32)
        return torch.cat(out).numpy()

    @property
    def embed_dim(self) -> int:
        """Width D of the joint embedding."""
        if self._embed_dim is None:
            self._embed_dim = int(self.encode_text(["object"], None).shape[1])
        return self._embed_dim

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.exp()) if isinstance(scale, torch.Tensor) else 100.0

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        arr = np.asarray(image)
        if (
            arr.ndim != 3
            or arr.shape[2] != 3
            or arr.dtype != np.uint8
            or arr.shape[0] == 0
            or arr.shape[1] == 0
        ):
            raise ValueError(
                f"crops must be non-empty (h, w, 3) uint8 arrays, got {arr.shape} {arr.dtype}"
            )
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255.0
        return F.interpolate(
            x, self.image_size, mode="bicubic", align_corners=False, antialias=True
        ).clamp(0, 1)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _no_random_init_warning() -> Iterator[None]:
    """Silence open_clip's "No pretrained weights loaded" warning (root logger) meanwhile."""
    root, flt = logging.getLogger(), _DropRandomInitWarning()
    handlers = list(root.handlers)
    root.addFilter(flt)
    for h in handlers:  # a record logged by logging.warning() is filtered by the root logger
        h.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)
        for h in handlers:
            h.removeFilter(flt)


def _file_preprocess(oc: Any, arch: str, path: Path) -> dict[str, Any]:
    """Image mean/std for weights loaded from a local file.

    In order: the ``preprocess_cfg`` of an ``open_clip_config.json`` next to the file (the
    layout of open_clip's Hugging Face repositories, which is what open_clip itself reads for
    ``hf-hub:``/``local-dir:`` models); else the mean/std that every open_clip pretrained tag
    of ``arch`` shares (SigLIP 0.5/0.5, CLIPA ImageNet's, MobileCLIP 0/1); else nothing (the
    model config's, OpenAI's by default). A missing entry is not an error.
    """
    sidecar = path.parent / "open_clip_config.json"
    if sidecar.is_file():
        try:
            pre = json.loads(sidecar.read_text()).get("preprocess_cfg", {}) or {}
            got = {k: tuple(float(v) for v in pre[k]) for k in ("mean", "std") if k in pre}
        except (ValueError, AttributeError, TypeError) as exc:
            raise ValueError(f"{sidecar} is not a valid open_clip config: {exc}") from exc
        if any(len(v) != 3 for v in got.values()):
            raise ValueError(f"{sidecar}: preprocess_cfg mean/std need 3 values, got {got}")
        if got:
            return got
    try:
        tags = list(oc.list_pretrained_tags_by_model(arch))
        cfgs = [oc.get_pretrained_cfg(arch, t) or {} for t in tags]
    except Exception:  # an open_clip without the pretrained registry: keep the model's
        return {}
    pairs = {(tuple(c["mean"]), tuple(c["std"])) for c in cfgs if c.get("mean") and c.get("std")}
    if len(pairs) == 1:
        mean, std = pairs.pop()
        return {"mean": mean, "std": std}
    if len(pairs) > 1:
        logger.warning(
            "the pretrained tags of %s normalise images differently; %s is normalised with the "
            "model config's mean/std (put its open_clip_config.json next to it to choose)",
            arch,
            path.name,
        )
    return {}


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    from ..hub.checkpoint import load_state_into

    want = set(model.state_dict())
    shared = len(want & set(state))
    if want and shared < len(want) // 2:  # another architecture: not a list of 1,500 keys
        raise ValueError(
            f"{path} does not look like a checkpoint of this architecture ({shared} of its "
            f"{len(want)} keys are in the file, which holds {len(state)}): is --clip-arch "
            "(ClipModel.load's arch) the one these weights were trained as?"
        )
    load_state_into(model, state, path, strict=True)
