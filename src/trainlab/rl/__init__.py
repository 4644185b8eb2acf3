"""Reinforcement learning for language models: rollouts on the KV cache, rewards (task oracles, user
functions, reward models), advantage estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++, GAE), the
clipped policy loss with its aggregation modes, KL estimators, and the GRPO/PPO objectives that run
through the one training loop. See each module's docstring for its formula and source."""
