"""Networks: geometry-aware convolutions, blocks, the 2D/3D autoencoder, bottlenecks and losses."""
