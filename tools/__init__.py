"""Result tools: reading run folders (``tools.runs``) and the comparison tables (``tools.results_tables``).

Nothing here imports torch: parsing an output tree is fast and works on any machine.
"""
if __name__ != "gopro_prompts.tools":  # one module per file: never a second copy as `tools`
    raise ImportError("this folder is the package gopro_prompts.tools: import it under that name")

