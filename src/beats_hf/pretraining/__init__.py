"""Training code for BEATs (masking, collators, Trainer subclasses, the iterative loop). The model files never import it."""
