"""A Dassl-compatible engine bundled with this project (``gopro_prompts.bundled_dassl``).

Used through :mod:`gopro_prompts.dassl_compat` when the real Dassl.pytorch (not
on PyPI) is absent.  It follows the public behaviour and design of Dassl 0.6.3
(https://github.com/KaiyangZhou/Dassl.pytorch, MIT License, Copyright (c) 2020
Kaiyang Zhou): the same module and object names, config keys and defaults,
trainer loop and printed lines.  It is written for this project; no Dassl file
is copied into it (see LICENSE).

* :mod:`.config`       -- ``get_cfg_default``, ``clean_cfg`` (Dassl's ``dassl/config/defaults.py``)
* :mod:`.utils`        -- logging tee, seeding, checkpoints, meters, registry (``dassl/utils``)
* :mod:`.optim`        -- ``build_optimizer``, ``build_lr_scheduler`` (``dassl/optim``)
* :mod:`.metrics`      -- ``compute_accuracy`` (``dassl/metrics``)
* :mod:`.evaluation`   -- ``Classification`` evaluator (``dassl/evaluation``)
* :mod:`.data`         -- datasets, transforms, ``DataManager`` (``dassl/data``)
* :mod:`.engine`       -- ``TrainerBase`` / ``SimpleTrainer`` / ``TrainerX`` (``dassl/engine/trainer.py``)
* :mod:`.torch_compat` -- the fixes applied to the *real* Dassl 0.6.3 on current PyTorch

Submodules are imported on demand (nothing is imported here), so that each
can be used on its own.
"""
if __name__ != "gopro_prompts.bundled_dassl":  # one module per file: never a second copy as `bundled_dassl`
    raise ImportError("this folder is the package gopro_prompts.bundled_dassl: import it under that name")


__version__ = "0.6.3"
