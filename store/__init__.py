"""The contracts every stage imports: where things live in a store (`layout`), how they are read and written
(`io`), the per-example records schema (`records`) and the names shared across stages (`names`).

Nothing here imports a stage (orchestrator, workers, analysis): data flows through these files one way.
"""
