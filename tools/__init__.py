"""Command-line tools of the repository, run as modules (``python -m gopro_prompts.tools.<name>``) from the root of a clone.

* ``python -m gopro_prompts.tools.pretrain_tiny_clip``: pretrains the built-in tiny CLIP
  (``assets/tiny_clip_synthetic.pt``) on procedurally generated captioned images;
* ``python -m gopro_prompts.tools.synthetic_report``: writes the synthetic benchmark's report
  (``docs/synthetic_results.md`` and the README section).

Reading results and building the comparison tables is the library :mod:`gopro_prompts.results`.
"""
if __name__ != "gopro_prompts.tools":  # one module per file: never a second copy as `tools`
    raise ImportError("this folder is the package gopro_prompts.tools: import it under that name")

