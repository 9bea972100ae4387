"""Promptable-segmentation training (the paper's loop): ``trainer`` (the loop),
``checkpoint`` (its checkpoint file), ``forward`` (the embedding and decoding it shares with
``evaluate``), ``losses``, ``prompts``, ``data`` (with ``items``, ``samples``, ``synthetic``),
``features``, ``evaluate``."""
