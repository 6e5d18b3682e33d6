"""Training: one core on accelerate/transformers/peft, and the stages built on it.

    config.py      TrainingConfig (shared fields), load_section, resume config checks
    accel.py       the Accelerator (mixed precision, grad accumulation, seeded sampler)
    modeling.py    tokenizer/model loading, LoRA, saving a plain HF directory
    checkpoint.py  RunDir: atomic checkpoints (save_state + data position), DONE marker
    metrics.py     metrics.jsonl + TensorBoard, progress bar, the NaN/inf guard
    loop.py        the supervised loop shared by SFT and the reward model
    losses.py      pure torch losses (Bradley-Terry, masked means, log-probs; PPO's)
    data.py        preference pairs and chat conversations as training inputs
    reward.py      format_for_reward, scoring, reward-model metrics
    rm.py          RMConfig + run_rm          sft.py   SFTConfig + run_sft
"""
