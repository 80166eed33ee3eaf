"""Tasks built on the pipeline: multi-chapter memory, video dubbing, audio continuation."""
