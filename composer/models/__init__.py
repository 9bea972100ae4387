"""Models composed with the segmenter: detectors (``detectors``, which also re-exports the protocol
of ``detector_base``, the stored-box backends of ``stored_detectors`` and the slicing of
``sliced``), CLIP (``clip``), sentence encoders (``text``)."""
