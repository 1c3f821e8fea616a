"""The benchmark library: model specs and builders, step timing, reports, the end-to-end,
multi-GPU and kernel benchmarks, and tiny pipelines of every family; scripts/ holds their thin
command-line entry points. Nothing here is imported by `import dit_sparse`."""
