"""Export of promptable segmenters to other runtimes (ONNX: :func:`export_onnx`)."""

from .onnx import OnnxExport, export_onnx

__all__ = ["OnnxExport", "export_onnx"]
