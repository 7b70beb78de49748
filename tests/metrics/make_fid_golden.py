"""Record pytorch-fid's own pool3 features as the golden fixture ``fid_golden.npz``.

This runs in a separate, throwaway environment that has pytorch-fid and torchvision (the project never
depends on either; torchvision does not even import beside the project's torch build)::

    python3 -m venv /tmp/fidenv
    /tmp/fidenv/bin/pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid==0.3.0 scipy
    /tmp/fidenv/bin/python tests/metrics/make_fid_golden.py tests/metrics/fid_golden.npz

What it does, so that anyone can check the proof:

1. builds pytorch-fid's FID InceptionV3 (``pytorch_fid.inception.InceptionV3([3])``, the network its FID
   uses) with deterministic non-pretrained weights from ``golden_weights.py`` in place of the download
   (its ``load_state_dict_from_url`` is replaced by a function returning those weights; nothing else of
   pytorch-fid is touched);
2. writes ``golden_weights.images()`` as 8-bit grayscale PNG files and runs pytorch-fid's own
   ``get_activations`` over them, so its file reading (``convert('RGB')``), ``ToTensor`` scaling, resizing
   to 299 and normalization are all part of the recorded features;
3. records ``calculate_frechet_distance`` on two small deterministic feature sets;
4. saves the images, the features, the state dict's names and shapes, the Frechet case and the versions.

The test (``test_inception_golden.py``) loads the same deterministic weights into
``models.metrics.inception.FIDInceptionV3`` and checks names, shapes and features.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent


def _golden_weights():
    spec = importlib.util.spec_from_file_location("golden_weights", HERE / "golden_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(out: Path) -> None:
    import pytorch_fid
    import pytorch_fid.inception as pfi
    import torchvision
    from pytorch_fid.fid_score import calculate_frechet_distance, get_activations

    gw = _golden_weights()

    # The same skeleton pytorch-fid's fid_inception_v3() builds, only to learn the names and shapes;
    # if it differed from theirs, their strict load_state_dict below would fail.
    skeleton = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    skeleton.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    skeleton.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    skeleton.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    skeleton.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    skeleton.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    skeleton.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    skeleton.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    skeleton.Mixed_7b = pfi.FIDInceptionE_1(1280)
    skeleton.Mixed_7c = pfi.FIDInceptionE_2(2048)
    shapes = [(k, tuple(v.shape)) for k, v in skeleton.state_dict().items()]
    weights = {k: torch.from_numpy(v) for k, v in gw.state(shapes).items()}

    pfi.load_state_dict_from_url = lambda *_args, **_kwargs: weights
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

    images = gw.images()
    features = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, img in enumerate(images):
            path = Path(tmp) / f"image{i}.png"
            Image.fromarray(img, mode="L").save(path)
            # batch_size 1: the images differ in size, and pytorch-fid stacks a batch before resizing.
            features.append(get_activations([str(path)], model, batch_size=1, dims=2048, device="cpu", num_workers=0))
    features = np.concatenate(features).astype(np.float32)

    rs = np.random.RandomState(7)
    a = rs.standard_normal((60, 12))
    b = rs.standard_normal((60, 12)) @ (np.eye(12) + 0.3 * rs.standard_normal((12, 12))) + 0.5
    mu_a, sigma_a = a.mean(0), np.cov(a, rowvar=False)
    mu_b, sigma_b = b.mean(0), np.cov(b, rowvar=False)
    fd = float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))

    arrays = {f"image{i}": img for i, img in enumerate(images)}
    np.savez_compressed(
        out,
        features=features,
        state_names=np.array([k for k, _ in shapes]),
        state_shapes=np.array(json.dumps([list(s) for _, s in shapes])),
        fd_a=a,
        fd_b=b,
        fd_value=np.float64(fd),
        versions=np.array(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__, "pytorch_fid": pytorch_fid.__version__, "numpy": np.__version__})),
        **arrays,
    )
    print(f"wrote {out}: {len(images)} images, features {features.shape}, |f| mean {np.abs(features).mean():.4g}, "
          f"{len(shapes)} tensors, FD case {fd:.6f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "fid_golden.npz")
