"""Losses and estimators for SFT, reward modelling and PPO: small pure functions over tensors.

Only torch is imported here, so each function can be checked against numbers worked out by hand
(tests/test_train_losses.py, tests/test_ppo_losses.py).
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------
# Shared: masked statistics, log-prob gathering, reward-model losses
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# PPO: KL estimators, reward shaping, GAE, whitening, clipped losses, KL controller
# ---------------------------------------------------------------------------------------------
