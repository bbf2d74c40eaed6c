"""Loading: stores to tensors. Chunk-aware random sampling, patches (random crops) and the
Lightning DataModule.
"""
