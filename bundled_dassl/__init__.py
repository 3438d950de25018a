"""A Dassl-compatible engine bundled with this project.

Used through :mod:`dassl_compat` when the real Dassl.pytorch (not on PyPI) is
absent.  It reproduces the public behaviour of Dassl 0.6.3 as specified in
``shared/notes/dassl-behaviour.md``, under the same module and object names:

* :mod:`bundled_dassl.config`      -- ``get_cfg_default``, ``clean_cfg`` (§a)
* :mod:`bundled_dassl.utils`       -- logging tee, seeding, checkpoints, meters, registry (§f)
* :mod:`bundled_dassl.optim`       -- ``build_optimizer``, ``build_lr_scheduler`` (§d)
* :mod:`bundled_dassl.metrics`     -- ``compute_accuracy`` (§e)
* :mod:`bundled_dassl.evaluation`  -- ``Classification`` evaluator (§e)
* :mod:`bundled_dassl.data`        -- datasets, transforms, ``DataManager`` (§c)
* :mod:`bundled_dassl.engine`      -- ``TrainerBase``/``SimpleTrainer``/``TrainerX`` (§b)
* :mod:`bundled_dassl.torch_compat` -- patches applied to the *real* Dassl on current torch (§d.5)

Submodules are imported on demand (nothing is imported here), so that each
can be used on its own.
"""
if __name__ != "gopro_prompts.bundled_dassl":  # one module per file: never a second copy as `bundled_dassl`
    raise ImportError("this folder is the package gopro_prompts.bundled_dassl: import it under that name")


__version__ = "0.6.3"
