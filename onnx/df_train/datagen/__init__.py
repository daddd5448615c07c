"""Dataset generators. Each writes an .npz of concatenated episodes plus a JSON manifest."""
