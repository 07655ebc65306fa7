"""Tiny random-weight metric models saved as a ComfyUI ``models/`` tree, for tests:
``models/dinov2/dinov2-base`` (a 2-layer Dinov2Model and its image processor, saved with
save_pretrained) and ``models/lpips/alexnet-owt-7be5be79.pth`` (a random torchvision AlexNet
state dict under torchvision's file name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from plic.eval import metrics


def build_metric_models(models_dir: Path) -> Path:
    import torch
    import torchvision
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, image_size=56, patch_size=14)
    folder = models_dir / metrics.DINO_FOLDER / metrics.DINO_DEFAULT
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    lpips_dir = models_dir / metrics.LPIPS_FOLDER
    lpips_dir.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), lpips_dir / metrics.LPIPS_DEFAULT)
    return models_dir


@pytest.fixture(scope="session")
def metric_models_dir(tmp_path_factory) -> Path:
    """A ComfyUI-style ``models`` folder holding the tiny metric models (built once)."""
    pytest.importorskip("lpips")
    return build_metric_models(tmp_path_factory.mktemp("metric-models") / "models")
