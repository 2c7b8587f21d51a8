"""vision_dlg: models, data parsers, labels, metrics, the attack on a small LeNet, the CLI and bad input."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import vision_dlg.attack as attack_module
from nlp_dlg.engine import MatchingConfig, load_observation, save_observation
from nlp_dlg.engine.errors import ConfigError, InputDataError, ModelMismatchError
from vision_dlg import (
    ImageAttack,
    ImageAttackConfig,
    LeNet,
    VisionModelSpec,
    build_model,
    capture_images,
    infer_labels,
    labels_are_exact,
    model_from_metadata,
    model_metadata,
    psnr,
    read_cifar_binary,
    read_idx,
    score_images,
    skimage_photo,
    ssim,
    to_model_input,
    total_variation,
)

SMALL = VisionModelSpec(num_classes=10, image_size=16, seed=1)


def test_lenet_is_dlgs_network():
    model = build_model(VisionModelSpec())
    convs = [m for m in model.body if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1)] and all(c.out_channels == 12 for c in convs)
    assert model.fc.in_features == 768 and model.fc.out_features == 100
    assert all(float(p.detach().abs().max()) <= 0.5 for p in model.parameters())
    assert build_model(VisionModelSpec()).state_dict()["fc.weight"].equal(model.state_dict()["fc.weight"])


def test_resnet_has_sigmoid_and_no_strides():
    model = build_model(VisionModelSpec("resnet20", num_classes=10, image_size=8))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.stride == (1, 1) for c in convs)
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()) == 19
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 10)


def test_images_are_resized_and_converted():
    gray = np.linspace(0, 1, 40 * 60).reshape(40, 60)
    x = to_model_input(gray, channels=3, size=16)
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1])
    photo = skimage_photo("astronaut")
    assert photo.shape == (3, 32, 32) and 0 <= float(photo.min()) and float(photo.max()) <= 1
    assert to_model_input((np.ones((8, 8, 3)) * 255).astype(np.uint8), channels=1, size=4).allclose(torch.ones(1, 4, 4))


def test_idx_parser_reads_what_it_wrote(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    labels = np.array([7, 2, 1], dtype=np.uint8)
    label_header = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(label_header + labels.tobytes())
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    from vision_dlg import dataset_image

    x, label = dataset_image(str(tmp_path / "t10k-images-idx3-ubyte.gz"), 2, channels=1, size=4)
    assert label == 1 and x.shape == (1, 4, 4)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(InputDataError, match="IDX"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(header + images.tobytes()[:-1])
    with pytest.raises(InputDataError, match="header says"):
        read_idx(tmp_path / "short")


def test_cifar_binary_parser_reads_cifar10_and_cifar100_records(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
    ten = np.concatenate([np.array([[3], [9]], dtype=np.uint8), pixels], 1)
    hundred = np.concatenate([np.array([[1, 42], [5, 77]], dtype=np.uint8), pixels], 1)
    (tmp_path / "data_batch_1.bin").write_bytes(ten.tobytes())
    (tmp_path / "test.bin").write_bytes(hundred.tobytes())
    images, labels = read_cifar_binary(tmp_path / "data_batch_1.bin")
    assert labels.tolist() == [3, 9] and images.shape == (2, 32, 32, 3)
    assert images[1, 0, 0].tolist() == pixels[1, [0, 1024, 2048]].tolist()     # channel-major to HWC
    assert read_cifar_binary(tmp_path / "test.bin")[1].tolist() == [42, 77]    # the fine label
    (tmp_path / "odd.bin").write_bytes(b"x" * 100)
    with pytest.raises(InputDataError, match="CIFAR"):
        read_cifar_binary(tmp_path / "odd.bin")


def _capture(images, labels, spec=SMALL, batch_size=None):
    model = build_model(spec)
    pairs = capture_images(model, images, labels, batch_size=batch_size or len(images),
                           model_info=model_metadata(model, spec))
    return model, pairs


def test_idlg_label_is_exact_for_one_image_and_counts_for_a_batch():
    torch.manual_seed(0)
    for label in (0, 4, 9):
        model, [(obs, _)] = _capture(torch.rand(1, 3, 16, 16), [label])
        assert infer_labels(obs.gradients, model, 1).tolist() == [label]
    # the batch counts assume a near-uniform softmax: a ResNet at init (batch norm), not DLG's LeNet
    resnet = VisionModelSpec("resnet20", num_classes=10, image_size=6)
    model, [(obs, _)] = _capture(torch.rand(4, 3, 6, 6), [7, 2, 7, 5], spec=resnet)
    assert infer_labels(obs.gradients, model, 4).tolist() == [2, 5, 7, 7]
    assert not labels_are_exact(obs.gradients, model, 4)           # a repeated class: counts, not certainty
    model, [(obs, _)] = _capture(torch.rand(3, 3, 16, 16), [8, 1, 4])  # distinct classes, DLG's LeNet
    assert labels_are_exact(obs.gradients, model, 3) and infer_labels(obs.gradients, model, 3).tolist() == [1, 4, 8]


def test_gradient_file_holds_no_image_or_label(tmp_path):
    _, [(obs, _)] = _capture(torch.rand(1, 3, 16, 16), [3])
    path = save_observation(obs, tmp_path / "g.safetensors")
    loaded = load_observation(path)
    assert set(loaded.gradients) == {n for n, _ in build_model(SMALL).named_parameters()}
    assert "label" not in json.dumps(dict(loaded.metadata)) and loaded.metadata["task"] == "image-classification"


def test_metrics_against_hand_computed_values():
    x = torch.full((3, 16, 16), 0.5)
    assert psnr(x, x + 0.1) == pytest.approx(20.0)
    assert ssim(x + torch.rand(3, 16, 16) * 0.1, x + torch.rand(3, 16, 16) * 0.1) < 0.99
    y = torch.rand(3, 16, 16)
    assert ssim(y, y) == pytest.approx(1.0)
    scores = score_images(torch.stack([y, x]), torch.tensor([1, 0]), torch.stack([x, y]), torch.tensor([0, 1]))
    assert [s["reference_index"] for s in scores] == [1, 0] and all(s["label_correct"] for s in scores)
    assert float(total_variation(x[None])) == 0.0


def test_brightness_contrast_fit_undoes_an_affine_map_shared_by_the_batch():
    refs = torch.stack([skimage_photo("coffee", size=8), skimage_photo("astronaut", size=8)])
    seen = (refs[[1, 0]] - 0.1) * 0.5                      # the batch, dimmed and reordered
    assert max(s["psnr"] for s in score_images(seen, torch.tensor([1, 0]), refs, torch.tensor([0, 1]))) < 25
    scores = score_images(seen, torch.tensor([1, 0]), refs, torch.tensor([0, 1]), fit=True)
    assert [s["reference_index"] for s in scores] == [1, 0]
    assert min(s["psnr"] for s in scores) > 60 and all(s["label_correct"] for s in scores)


def test_train_mode_gradient_is_attacked_in_train_mode_and_leaves_the_model_as_it_was():
    spec = VisionModelSpec("resnet20", num_classes=10, image_size=8, seed=0)
    model = build_model(spec)
    before = {n: b.clone() for n, b in model.named_buffers()}
    info = model_metadata(model, spec)
    [(obs, _)] = capture_images(model, skimage_photo("coffee", size=8)[None], [3], model_info=info, train_mode=True)
    assert obs.metadata["mode"] == "train" and not model.training
    assert model_metadata(model, spec)["checksum"] == info["checksum"]    # running statistics untouched
    modes = []
    ImageAttack(model, ImageAttackConfig(matching=MatchingConfig(steps=1)),
                callbacks=[lambda step: modes.append(model.training)]).attack(
        obs, generator=torch.Generator().manual_seed(0))
    assert modes and all(modes) and not model.training
    for n, b in model.named_buffers():
        torch.testing.assert_close(b, before[n])


def test_init_std_spreads_the_first_dummy_and_defaults_by_box():
    from vision_dlg.attack import BOXED_INIT_STD
    from vision_dlg.plugin import ImagePlugin

    plugin = ImagePlugin(build_model(SMALL), 4, (3, 16, 16), 10, box=True, init_std=0.01)
    assert abs(float(plugin.init_leaves(torch.Generator().manual_seed(0))["images"].std()) - 0.01) < 1e-3
    config = ImageAttackConfig()
    assert config.initial_std(config.uses_box(1, train=False)) == 1.0          # raw pixels: DLG's standard normal
    assert config.initial_std(config.uses_box(4, train=False)) == BOXED_INIT_STD != 1.0
    assert config.initial_std(config.uses_box(1, train=True)) == BOXED_INIT_STD
    assert ImageAttackConfig(init_std=0.5, box=False).initial_std(False) == 0.5
    with pytest.raises(ConfigError, match="init_std"):
        ImageAttackConfig(init_std=0.0)


def test_the_default_prior_scales_the_distance_where_the_gradient_is_blind_to_the_batch_contrast():
    from vision_dlg.attack import BATCH_TV, CONTRAST_BLIND, SCALED_TV
    from vision_dlg.task import contrast_sensitivity

    spec = VisionModelSpec("resnet20", num_classes=10, image_size=6)
    resnet, lenet = build_model(spec), build_model(SMALL)
    # batch norm on the batch's statistics after a bias-free convolution: halving the contrast moves nothing
    assert contrast_sensitivity(resnet, (3, 6, 6), 2, 10, train_mode=True) < CONTRAST_BLIND / 5
    assert contrast_sensitivity(resnet, (3, 6, 6), 2, 10, train_mode=False) > 10 * CONTRAST_BLIND
    assert contrast_sensitivity(lenet, (3, 16, 16), 2, 10, train_mode=True) > 10 * CONTRAST_BLIND

    def prior(model, info, images, train_mode, **options):
        [(obs, _)] = capture_images(model, images, [1, 4], batch_size=2, model_info=info, train_mode=train_mode)
        recs = ImageAttack(model, ImageAttackConfig(matching=MatchingConfig(steps=1), **options)).attack(
            obs, generator=torch.Generator().manual_seed(0))
        assert recs[0].to_json()["tv"] == recs[0].tv and recs[0].to_json()["prior"] == recs[0].prior
        return recs[0].tv, recs[0].prior

    batch = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    info = model_metadata(resnet, spec)
    assert prior(resnet, info, batch, True) == (SCALED_TV, "scale")
    assert prior(resnet, info, batch, False) == (BATCH_TV, "add")
    assert prior(resnet, info, batch, True, tv=0.01) == (0.01, "scale")     # a given weight, the form still probed
    assert prior(resnet, info, batch, True, tv=0.01, prior="add") == (0.01, "add")
    assert prior(resnet, info, batch, True, prior="add") == (BATCH_TV, "add")
    assert prior(lenet, model_metadata(lenet, SMALL), torch.rand(2, 3, 16, 16), True) == (BATCH_TV, "add")
    with pytest.raises(ConfigError, match="prior"):
        ImageAttackConfig(prior="multiply")


def test_a_real_photo_comes_back_from_a_small_lenet():
    image = skimage_photo("coffee", size=16)[None]
    model, [(obs, truth)] = _capture(image, [6])
    config = ImageAttackConfig(matching=MatchingConfig(steps=40, tolerance=1e-12))
    frames = []
    rec = ImageAttack(model, config, callbacks=[frames.append]).attack(obs, generator=torch.Generator().manual_seed(0))
    assert rec[0].label == 6
    assert psnr(rec[0].image, truth.images[0]) > 30
    assert frames[0].record.step == 0 and frames[-1].record.step == rec[0].steps


def test_dlg_soft_labels_recover_the_label_too():
    image = skimage_photo("chelsea", size=16)[None]
    model, [(obs, truth)] = _capture(image, [3])
    config = ImageAttackConfig(label_method="dlg", matching=MatchingConfig(steps=60, tolerance=1e-12))
    rec = ImageAttack(model, config).attack(obs, generator=torch.Generator().manual_seed(1))[0]
    assert rec.label == 3 and psnr(rec.image, truth.images[0]) > 20


def test_model_from_metadata_refuses_other_weights():
    model = build_model(SMALL)
    meta = model_metadata(model, SMALL)
    assert isinstance(model_from_metadata(meta)[0], LeNet)
    with pytest.raises(ModelMismatchError, match="checksum"):
        model_from_metadata({**meta, "seed": 2})


@pytest.mark.parametrize("name", ["lenet", "resnet20"])
def test_a_batch_claim_larger_than_the_gradient_shows_is_warned(name, caplog):
    from vision_dlg import VisionModelSpec, build_model, capture_images, model_metadata, skimage_photo
    from vision_dlg.labels import check_batch_claim

    spec = VisionModelSpec(name=name, num_classes=10)
    model = build_model(spec).eval()
    images = torch.stack([skimage_photo(n) for n in ["coffee", "astronaut", "chelsea", "rocket"]])
    [(one, _)] = capture_images(model, images[:1], [3], model_info=model_metadata(model, spec))
    [(four, _)] = capture_images(model, images, [1, 2, 3, 4], model_info=model_metadata(model, spec), batch_size=4)
    assert check_batch_claim(one.gradients, model, 4) and "not the 4 its metadata claims" in caplog.text
    assert not check_batch_claim(one.gradients, model, 1) and not check_batch_claim(four.gradients, model, 4)


def test_the_gradient_capacity_bounds_the_images_a_lenet_gradient_can_determine(caplog):
    from vision_dlg.capacity import gradient_capacity, warn_if_undetermined

    model = build_model(VisionModelSpec("lenet", image_size=32))
    rest = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("fc."))
    assert rest == 8136 and model.fc.in_features == 768
    assert [gradient_capacity(model, (3, 32, 32), b).bound for b in (1, 3, 4)] == [768 + rest, 3 * 768 + rest,
                                                                                  4 * 768 + rest]
    assert gradient_capacity(model, (3, 32, 32), 3).determined
    with caplog.at_level("WARNING", logger="vision_dlg.capacity"):
        assert not warn_if_undetermined(model, (3, 32, 32), 4).determined
    assert "at most 11208 directions for the batch's 12288 pixels" in caplog.text
    big = build_model(VisionModelSpec("lenet", image_size=64))
    assert not gradient_capacity(big, (3, 64, 64), 1).determined


def test_subsampled_colour_leaves_few_enough_unknowns_for_the_gradient_to_determine_the_batch(caplog):
    from vision_dlg.capacity import chroma_for, gradient_capacity, image_unknowns, warn_if_undetermined

    model = build_model(VisionModelSpec("lenet", image_size=32))
    assert image_unknowns((3, 32, 32)) == 3072 and image_unknowns((3, 32, 32), 2) == 1024 + 2 * 16 * 16
    assert image_unknowns((3, 32, 32), 3) == 1024 + 2 * 11 * 11 and image_unknowns((1, 32, 32), 4) == 1024
    # bounds 8,904 to 14,280; batch 3 (9,216 pixels, bound 9,672) and 2-fold at 8 (12,288) are determined, but
    # without the headroom
    assert [chroma_for(model, (3, 32, 32), b) for b in (1, 2, 3, 4, 8)] == [1, 1, 2, 2, 4]
    assert gradient_capacity(model, (3, 32, 32), 3).determined
    assert gradient_capacity(model, (3, 32, 32), 8, chroma=2).determined
    cap = gradient_capacity(model, (3, 32, 32), 4, chroma=2)
    assert (cap.pixels, cap.unknowns, cap.determined) == (12288, 6144, True)
    assert chroma_for(model, (3, 32, 32), 64) == 32 and chroma_for(model, (1, 32, 32), 8) == 1  # none suffices
    with caplog.at_level("WARNING", logger="vision_dlg.capacity"):
        assert not warn_if_undetermined(model, (3, 32, 32), 64, chroma=32).determined
    assert "colour subsampled 32-fold" in caplog.text and "still too many" in caplog.text
    assert chroma_for(build_model(VisionModelSpec("lenet", image_size=64)), (3, 64, 64), 1) == 2


def test_the_colour_prior_weighs_grey_and_colour_together_and_holds_every_pixels_colour_in_the_full_dct_basis():
    from vision_dlg.capacity import image_unknowns
    from vision_dlg.plugin import ImagePlugin, joint_total_variation

    assert image_unknowns((3, 32, 32), 2, terms=538) == 1024 + 2 * 538 and image_unknowns((1, 32, 32), terms=5) == 1024
    model = build_model(SMALL)
    grid = ImagePlugin(model, 2, (3, 16, 16), 10, labels=torch.tensor([1, 2]), box=True, chroma=4, tv=1e-3)
    leaves = grid.init_leaves(torch.Generator().manual_seed(0))
    every = grid.with_colour_terms(leaves, 256, colour_tv=3e-3)
    assert (every.tv, every.colour_tv) == (1e-3, 3e-3) and every.variant(start=None).colour_tv == 3e-3
    colour = (every.start["colour"] @ every._basis.T).view(2, 2, 16, 16)
    expected = joint_total_variation(every.start["images"], colour, 1e-3, 3e-3)
    assert torch.allclose(every.regularizer(every.start), expected) and float(expected) > 0
    assert grid.variant(colour_tv=3e-3).colour_tv == 0.0                # no colour planes (the grid): one prior
    assert float(every.variant(tv=0.0, colour_tv=0.0).regularizer(every.start)) == 0.0
    # a colour edge costs less where the grey level has an edge too; apart, the two cost their sum
    grey, hue = torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 8)
    grey[..., 4:], hue[:, 0, :, 4:] = 1.0, 2 ** 0.5                       # both edges between columns 3 and 4
    apart = hue.roll(2, dims=-1)                                           # the colour's edges elsewhere
    together = float(joint_total_variation(grey, hue, 1.0, 1.0))
    assert together == pytest.approx(8 * 2 ** 0.5 / 56, abs=1e-3)         # √(1² + 1²) on 8 of 56 pairs (+ ε)
    assert together < float(joint_total_variation(grey, apart, 1.0, 1.0)) == pytest.approx(3 * 8 / 56, abs=1e-3)


def test_the_dct_colour_plugin_is_orthonormal_represents_grey_exactly_and_projects_a_grids_colour():
    from vision_dlg.plugin import CHROMA_BASIS, ImagePlugin, dct_basis

    basis = dct_basis(8, 10)
    assert basis.shape == (64, 10) and torch.allclose(basis.T @ basis, torch.eye(10), atol=1e-6)
    assert torch.allclose(basis[:, 0], torch.full((64,), 1 / 8))                     # the constant term first
    model = build_model(SMALL)
    grid = ImagePlugin(model, 2, (3, 16, 16), 10, labels=torch.tensor([1, 2]), box=True, chroma=4)
    leaves = grid.init_leaves(torch.Generator().manual_seed(0))
    fine = grid.with_colour_terms(leaves, 40)
    assert fine.colour_terms == 40 and {n: tuple(t.shape) for n, t in fine.start.items()} == {
        "images": (2, 1, 16, 16), "colour": (2, 2, 40)}
    # a 4x4 grid's bilinear colour is smooth: 40 terms hold most of it, all 256 every bit of it
    exact = grid.with_colour_terms(leaves, 256)
    assert torch.allclose(exact.planes(exact.start), grid.planes(leaves), atol=1e-5)
    near = (fine.planes(fine.start) - grid.planes(leaves)).norm() / (grid.planes(leaves) - leaves["images"]).norm()
    assert near < 0.1
    start = fine.init_leaves(torch.Generator().manual_seed(1))
    assert start["colour"].shape == (2, 2, 40)
    drawn = fine.variant(start=None).init_leaves(torch.Generator().manual_seed(1))
    drawn["colour"].zero_()
    grey = fine.images(drawn)
    assert torch.allclose(grey[:, 0], grey[:, 2]) and torch.allclose(grey[:, 0], torch.sigmoid(drawn["images"][:, 0]))
    assert torch.allclose(CHROMA_BASIS @ torch.ones(3), torch.zeros(2), atol=1e-7)


def test_the_subsampled_colour_plugin_holds_a_grey_level_and_coarse_colour_and_represents_grey_exactly():
    from vision_dlg.plugin import ImagePlugin

    model = build_model(SMALL)
    plugin = ImagePlugin(model, 2, (3, 16, 16), 10, labels=torch.tensor([1, 2]), box=True, chroma=4)
    leaves = plugin.init_leaves(torch.Generator().manual_seed(0))
    assert {n: tuple(t.shape) for n, t in leaves.items()} == {"images": (2, 1, 16, 16), "chroma": (2, 2, 4, 4)}
    images = plugin.images(leaves)
    assert images.shape == (2, 3, 16, 16) and 0 < images.min() and images.max() < 1
    assert not torch.allclose(images[:, 0], images[:, 1])                    # the colour planes add colour
    leaves["chroma"].zero_()
    grey = plugin.images(leaves)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    assert torch.allclose(grey[:, 0], torch.sigmoid(leaves["images"][:, 0]))
    assert ImagePlugin(model, 2, (1, 16, 16), 10, chroma=4).chroma == 1       # one channel: nothing to subsample
    with pytest.raises(ConfigError, match="chroma"):
        ImageAttackConfig(chroma=0)
    with pytest.raises(ConfigError, match="clamp"):
        ImageAttackConfig(clamp=True, chroma=2)


def test_one_image_the_gradient_cannot_determine_gets_boxed_pixels_and_the_prior():
    from vision_dlg.config import SCALED_TV, SINGLE_TV

    config = ImageAttackConfig()
    assert config.prior_for(1) == (0.0, "add") and not config.uses_box(1, train=False)
    assert config.prior_for(1, undetermined=True) == (SINGLE_TV, "add") > (0.0, "add")
    assert config.prior_for(1, contrast_blind=True, undetermined=True) == (SCALED_TV, "scale")
    assert config.uses_box(1, train=False, undetermined=True) and config.probes_contrast(1, undetermined=True)
    paper = ImageAttackConfig(tv=0.0, box=False)                   # the paper as written stays reachable
    assert paper.prior_for(1, undetermined=True) == (0.0, "add") and not paper.uses_box(1, train=False,
                                                                                        undetermined=True)
    spec = VisionModelSpec("lenet", num_classes=10, image_size=64, seed=1)
    model, [(obs, _)] = _capture(skimage_photo("coffee", size=64)[None], [2], spec=spec)
    [rec] = ImageAttack(model, ImageAttackConfig(matching=MatchingConfig(steps=1))).attack(
        obs, generator=torch.Generator().manual_seed(0))
    assert (rec.tv, rec.prior) == (SINGLE_TV, "add")


def test_a_determined_batch_is_polished_without_its_prior_and_an_undetermined_one_keeps_the_priors_choice(caplog,
                                                                                                    monkeypatch):
    images = torch.stack([skimage_photo("coffee", size=16), skimage_photo("astronaut", size=16)])
    model, [(obs, _)] = _capture(images, [2, 5])
    config = ImageAttackConfig(matching=MatchingConfig(steps=30, tolerance=1e-12), polish_steps=20)
    frames = []
    with caplog.at_level("INFO", logger="vision_dlg.attack"):
        polished = ImageAttack(model, config, callbacks=[frames.append]).attack(
            obs, generator=torch.Generator().manual_seed(0))
    assert "polishing without the prior: 20 more steps" in caplog.text
    steps = [f.record.step for f in frames]
    assert steps == [0, 10, 20, 30, 0, 10, 20] and polished[0].steps == 30 + 20
    assert polished[0].tv > 0                               # the prior was used, then dropped
    # the polish lowers the bare gradient distance from where the prior left it (frames[4]: the polish's first
    # evaluation). Not PSNR: 30 steps on two 16x16 images end at 5-10 dB either way, and which of the two is
    # higher changed with the thread count (1 thread: 9.69 -> 9.59 dB; 2 threads: 5.12 -> 5.18 dB)
    assert polished[0].distance < frames[4].record.distance
    caplog.clear()
    big = VisionModelSpec(num_classes=10, image_size=48, seed=1)              # 2 x 6,912 pixels > 11,592
    model, [(obs, _)] = _capture(torch.stack([skimage_photo("coffee", size=48)] * 2), [2, 5], spec=big)
    with caplog.at_level("INFO", logger="vision_dlg"):
        [rec, _] = ImageAttack(model, replace(config, matching=MatchingConfig(steps=1), chroma=1)).attack(
            obs, generator=torch.Generator().manual_seed(0))
    assert "cannot determine the images" in caplog.text and "no polish without the prior" in caplog.text
    assert rec.chroma == 1
    caplog.clear()
    with caplog.at_level("INFO", logger="vision_dlg"):                      # by default the colour is subsampled
        [rec, _] = ImageAttack(model, replace(config, matching=MatchingConfig(steps=1), polish_steps=1)).attack(
            obs, generator=torch.Generator().manual_seed(0))
    assert "colour subsampled 2-fold, 6912 unknowns (determined)" in caplog.text      # 2 x (48² + 2 x 24²)
    assert "polishing without the prior: 1 more steps" in caplog.text and rec.chroma == 2
    assert "the polish with colour subsampled 2-fold fell only" in caplog.text        # one step falls little
    # then every pixel's colour free (2 x 3 x 48² unknowns) under the joint prior, and that is kept
    assert "every pixel's colour free (13824 unknowns), the prior 0.001 on the grey level and 0.003" in caplog.text
    assert rec.colour_terms == 48 * 48 and rec.colour_tv == pytest.approx(attack_module.POLISH_PRIOR * 3e-3)
    assert rec.to_json()["colour_tv"] == rec.colour_tv and rec.tv == 1e-3
    caplog.clear()
    monkeypatch.setattr(attack_module, "COLOUR_FIT_DROP", 1e-9)                     # any fall holds the colour
    with caplog.at_level("INFO", logger="vision_dlg"):
        ImageAttack(model, replace(config, matching=MatchingConfig(steps=1), polish_steps=1)).attack(
            obs, generator=torch.Generator().manual_seed(0))
    assert "polishing without the prior" in caplog.text and "every pixel's colour free" not in caplog.text
    [rec, _] = ImageAttack(model, ImageAttackConfig(matching=MatchingConfig(steps=1), clamp=True)).attack(
        obs, generator=torch.Generator().manual_seed(0))
    assert rec.chroma == 1                                                 # clamping projects pixels: every one free

