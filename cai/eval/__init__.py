"""Evaluation stages: reward models on preference data (`rm.py`), scoring rows with a
reward model (`score.py`)."""
