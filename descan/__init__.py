"""The engine behind the Descanning notebooks, one module per concern (see the README's layout).

Low to high, each module imports only those before it and ``helpers``:
demo, zips, data, plots, colab, recipes (no torch) -> models -> inference, crops, losses ->
checkpoints -> colourmap -> distributed -> engine -> submit -> cli (tests/test_layout.py holds the order).
``python -m descan -h`` lists the command line.
"""
