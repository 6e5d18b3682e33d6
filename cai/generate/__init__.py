"""Critique -> revision generation (SL-CAI data and `ai-revision` preference pairs)."""
