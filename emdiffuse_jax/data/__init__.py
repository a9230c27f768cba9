"""EM data layer: I/O, normalisation, degradations, phantoms, registration, tiling, samples, pipelines."""
