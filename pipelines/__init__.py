"""Drop-in sparse pipelines (installed as `dit_sparse.pipelines`)."""
