"""Conditional DCGAN (label embedding in G, projection discriminator), DiffAugment, and conditional runs
on a tiny labelled dataset: labels from the manifest, grids per condition, exact resume, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import registry
from models.conditions import ConditionError, ConditionSpace, space_of, vocabulary
from models.datasets import ImageDataset, write_dataset
from models.dcgan import Discriminator, Generator
from models.dcgan.diffaugment import cutout, diff_augment, parse_policy, translation
from models.train import checkpoint as ckpt
from models.train.export import export_run
from models.train.runner import TrainError, resume, train
from tests.train.conftest import blobs, options

CONDS = {"body_part": ["HAND", "LEG"], "view": ["AP", "LATERAL"]}


def labelled_dataset(home, name="lab", n=24):
    rows = []
    for i in range(n):
        part = ["HAND", "LEG", "HAND", ""][i % 4]  # every 4th image has no body part (a mixed label)
        rows.append({"body_part": part, "view": ["AP", "LATERAL", "AP"][i % 3], "finding": ["FRACTURE", "NONE"][i % 2]})
    return write_dataset(home / "datasets", name, blobs(n, 64), rows)


# -- the condition space ---------------------------------------------------------------------------


def test_condition_space_encodes_one_hot_blocks_and_names_known_values():
    space = ConditionSpace.from_json(CONDS)
    assert space.c_dim == 4 and space.names == ("body_part", "view")
    assert space.encode({"body_part": "leg", "view": "AP"}).tolist() == [0, 1, 1, 0]
    assert space.decode([0, 1, 1, 0]) == {"body_part": "LEG", "view": "AP"}
    with pytest.raises(ConditionError, match="known: HAND, LEG"):
        space.encode({"body_part": "SKULL", "view": "AP"})
    with pytest.raises(ConditionError, match=r"needs a view \(one of AP, LATERAL\)"):
        space.encode({"body_part": "HAND"})
    with pytest.raises(ConditionError, match="no condition 'finding'"):
        space.encode({"body_part": "HAND", "view": "AP", "finding": "FRACTURE"})
    assert [space.decode(space.encode(c)) for c in space.combinations()] == list(space.combinations())
    with pytest.raises(ConditionError):
        ConditionSpace.from_json({"body_part": ["HAND", "hand"]})


def test_a_finding_left_out_means_none_where_the_model_knows_none():
    space = ConditionSpace.from_json({"body_part": ["HAND", "LEG"], "view": ["PA", "AP"], "finding": ["FRACTURE", "NONE"]})
    assert space.normalize({"body_part": "hand", "view": "pa"}) == {"body_part": "HAND", "view": "PA", "finding": "NONE"}
    assert space.normalize({"body_part": "HAND", "view": "PA", "finding": "fracture"})["finding"] == "FRACTURE"
    with pytest.raises(ConditionError, match=r"needs a view"):
        space.normalize({"body_part": "HAND", "finding": "NONE"})
    # A model whose finding field has no NONE value still needs the finding asked for.
    fractures = ConditionSpace.from_json({"body_part": ["HAND"], "finding": ["FRACTURE", "FISSURE"]})
    with pytest.raises(ConditionError, match=r"needs a finding"):
        fractures.normalize({"body_part": "HAND"})


def test_vocabulary_leaves_out_rows_without_a_value():
    rows = [{"body_part": "HAND", "view": "AP"}, {"body_part": "", "view": "AP"}, {"body_part": "LEG", "view": "LATERAL"}]
    space, counts, left_out = vocabulary(rows, ["body_part", "view"])
    assert space.as_dict() == CONDS and left_out == 1
    assert counts == {"body_part": {"HAND": 1, "LEG": 1}, "view": {"AP": 1, "LATERAL": 1}}
    with pytest.raises(ConditionError, match="no image of the dataset has a value for finding"):
        vocabulary(rows, ["body_part", "finding"])


# -- networks ----------------------------------------------------------------------------------------


def test_unconditional_networks_are_unchanged():
    torch.manual_seed(0)
    G = Generator(base_channels=8)
    assert G.init_kwargs == {"z_dim": 100, "resolution": 64, "channels": 1, "base_channels": 8, "max_channels": 512}
    assert not any(k.startswith("embed") for k in G.state_dict())
    D = Discriminator(base_channels=4, spectral_norm=True)
    assert "conditions" not in D.init_kwargs and not any(k.startswith("project") for k in D.state_dict())
    with pytest.raises(ValueError, match="unconditional"):
        G(torch.zeros(1, 100), c=torch.ones(1, 2))


def test_conditional_generator_depends_on_c_and_is_batch_invariant():
    torch.manual_seed(0)
    G = Generator(base_channels=8, conditions=CONDS, embed_dim=4).eval()
    space = ConditionSpace.from_json(CONDS)
    z = torch.randn(5, 100)
    conds = [{"body_part": "HAND", "view": "AP"}, {"body_part": "LEG", "view": "AP"}, {"body_part": "HAND", "view": "LATERAL"}] + [{"body_part": "LEG", "view": "LATERAL"}] * 2
    c = space.encode_batch(conds)
    with torch.no_grad():
        whole = G(z, c=c)
        one_by_one = torch.cat([G(z[i : i + 1], c=c[i : i + 1]) for i in range(5)])
        assert torch.equal(whole, one_by_one)
        assert not torch.equal(G(z[:1], c=c[:1]), G(z[:1], c=c[1:2]))
    with pytest.raises(ValueError, match="conditional"):
        G(z)
    with pytest.raises(ValueError, match=r"\(5, 4\)"):
        G(z, c=torch.zeros(5, 3))


def test_projection_discriminator_adds_one_inner_product_per_field():
    torch.manual_seed(0)
    D = Discriminator(base_channels=4, conditions=CONDS).eval()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    space = ConditionSpace.from_json(CONDS)
    c = space.encode_batch([{"body_part": "HAND", "view": "AP"}, {"body_part": "LEG", "view": "LATERAL"}])
    with torch.no_grad():
        features = D.main[:-1](x)
        phi = features.sum(dim=(2, 3))
        expected = D.main[-1](features).flatten()
        expected = expected + (phi * D.project["body_part"].weight[:, [0, 1]].T).sum(1) + (phi * D.project["view"].weight[:, [0, 1]].T).sum(1)
        assert torch.allclose(D(x, c=c), expected, atol=1e-5)


def test_the_bundled_unconditional_model_still_loads(tmp_path):
    reg = registry.Registry.with_bundled(tmp_path / "models")
    G, mv = reg.load("demo-dcgan:v1")
    assert space_of(G) is None and "conditions" not in mv.card["init_kwargs"]


# -- DiffAugment ---------------------------------------------------------------------------------------


def test_diffaugment_policies():
    assert parse_policy("color, translation") == ("color", "translation") and parse_policy(None) == ()
    with pytest.raises(ValueError, match="flip"):
        parse_policy("flip")
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    moved = translation(x)
    assert moved.shape == x.shape
    # Every output pixel is an input pixel of the same image or the black background.
    for i in range(4):
        assert set(moved[i].flatten().tolist()) <= set(x[i].flatten().tolist()) | {-1.0}
    cut = cutout(torch.ones(4, 1, 16, 16))
    zeros = (cut == 0).flatten(1).sum(1)
    assert ((zeros >= 16) & (zeros <= 64)).all()  # a square of 8x8, perhaps clipped by the border
    # Differentiable: gradients reach the input through every policy.
    x.requires_grad_(True)
    diff_augment(x, parse_policy("color,translation,cutout")).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# -- datasets and runs -------------------------------------------------------------------------------


def test_image_dataset_gives_labels_and_leaves_out_unlabelled_images(home):
    dv = labelled_dataset(home)
    space = ConditionSpace.from_json(CONDS)
    ds = ImageDataset(dv, conditions=space)
    assert len(ds) == 18 and ds.left_out == 6
    x, c = ds[1]
    assert x.shape == (1, 64, 64) and space.decode(c.numpy()) == {"body_part": "LEG", "view": "LATERAL"}
    assert torch.equal(x, ImageDataset(dv)[1])
    x4, c4 = ds[3]  # the 4th labelled item is image 4 (image 3 has no body part)
    assert torch.equal(x4, ImageDataset(dv)[4])


def test_a_conditional_run_trains_writes_grids_per_condition_resumes_exactly_and_exports(home):
    labelled_dataset(home)
    ds, runs = home / "datasets", home / "runs"
    opts = dict(dataset="lab", conditions=["body_part", "view"], hparams={"g_channels": 8, "d_channels": 4, "embed_dim": 4, "diffaugment": "color,translation,cutout"})
    full = train(options(run_id="c-full", epochs=4, **opts), ds, runs)
    info = json.loads((full.run_dir / "run.json").read_text())
    assert ConditionSpace.from_json(info["recipe"]["hparams"]["conditions"]).as_dict() == CONDS
    assert info["conditions"]["images_per_value"] == {"body_part": {"HAND": 12, "LEG": 6}, "view": {"AP": 12, "LATERAL": 6}}
    assert info["conditions"]["images_left_out"] == 6
    grids = sorted(p.name for p in (full.run_dir / "samples" / "epoch-00004").glob("*.png"))
    assert grids == ["HAND-AP.png", "HAND-LATERAL.png", "LEG-AP.png", "LEG-LATERAL.png"]
    train(options(run_id="c-part", epochs=2, **opts), ds, runs)
    resumed = resume("c-part", ds, runs, epochs=4)
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(full.run_dir / "checkpoints").path)
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(resumed.run_dir / "checkpoints").path)
    for net in a["nets"]:
        for k, v in a["nets"][net].items():
            assert torch.equal(v, b["nets"][net][k]), f"{net}.{k}"
    reg = registry.Registry([home / "models"])
    mv = export_run(full.run_dir, reg, "cond")
    assert ConditionSpace.from_json(mv.card["init_kwargs"]["conditions"]).as_dict() == CONDS
    assert mv.card["conditions"]["images_per_value"]["body_part"] == {"HAND": 12, "LEG": 6}
    G, _ = reg.load("cond")
    assert space_of(G).as_dict() == CONDS


def test_conditional_training_refuses_what_it_cannot_use(home):
    labelled_dataset(home)
    ds, runs = home / "datasets", home / "runs"
    with pytest.raises(TrainError, match="--condition FIELD"):
        train(options(dataset="lab", hparams={"conditions": CONDS}), ds, runs)
    write_dataset(ds, "nolabels", blobs(16, 64))
    with pytest.raises(TrainError, match="no image of the dataset has a value for body_part"):
        train(options(dataset="nolabels", conditions=["body_part"]), ds, runs)
    with pytest.raises(TrainError, match="DiffAugment"):
        train(options(dataset="lab", hparams={"diffaugment": "flip"}), ds, runs)


def test_discriminator_without_batch_norm_has_biases_and_no_batch_statistics():
    D = Discriminator(base_channels=4, spectral_norm=True, batch_norm=False, conditions=CONDS)
    assert D.init_kwargs["batch_norm"] is False
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    x = torch.rand(3, 1, 64, 64)
    c = ConditionSpace.from_json(CONDS).encode_batch([{"body_part": "HAND", "view": "AP"}] * 3)
    D.eval()
    with torch.no_grad():
        assert torch.allclose(D(x, c=c)[:1], D(x[:1], c=c[:1]), atol=1e-5)  # no image depends on its batch


def test_minibatch_std_lets_d_see_that_images_look_alike():
    torch.manual_seed(0)
    D = Discriminator(base_channels=4, spectral_norm=True, batch_norm=False, minibatch_std=True).eval()
    assert D.init_kwargs["minibatch_std"] is True and D.main[-1].in_channels == 33
    same = torch.rand(1, 1, 64, 64).expand(8, -1, -1, -1)
    varied = torch.rand(8, 1, 64, 64)
    with torch.no_grad():
        features = D.main[:-1](same)
        from models.dcgan.networks import _with_minibatch_std

        assert torch.allclose(_with_minibatch_std(features)[:, -1], torch.full((8, 4, 4), 1e-4), atol=1e-6)
        assert _with_minibatch_std(D.main[:-1](varied))[:, -1].min() > 1e-3
        assert D(same).shape == (8,) and D(varied[:3]).shape == (3,)  # a batch that is no multiple of the group


def test_field_order_survives_cards_and_run_files_written_with_sorted_keys(home):
    """The field order fixes c's layout and G's input: a model conditioned on view before body part must
    load from its card (JSON with sorted keys) and make the same images as the network that was trained."""
    labelled_dataset(home)
    ds, runs = home / "datasets", home / "runs"
    r = train(options(run_id="order", epochs=1, dataset="lab", conditions=["view", "finding", "body_part"],
                      hparams={"g_channels": 8, "d_channels": 4, "embed_dim": 4}), ds, runs)
    info = json.loads((r.run_dir / "run.json").read_text())
    assert [f for f, _ in info["options"]["hparams"]["conditions"]] == ["view", "finding", "body_part"]
    reg = registry.Registry([home / "models"])
    export_run(r.run_dir, reg, "order")
    G, _ = reg.load("order")
    from models.train.export import generator_from_checkpoint

    trained, _ = generator_from_checkpoint(ckpt.latest_checkpoint(r.run_dir / "checkpoints").path)
    space = space_of(G)
    assert space.names == ("view", "finding", "body_part")
    c = space.encode_batch([{"body_part": "LEG", "view": "LATERAL", "finding": "FRACTURE"}] * 2)
    z = torch.randn(2, 100)
    with torch.no_grad():
        assert torch.equal(G(z, c=c), trained(z, c=c))


def test_mode_seeking_penalty_is_the_reciprocal_of_image_over_latent_distance():
    """Mao et al. 2019 eq. 3: identical images for different latents cost 1/eps; distinct images cost less."""
    from models.dcgan.recipe import mode_seeking_penalty

    z1, z2 = torch.zeros(4, 8), torch.full((4, 8), 2.0)  # mean |z1 - z2| = 2
    x1, x2 = torch.zeros(4, 1, 4, 4), torch.full((4, 1, 4, 4), 0.5)  # mean |x1 - x2| = 0.5
    assert mode_seeking_penalty(x1, x2, z1, z2).item() == pytest.approx(1 / (0.25 + 1e-5))
    assert mode_seeking_penalty(x1, x1, z1, z2).item() == pytest.approx(1e5)


def test_a_conditional_run_with_mode_seeking_trains_and_records_it(home):
    labelled_dataset(home)
    ds, runs = home / "datasets", home / "runs"
    hp = {"g_channels": 8, "d_channels": 4, "embed_dim": 4, "mode_seeking": 1.0, "minibatch_std": True}
    run = train(options(run_id="ms", epochs=2, dataset="lab", conditions=["body_part"], hparams=hp), ds, runs)
    info = json.loads((run.run_dir / "run.json").read_text())
    assert info["recipe"]["hparams"]["mode_seeking"] == 1.0
    lines = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x["loss_G"]) for x in lines if x.get("event") == "train")
    with pytest.raises(TrainError, match="mode_seeking must be between 0"):
        train(options(run_id="ms-bad", dataset="lab", conditions=["body_part"], hparams={"mode_seeking": -1}), ds, runs)
