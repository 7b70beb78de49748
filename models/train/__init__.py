"""The training runner shared by every architecture, and the plug-in interface architectures implement.

How an architecture plugs in
============================

An architecture lives in its own folder (networks and recipe) and has one row in
:data:`models.architectures.ARCHITECTURES`: its name, its generator class (so the exported generator can be
rebuilt from its model card) and its :class:`~models.train.recipe.Recipe` subclass.
DCGAN's recipe is :class:`models.dcgan.recipe.DCGANRecipe`; StyleGAN3's are
``models.stylegan3.recipe:StyleGAN3TRecipe`` / ``StyleGAN3RRecipe``.

A recipe has four class attributes:

``arch``          the architecture name;
``unit``          ``"epoch"`` or ``"kimg"``: how training length and snapshots are counted by default
                  (DCGAN: epochs; StyleGAN3: thousands of real images shown). The user may still give
                  either ``--epochs`` or ``--kimg``; the runner counts both and reports the chosen one;
``uses_ema``      whether ``build`` returns a G_ema that is sampled, checkpointed and exported (may be
                  set per instance when it is a setting, as DCGAN's ``ema_beta``);
``supports_amp``  whether the runner may autocast its forward passes on CUDA;

and these methods:

``__init__(resolution, channels=1, **hparams)``
    Validate everything (an unsupported resolution raises :class:`~models.train.recipe.RecipeError`);
    keep the keyword arguments, JSON values only, in ``self.hparams``: the runner stores them in
    ``run.json`` and every checkpoint, and rebuilds the recipe from them on resume and export.
``build() -> Networks(G, D, G_ema=None)``
    Networks on the CPU in float32, initialized from torch's global generator (seeded by the runner).
    G and G_ema meet the generator contract of :mod:`models.registry` (``G(z, psi)``, ``z_dim``,
    ``resolution``, ``channels``, ``init_kwargs``).
``make_optimizers(nets) -> {"D": opt, "G": opt, ...}``
    Called after the networks are on their device.
``train_step(ctx, reals) -> {"loss_D": tensor, ...}``
    One minibatch: every D and G update, lazy regularization on the minibatches it is due (``ctx.iteration``
    counts them from 0), augmentation, the G_ema update. Use ``with ctx.autocast():`` around forward
    passes, ``ctx.backward(loss, "D")`` instead of ``loss.backward()`` and ``ctx.step("D")`` instead
    of ``opt.step()``: the runner scales losses under fp16 and averages gradients over DDP processes
    there. Draw latents with ``ctx.randn(ctx.batch_gpu, z_dim)`` so K processes see what one would;
    other randomness may use torch's global generator (seeded per process, checkpointed). Return 0-d
    tensors; the runner averages them over processes and logging intervals into ``metrics.jsonl``.
``state_dict() / load_state_dict(state)`` (optional)
    Extra state for checkpoints, e.g. the ADA probability: tensors, numbers, strings, lists, dicts.
``inference_generator(nets)`` (optional)
    What is sampled for grids and metrics and exported; G_ema when used, else G.
``default_snapshots(unit, length)`` (optional)
    When grids are saved if the user names no snapshot points.
``card()`` (optional)
    Extra fields for the exported model card.

What the runner owns
====================

Device selection, mixed precision (CUDA only: bf16 where supported, else fp16 with one gradient
scaler per optimizer), channels_last, deterministic seeding, the DataLoader over
:class:`models.datasets.ImageDataset` with a ``DistributedSampler`` (also in one process, so the
order of images is the same whatever the number of processes), DDP under ``torchrun`` (gradients
averaged over processes by all-reduce, batch norm synchronized over processes, only rank 0 writes),
the full-state checkpoint written atomically and loaded without unpickling code, exact resume,
``metrics.jsonl``, progress with images/s and ETA, sample grids at fixed seeds and the progression
strip, a metrics hook at snapshots, and export to the model registry.

Using it from Python::

    from models.train import TrainOptions, train, resume
    result = train(TrainOptions(arch="dcgan", dataset="fracatlas@v1", epochs=200, batch=64),
                   datasets_root=home / "datasets", runs_root=home / "runs",
                   metrics_fn=None)  # or a callable (G, SnapshotInfo) -> {"fid": ...}
    resume(result.run_dir.name, home / "datasets", home / "runs", epochs=300)

and :func:`models.train.export.export_run` writes a run's generator into a :class:`models.registry.Registry`.
The command line (``synthpacs train``, ``synthpacs models export``) is a thin layer over these.
"""

from models.train.recipe import UNITS, Networks, Recipe, RecipeError, StepContext, make_recipe, recipe_class
from models.train.runner import MetricsFn, SnapshotInfo, TrainError, TrainOptions, TrainResult, resume, train

__all__ = [
    "UNITS", "Networks", "Recipe", "RecipeError", "StepContext", "make_recipe", "recipe_class",
    "MetricsFn", "SnapshotInfo", "TrainError", "TrainOptions", "TrainResult", "resume", "train",
]
