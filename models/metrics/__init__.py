"""Quality metrics for generated radiographs, computed the way papers compute them, and the
memorization check that keeps near-copies of training patients from leaving as synthetic images.

One module per job:

=======================  ===============================================================================
``inception``            the FID InceptionV3 (pytorch-fid's architecture; weights from a local file)
``features``             feature extractors (FID Inception, any TorchScript in-domain network), batching
``frechet``              Frechet distance in float64 (FID)
``kid``                  kernel inception distance (unbiased MMD^2, cubic kernel)
``precision_recall``     improved precision and recall (k-NN manifolds)
``ssim``                 SSIM, MS-SSIM, PSNR of image pairs
``fidelity``             SSIM/PSNR of generated images against their nearest real image
``diversity``            pairwise MS-SSIM within a set (mode collapse indicator)
``descriptors``          weight-free descriptors (standardized pixels, HOG) for memorization and features
``radiomics``            radiomic features (first order, GLCM, GLRLM; LoG, wavelet) and the FRD fixes
``utility``              TSTR/TRTR body-part classifier, recognition rates per requested class
``calibration``          control sets of known quality; which metrics are quality figures
``memorization``         :class:`MemorizationGuard`, used by the release path
``evaluate``             all of the above for a generator or an image set -> evaluation.json
``snapshot``             :class:`SnapshotEvaluator`, the training runner's metrics hook
``report``               comparison table, PNG chart, sample grids
=======================  ===============================================================================

Nothing here imports ``service``, pydicom, pynetdicom or grpc; nothing is downloaded.
"""

from models.metrics.inception import InceptionWeightsError
from models.metrics.memorization import MemorizationGuard, MemorizationReport

__all__ = ["InceptionWeightsError", "MemorizationGuard", "MemorizationReport"]
