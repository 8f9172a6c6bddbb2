"""The paper's analyses and a few beyond it, one module each. Each returns tidy DataFrames (figures live in
`plots`), and each with a command has `run(model, out_dir=None, figures=True, ...)`, which computes, writes
the tables and figures of `python -m tv_utils <command>` and returns them.

- `icl`: one ICL example with its accuracy; θ from pairs you type
- `depth`: best layer across models, on relative depth
- `geometry`: θ clusters by task (t-SNE / UMAP, silhouette, kNN, distance histograms)
- `conflict`: demonstrations of A, θ of B (paper Table 2)
- `vocab`: θ through the final norm and unembedding (paper Table 3)
- `beyond`: interpolation / scaling of θ, a reusable task-vector library with its cost, robustness
- `function_vectors`: Todd et al.'s function vectors beside task vectors
"""
