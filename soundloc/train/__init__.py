"""Training on one CPU, one GPU or many GPUs through ``torchrun``, with one of two recipes
(``config.RECIPES``, ``train(recipe=...)``):

- ``paper`` (§4.2 exactly): SGD (lr 1e-2, momentum 0.9, weight decay 1e-4), individual FCs, the
  equally weighted sum of the heads' cross-entropies (Eq. 3), dot-product maps, and the learning
  rate divided by 10 when the validation accuracy of the audio-visual head has not improved for 3
  epochs (``ReduceLROnPlateau(mode="max")``; without a validation split, the training accuracy);
  ``best.pt`` is the epoch with the best such accuracy.
- ``default``: the same SGD and loss (Eq. 3), the ``tied-fc`` head, salient maps (config.MAP_KINDS), and a cosine
  learning-rate decay over the run's epochs (the class-aware contrastive term of
  ``model.classifier.training_loss`` is one override away: ``contrastive_weight=1``). Why: validation accuracy saturates at 1.0 within 2-3 epochs on small data,
  after which the plateau rule divides the rate every 3 epochs while the maps still improve; a
  fixed schedule does not depend on a metric that has stopped moving. ``best.pt`` is the epoch
  with the lowest validation loss. The ablation behind it is in benchmarks/RESULTS.md (issue 10).
  ``zoom=0.75`` (``--zoom``: each training clip's frames shrunk by a random factor in [0.75, 1]
  onto a canvas of their mean colour) makes the peak land on small sources more often, but the
  demo model trained with it misses the int8 row: an option (issue 24).

Every validation also runs the label-free audio-dependence check (``soundloc.dependence``) on
the validation maps, logs it and warns when the maps do not follow the audio.

Files in ``out_dir`` (only rank 0 writes):

- ``last.pt``: the last *complete* epoch (model, optimiser, scheduler, grad scaler, epoch, best
  metric, RNG state), written atomically; a run killed at any moment loses at most the epoch in
  progress and ``--resume`` continues from here with the same data order (the sampler is seeded
  by ``seed`` and the epoch, not by the RNG state).
- ``best.pt``: the epoch with the best validation accuracy of the ``av`` head.
- ``epoch_XXX.pt`` when ``keep_epochs``.
- ``log.jsonl``: one line per epoch: losses, each head's accuracy, learning rate, throughput and
  the clips skipped as unreadable with their reasons.

Distributed: ``torchrun`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; the process group uses
NCCL on CUDA and gloo on CPU. Each rank gets ``batch_size`` clips per step (the global batch is
``batch_size * world_size``), the DistributedSampler is re-seeded every epoch, and metrics are
summed over ranks. BatchNorm: on CUDA with more than one process the model is converted to
SyncBatchNorm, because per-GPU batches of 100-frame clips are small (a handful of clips) and
per-GPU statistics would be noisy; on CPU (gloo, no SyncBN kernels) each rank keeps plain BN.
"""

from .epoch import forward_backward, validate
from .loop import build_state, fit, seed_everything
from .start import train
from .types import TrainError, TrainOptions, TrainResult, TrainState

__all__ = ["TrainError", "TrainOptions", "TrainResult", "TrainState", "build_state", "fit",
           "forward_backward", "seed_everything", "train", "validate"]
