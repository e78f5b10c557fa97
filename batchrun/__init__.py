"""batchrun: declarative, validated, resumable batches of Lamina app runs."""

__version__ = "0.1.0"
