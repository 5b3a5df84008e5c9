"""Multi-turn rollouts, their typed records, and the composite reward."""

from redgym.rollout.engine import advance, rollout, rollout_batch
from redgym.rollout.records import Conversation, Turn
from redgym.rollout.reward import RewardWeights, composite_reward, score_conversations

__all__ = ["advance", "rollout", "rollout_batch", "Conversation", "Turn", "RewardWeights", "composite_reward",
           "score_conversations"]
