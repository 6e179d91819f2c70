"""The engine behind the Descanning notebooks, one module per concern (docs/layout.md lists them);
``python -m descan -h`` lists the command line."""
