"""premem's Hydra Sweeper plugin (a package inside the `hydra_plugins` namespace, which has no __init__.py)."""
