"""Result tools: reading run folders (``tools.runs``) and the comparison tables (``tools.results_tables``).

Nothing here imports torch: parsing an output tree is fast and works on any machine.
"""
