"""vision_dlg: the image plugin of the shared engine (the paper's image experiments).

Models (DLG's LeNet, ResNet-20/32/56 with sigmoid and no strides) in plain torch, image data (files,
real photos shipped by scikit-image, MNIST IDX / CIFAR binary files, ``datasets``), the victim's gradient
capture, the DLG/iDLG attack on :mod:`nlp_dlg.engine`, metrics (MSE, PSNR, SSIM) and PNG reports.
``import vision_dlg`` never imports transformers.

Example:
    >>> from vision_dlg import VisionModelSpec, build_model, model_metadata, capture_images, ImageAttack
"""

from vision_dlg.attack import LABEL_METHODS, ImageAttack, ImageAttackConfig, ImageReconstruction, ImageStep
from vision_dlg.data import dataset_image, load_image, read_cifar_binary, read_idx, skimage_photo, to_model_input
from vision_dlg.labels import infer_labels, labels_are_exact
from vision_dlg.metrics import mse, pair_images, psnr, score_images, ssim
from vision_dlg.models import MODELS, LeNet, ResNet, VisionModelSpec, build_model, model_from_metadata, model_metadata
from vision_dlg.plugin import ImagePlugin, total_variation
from vision_dlg.victim import VisionBatch, capture_images, image_gradient

__all__ = [
    "LABEL_METHODS", "MODELS", "ImageAttack", "ImageAttackConfig", "ImagePlugin", "ImageReconstruction",
    "ImageStep", "LeNet", "ResNet", "VisionBatch", "VisionModelSpec", "build_model", "capture_images",
    "dataset_image", "image_gradient", "infer_labels", "labels_are_exact", "load_image", "model_from_metadata",
    "model_metadata",
    "mse", "pair_images", "psnr", "read_cifar_binary", "read_idx", "score_images", "skimage_photo", "ssim",
    "to_model_input", "total_variation",
]
