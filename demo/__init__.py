"""The end-to-end demo: the held-out task suite (rendered instruments, recorded voices), the recipe search at a fixed
budget, the full BEATs run and its report."""
