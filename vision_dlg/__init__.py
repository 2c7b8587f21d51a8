"""vision_dlg: the image plugin of the shared engine (the paper's image experiments).

Models (DLG's LeNet, ResNet-20/32/56 with sigmoid and no strides) in plain torch, image data (files,
real photos shipped by scikit-image, MNIST IDX / CIFAR binary files, ``datasets``), the victim's gradient
capture, the DLG/iDLG attack on :mod:`nlp_dlg.engine`, metrics (MSE, PSNR, SSIM) and PNG reports.
``import vision_dlg`` never imports transformers; names are imported on first use, so that
``vision_dlg.config`` (the options, plain Python) can be read without importing torch.

Example:
    >>> from vision_dlg import VisionModelSpec, build_model, model_metadata, capture_images, ImageAttack
"""

from __future__ import annotations

from nlp_dlg.lazy import lazy_exports

_EXPORTS = {
    "vision_dlg.attack": ("ImageAttack", "ImageReconstruction", "ImageStep"),
    "vision_dlg.capacity": ("Capacity", "gradient_capacity"),
    "vision_dlg.config": ("LABEL_METHODS", "MODELS", "ImageAttackConfig", "VisionModelSpec"),
    "vision_dlg.data": ("dataset_image", "load_image", "read_cifar_binary", "read_idx", "skimage_photo",
                        "to_model_input"),
    "vision_dlg.labels": ("infer_labels", "labels_are_exact"),
    "vision_dlg.metrics": ("mse", "pair_images", "psnr", "score_images", "ssim"),
    "vision_dlg.models": ("LeNet", "ResNet", "build_model", "model_from_metadata", "model_metadata"),
    "vision_dlg.plugin": ("ImagePlugin", "total_variation"),
    "vision_dlg.runner": ("ImageTask", "format_summary"),
    "vision_dlg.task": ("TASK", "contrast_sensitivity", "image_gradient"),
    "vision_dlg.victim": ("VisionBatch", "capture_images"),
}
__all__, __getattr__, __dir__ = lazy_exports("vision_dlg", _EXPORTS)
