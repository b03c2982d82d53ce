"""Models and named architectures registered by mega-fairseq (explicit imports, one per model)."""
