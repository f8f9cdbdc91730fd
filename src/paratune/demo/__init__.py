"""`paratune demo`: train PARA on the embedded SmolLM2 backbone and compare it with the base model."""
