"""``train --init-from``: a new run starts from another run's weights, and may add condition fields."""

from __future__ import annotations

import json

import pytest
import torch

from models.conditions import ConditionSpace
from models.datasets import write_dataset
from models.dcgan import Discriminator, Generator
from models.train import checkpoint as ckpt
from models.train.runner import TrainError, train
from models.train.recipe import make_recipe
from models.train.warm_start import WarmStartError, transfer, warm_start
from tests.train.conftest import blobs, options
from tests.train.test_conditional import labelled_dataset

SMALL = {"g_channels": 8, "d_channels": 4, "embed_dim": 4}
UNCOND = {"g_channels": 8, "d_channels": 4}


def _newest(run_dir):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir / "checkpoints").path)


def test_a_run_conditioned_on_body_part_starts_one_on_body_part_view_and_finding(home):
    labelled_dataset(home)
    ds, runs = home / "datasets", home / "runs"
    first = train(options(run_id="bp", dataset="lab", epochs=2, conditions=["body_part"], hparams={**SMALL, "ema_beta": 0.9}), ds, runs)
    source = ckpt.latest_checkpoint(first.run_dir / "checkpoints").path
    old = ckpt.load_checkpoint(source)
    # The networks of a run on body part, view and finding, as the warm start leaves them.
    new_conditions = [["body_part", ["HAND", "LEG"]], ["view", ["AP", "LATERAL"]], ["finding", ["FRACTURE", "NONE"]]]
    recipe = make_recipe("dcgan", 64, 1, **SMALL, ema_beta=0.9, conditions=new_conditions)
    nets = recipe.build()
    summary = warm_start(nets, old, recipe.hparams, source)
    assert summary["G"]["grown"] == 1 and summary["conditions_after"] == new_conditions
    new = {"hparams": recipe.hparams, "nets": {name: m.state_dict() for name, m in nets.items()}}
    G_old, G_new = old["nets"]["G_ema"], new["nets"]["G_ema"]
    torch.testing.assert_close(G_new["embed.body_part"], G_old["embed.body_part"])
    first_old, first_new = G_old["main.0.weight"], G_new["main.0.weight"]
    z_dim, e = 100, 4
    assert first_new.shape[0] == z_dim + 3 * e and first_old.shape[0] == z_dim + e
    torch.testing.assert_close(first_new[: z_dim + e], first_old)
    assert not first_new[z_dim + e :].any()  # view and finding start with no say in the image
    for key in G_old:
        if key not in ("main.0.weight",):
            torch.testing.assert_close(G_new[key], G_old[key], msg=key)
    # So the new generator draws what the old one drew, whatever view and finding it is asked for.
    space_old = ConditionSpace.from_json(old["hparams"]["conditions"])
    space_new = ConditionSpace.from_json(new["hparams"]["conditions"])
    Go = Generator(z_dim=z_dim, resolution=64, base_channels=8, conditions=space_old.to_json(), embed_dim=e).eval()
    Gn = Generator(z_dim=z_dim, resolution=64, base_channels=8, conditions=space_new.to_json(), embed_dim=e).eval()
    Go.load_state_dict(G_old)
    Gn.load_state_dict(G_new)
    z = torch.randn(2, z_dim, generator=torch.Generator().manual_seed(0))
    c_old = torch.from_numpy(space_old.encode({"body_part": "LEG"})).expand(2, -1)
    for view in ("AP", "LATERAL"):
        c_new = torch.from_numpy(space_new.encode({"body_part": "LEG", "view": view, "finding": "FRACTURE"})).expand(2, -1)
        torch.testing.assert_close(Gn(z, c=c_new), Go(z, c=c_old))
    # D keeps its body-part projection; the new fields' projections start fresh.
    D_old, D_new = old["nets"]["D"], new["nets"]["D"]
    key = next(k for k in D_old if k.startswith("project.body_part") and k.endswith("weight"))
    torch.testing.assert_close(D_new[key], D_old[key])
    assert any(k.startswith("project.view") for k in D_new)
    # A run started from the checkpoint trains on from there and records where it started.
    events = []
    grown = train(options(run_id="bpvf", dataset="lab", epochs=1, conditions=["body_part", "view", "finding"], hparams={**SMALL, "ema_beta": 0.9},
                          init_from=str(source)), ds, runs, on_event=lambda event, **f: events.append((event, f)))
    info = json.loads((grown.run_dir / "run.json").read_text())
    assert info["options"]["init_from"] == str(source)
    started = [f for e, f in events if e == "warm_started"]
    assert len(started) == 1 and started[0]["checkpoint"] == str(source)


def test_values_are_matched_by_name_when_a_field_gains_values():
    old = ConditionSpace.from_json({"body_part": ["HAND", "LEG"]})
    new = ConditionSpace.from_json({"body_part": ["HIP", "LEG", "HAND"]})
    G_old = Generator(resolution=64, base_channels=8, conditions=old.to_json(), embed_dim=4)
    G_new = Generator(resolution=64, base_channels=8, conditions=new.to_json(), embed_dim=4)
    fresh_hip = G_new.embed["body_part"][0].detach().clone()
    report = transfer(G_new, G_old.state_dict(), old, new, 100, 4, "G")
    assert report["grown"] == ["embed.body_part"]
    torch.testing.assert_close(G_new.embed["body_part"][1], G_old.embed["body_part"][1])  # LEG
    torch.testing.assert_close(G_new.embed["body_part"][2], G_old.embed["body_part"][0])  # HAND
    torch.testing.assert_close(G_new.embed["body_part"][0], fresh_hip)
    D_old = Discriminator(resolution=64, base_channels=4, spectral_norm=True, conditions=old.to_json())
    D_new = Discriminator(resolution=64, base_channels=4, spectral_norm=True, conditions=new.to_json())
    transfer(D_new, D_old.state_dict(), old, new, 100, 4, "D")
    w_old = D_old.state_dict()["project.body_part.parametrizations.weight.original"]
    w_new = D_new.state_dict()["project.body_part.parametrizations.weight.original"]
    torch.testing.assert_close(w_new[:, 2], w_old[:, 0])


def test_a_checkpoint_of_another_network_is_refused_by_name(home):
    labelled_dataset(home)
    ds, runs = home / "datasets", home / "runs"
    first = train(options(run_id="src", dataset="lab", epochs=1, conditions=["body_part"], hparams=SMALL), ds, runs)
    source = str(ckpt.latest_checkpoint(first.run_dir / "checkpoints").path)
    with pytest.raises(TrainError, match="g_channels=8.*g_channels=16"):
        train(options(run_id="wider", dataset="lab", epochs=1, conditions=["body_part"], hparams={**SMALL, "g_channels": 16}, init_from=source), ds, runs)
    with pytest.raises(TrainError, match="conditional model"):
        train(options(run_id="uncond", dataset="lab", epochs=1, hparams=UNCOND, init_from=source), ds, runs)
    write_dataset(ds, "big", blobs(8, 128))
    with pytest.raises(TrainError, match="same image size"):
        train(options(run_id="big", dataset="big", epochs=1, hparams=UNCOND, init_from=source), ds, runs)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        train(options(run_id="nofile", dataset="lab", epochs=1, conditions=["body_part"], hparams=SMALL, init_from=str(home / "nope.pt")), ds, runs)
    with pytest.raises(WarmStartError, match="do not fit"):
        transfer(Generator(resolution=64, base_channels=8), {"main.0.weight": torch.zeros(3)}, None, None, 100, 4, "G")
